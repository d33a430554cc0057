"""Cached decoding at DeepSeek-V3.2's attention shape on the GPU kernels (CUDA only): one MLA-MQA layer of 128
heads on a 512 + 64 latent cache, an indexer of 64 x 128 and k = 2048, a prompt of ~8K tokens then single
tokens. Decoding through the cache (the Triton decode kernels) gives the logits and the selections of one full
forward (the Triton prefill kernels). fp32, so that the two paths differ only in summation order; the selections
then differ only at near-ties of the k-th score (at this seed one decode step's 2048th and 2049th scores are
6e-7 apart, the order of the fp32 error), so a position in one set only must score within 1e-5 of the k-th
score; dense MLA in MQA mode beside it as the control."""

from __future__ import annotations

import pytest
import torch

from dsa.layers import MLAConfig
from dsa.model import ModelConfig, TransformerLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: real-size kernels")

PROMPT, NEW, TOP_K = 8191, 5, 2048


def _model(attention: str) -> TransformerLM:
    cfg = ModelConfig(vocab_size=509, d_model=1024, n_layers=1, n_heads=128, max_seq_len=PROMPT + NEW,
                      attention=attention, top_k=TOP_K, indexer_heads=64, indexer_dim=128, indexer_rope_dim=64,
                      mla=MLAConfig(kv_rank=512, rope_dim=64, nope_dim=128, v_dim=128, dense_mode="mqa"),
                      impl="triton")
    return TransformerLM(cfg, seed=11).eval().cuda()


@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_cached_decoding_at_the_mla_mqa_shape_matches_the_full_forward(attention):
    m = _model(attention)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 509, (2, PROMPT + NEW), generator=g).cuda()
    with torch.no_grad():
        full = m(tokens)
        cache = m.init_cache(2, PROMPT + NEW)
        outs = [m(tokens[:, :PROMPT], cache=cache)]
        outs += [m(tokens[:, t:t + 1], cache=cache) for t in range(PROMPT, PROMPT + NEW)]
    logits = torch.cat([o.logits for o in outs], 1)
    scale = full.logits.abs().max()
    assert (logits - full.logits).abs().max() <= 1e-4 * scale
    if attention == "dsa":
        scores = _indexer_scores_fp64(m, tokens)
        for j, o in enumerate(outs[1:]):
            _assert_same_set_but_near_ties(o.aux[0].selection[:, 0], full.aux[0].selection[:, PROMPT + j],
                                           scores[:, j], f"decode step {j}")


def _indexer_scores_fp64(m: TransformerLM, tokens: torch.Tensor) -> torch.Tensor:
    """The indexer scores (B, NEW, L) of the decoded positions over every position, in float64 from the full
    sequence's indexer outputs, -inf past each position."""
    layer = m.layers[0]
    with torch.no_grad():
        qi, ki, w = layer.attn.indexer_outputs(layer.attn_norm(m.embed(tokens)))
    qn, wn = qi[:, PROMPT:].double(), w[:, PROMPT:].double()
    scores = torch.einsum("bthd,bsd->btsh", qn, ki.double()).relu_().mul_(wn[:, :, None]).sum(-1)
    pos = torch.arange(PROMPT, tokens.shape[1], device=tokens.device)
    return scores.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) > pos[:, None], float("-inf"))


def _assert_same_set_but_near_ties(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor, what: str) -> None:
    """got, want (B, k) selected positions, scores (B, L): the sets agree but for a few positions whose scores
    are within 1e-5 (relative) of the k-th largest: summation-order swaps, not a wrong selection."""
    kth = scores.topk(got.shape[-1], dim=-1).values[:, -1:]  # (B, 1)
    for b in range(got.shape[0]):
        a, c = set(got[b].tolist()), set(want[b].tolist())
        odd = torch.tensor(sorted(a ^ c), device=scores.device, dtype=torch.long)
        near = (scores[b, odd] - kth[b]).abs() <= 1e-5 * kth[b].abs()
        assert len(odd) <= 8 and bool(near.all()), f"{what}, sequence {b}: the selections differ at {odd.tolist()}"
