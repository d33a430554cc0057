"""The causality probe on every attention variant: causal ones pass exactly, the seeds' leak fails."""

import pytest
import torch

from dsa.model import TransformerLM
from dsa.model.config import ModelConfig
from dsa.ops import dense_attention, indexer_topk, seed_masked_attention, selection_to_mask
from dsa.ops.attention import sparse_attention_gather, sparse_attention_masked
from dsa.study.probes import causality_probe, model_probe

B, L, D, H, HKV, HD, HI, DI = 2, 29, 24, 4, 2, 6, 3, 5


def _attention_fn(gen, variant: str, top_k: int = 7):
    """x (B, L, D) -> (B, L, H*HD): fixed random projections, indexer selection, one attention variant."""
    wq, wk, wv = (torch.randn(D, n * HD, generator=gen) / D**0.5 for n in (H, HKV, HKV))
    wiq, wik, wiw = (torch.randn(D, n, generator=gen) / D**0.5 for n in (HI * DI, DI, HI))
    leak = variant in ("seed_leaky", "gather_leaky")

    def fn(x):
        b, l, _ = x.shape
        q = (x @ wq).view(b, l, H, HD).transpose(1, 2)
        k = (x @ wk).view(b, l, HKV, HD).transpose(1, 2)
        v = (x @ wv).view(b, l, HKV, HD).transpose(1, 2)
        if variant == "dense":
            o = dense_attention(q, k, v)
        else:
            sel = indexer_topk((x @ wiq).view(b, l, HI, DI), x @ wik, x @ wiw, top_k, leak_future=leak)
            if variant in ("gather", "gather_leaky"):
                o = sparse_attention_gather(q, k, v, sel, scale=HD**-0.5, chunk=8)[0]
            elif variant == "masked":
                o = sparse_attention_masked(q, k, v, sel, scale=HD**-0.5)
            else:  # the seeds' recipe: top-k mask, SDPA without is_causal
                o = seed_masked_attention(q, k, v, selection_to_mask(sel, l))
        return o.transpose(1, 2).reshape(b, l, H * HD)

    return fn


@pytest.mark.parametrize("variant", ["dense", "gather", "masked"])
@pytest.mark.parametrize("t", [0, 6, 17, L - 2])
def test_causal_variants_pass_the_probe_exactly(gen, variant, t):
    x = torch.randn(B, L, D, generator=gen)
    res = causality_probe(_attention_fn(gen, variant), x, t, generator=gen)
    assert res.max_change_at_or_before_t == 0.0, str(res)
    assert res.grad_leak == 0.0, str(res)
    assert not res.leaks


@pytest.mark.parametrize("variant", ["seed_leaky", "gather_leaky"])
def test_the_seeds_leaky_topk_fails_the_probe(gen, variant):
    x = torch.randn(B, L, D, generator=gen)
    res = causality_probe(_attention_fn(gen, variant), x, 10, generator=gen)
    assert res.leaks, str(res)
    assert res.max_change_at_or_before_t > 1e-3 and res.grad_leak > 1e-3, str(res)


@pytest.mark.parametrize(
    "attention,leak,kw",
    [("dense", False, {}), ("dsa", False, {"sparse": True}), ("dsa", False, {"sparse": False}),
     ("dsa", False, {"sparse": True, "indexer_loss": "sparse"})],
)
def test_whole_models_are_causal(gen, attention, leak, kw):
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=40,
                      attention=attention, top_k=6, indexer_heads=2, indexer_dim=8, indexer_rope_dim=4,
                      leak_future=leak)
    model = TransformerLM(cfg, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    tokens = torch.randint(0, 50, (2, 33), generator=gen)
    for t in (3, 20):
        res = model_probe(model, tokens, t, **kw)
        assert not res.leaks, str(res)


def test_leaky_model_fails_the_probe(gen):
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, max_seq_len=40, attention="dsa",
                      top_k=6, indexer_heads=2, indexer_dim=8, indexer_rope_dim=4, leak_future=True)
    model = TransformerLM(cfg, seed=0)
    tokens = torch.randint(0, 50, (2, 33), generator=gen)
    assert model_probe(model, tokens, 5).leaks


def test_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="t must be"):
        causality_probe(lambda x: x, torch.zeros(1, 4, 2), 3)
    with pytest.raises(TypeError, match="float"):
        causality_probe(lambda x: x, torch.zeros(1, 4, 2, dtype=torch.long), 1)
