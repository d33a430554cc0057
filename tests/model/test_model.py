"""Model: identical shared weights across attention kinds, parameter counts, k >= L equivalence, errors."""

import pytest
import torch

from dsa.model import TransformerLM
from dsa.model.config import ModelConfig


def _cfg(**kw):
    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=48, top_k=8, indexer_heads=2,
                indexer_dim=8, indexer_rope_dim=4)
    base.update(kw)
    return ModelConfig(**base)


def test_dense_and_dsa_share_identical_main_weights():
    d = TransformerLM(_cfg(attention="dense"), seed=5)
    s = TransformerLM(_cfg(attention="dsa"), seed=5)
    sp = dict(s.named_parameters())
    for n, p in d.named_parameters():
        assert torch.equal(p, sp[n]), n
    assert set(sp) - set(dict(d.named_parameters())) == {n for n in sp if ".indexer." in n}


def test_parameter_counts_report_the_indexer_separately():
    s = TransformerLM(_cfg(attention="dsa"), seed=0)
    c = s.parameter_counts()
    assert c["indexer"] == sum(p.numel() for n, p in s.named_parameters() if ".indexer." in n) > 0
    assert c["total"] == c["main"] + c["indexer"] == sum(p.numel() for p in s.parameters())
    assert TransformerLM(_cfg(attention="dense"), seed=0).parameter_counts()["main"] == c["main"]


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_dsa_with_k_equal_l_matches_dense(gen, n_kv):
    tokens = torch.randint(0, 61, (2, 37), generator=gen)
    d = TransformerLM(_cfg(attention="dense", n_kv_heads=n_kv), seed=1)
    s = TransformerLM(_cfg(attention="dsa", n_kv_heads=n_kv, top_k=48), seed=1)
    torch.testing.assert_close(s(tokens).logits, d(tokens).logits, rtol=1e-4, atol=1e-4)


def test_dsa_dense_mode_is_dense_and_sparse_mode_differs(gen):
    tokens = torch.randint(0, 61, (1, 40), generator=gen)
    d = TransformerLM(_cfg(attention="dense"), seed=2)
    s = TransformerLM(_cfg(attention="dsa", top_k=4), seed=2)
    torch.testing.assert_close(s(tokens, sparse=False).logits, d(tokens).logits)
    assert not torch.allclose(s(tokens).logits, d(tokens).logits)


def test_indexer_losses_train_only_the_indexer(gen):
    s = TransformerLM(_cfg(attention="dsa", top_k=5), seed=3)
    tokens = torch.randint(0, 61, (2, 30), generator=gen)
    for mode, sparse in (("dense", False), ("sparse", True)):
        s.zero_grad()
        out = s(tokens, sparse=sparse, indexer_loss=mode)
        assert out.indexer_kl.ndim == 0 and float(out.indexer_kl) >= 0
        out.indexer_kl.backward()
        assert all(p.grad is None or not p.grad.any() for p in s.main_parameters())
        assert any(p.grad is not None and p.grad.any() for p in s.indexer_parameters())
    s.zero_grad()
    lm = torch.nn.functional.cross_entropy(s(tokens).logits.flatten(0, 1), tokens.flatten())
    lm.backward()
    assert all(p.grad is None or not p.grad.any() for p in s.indexer_parameters()), "LM loss must not reach the indexer"


def test_recall_is_one_when_k_covers_everything(gen):
    s = TransformerLM(_cfg(attention="dsa", top_k=48), seed=0)
    out = s(torch.randint(0, 61, (1, 48), generator=gen), recall=True)
    assert out.recall["recall"] == 1.0 and abs(out.recall["recall_all"] - 1.0) < 1e-5


@pytest.mark.parametrize(
    "kw,match",
    [({"attention": "sparse"}, "attention must be one of"), ({"top_k": 0}, "top_k"), ({"top_k": 49}, "top_k"),
     ({"n_kv_heads": 3}, "n_kv_heads"), ({"d_model": 30}, "d_model"), ({"attention": "dense", "leak_future": True},
                                                                       "leak_future"),
     ({"impl": "cuda"}, "impl must be one of")],
)
def test_bad_config_names_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_bad_forward_input():
    m = TransformerLM(_cfg(attention="dsa"), seed=0)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="indexer_loss"):
        m(torch.zeros(1, 5, dtype=torch.long), indexer_loss="kl")


def test_reference_and_auto_agree_inside_the_model(gen):
    tokens = torch.randint(0, 61, (2, 41), generator=gen)
    outs = {}
    for impl in ("reference", "auto"):
        m = TransformerLM(_cfg(attention="dsa", top_k=7, n_kv_heads=2, impl=impl), seed=4)
        out = m(tokens, indexer_loss="sparse")
        (out.logits.logsumexp(-1).mean() + out.indexer_kl).backward()
        outs[impl] = (out.logits, m.layers[0].attn.proj.wq.weight.grad, m.layers[0].attn.indexer.wq.weight.grad)
    for a, b in zip(outs["auto"], outs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_auto_resolves_to_the_reference_on_cpu_and_triton_says_why(monkeypatch):
    from dsa.ops import resolve_impl  # noqa: PLC0415
    from dsa.ops.dispatch import impl_on_device  # noqa: PLC0415

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2)
    assert resolve_impl("auto", x, op="op") == "reference"
    assert resolve_impl("reference", x, op="op") == "reference"
    assert impl_on_device("auto", "cpu") == "reference"
    with pytest.raises(ValueError, match="op: impl='triton' cannot run here"):
        resolve_impl("triton", x, op="op")
    import dsa.ops.dispatch as dispatch  # noqa: PLC0415

    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", True)  # the reason after 'not installed', triton or not
    with pytest.raises(ValueError, match="no float64"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        resolve_impl("triton", x.double(), op="op")


def test_importing_the_model_does_not_import_triton():
    """triton reads TRITON_INTERPRET once, at import: the model (imported by nearly everything) must leave
    that to the first kernel call, or CPU tests and users can no longer choose the interpreter."""
    import importlib.util  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # the trainer needs the train extra; the layer's core install has the rest
    trainer = all(importlib.util.find_spec(m) for m in ("tqdm", "tokenizers"))
    code = (f"import sys, dsa.model, {'dsa.train.trainer, ' if trainer else ''}dsa.ops, dsa.layers; "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_selection_override_reaches_every_layer_and_is_restored(gen):
    m = TransformerLM(_cfg(attention="dsa", top_k=7, n_layers=2), seed=2)
    tokens = torch.randint(0, 61, (1, 30), generator=gen)
    kept = lambda out: [int((a.selection >= 0).sum(-1).max()) for a in out.aux]  # noqa: E731
    with m.selection_override(top_k=3, k_policy="fixed"):
        assert kept(m(tokens)) == [3, 3] and m.cfg.top_k == 3
    assert kept(m(tokens)) == [7, 7] and m.cfg.top_k == 7
    with pytest.raises(ValueError, match="k_policy"):
        with m.selection_override(k_policy="foo"):
            pass
    assert kept(m(tokens)) == [7, 7]


def test_selection_override_leaves_the_callers_config_alone():
    cfg = _cfg(attention="dsa", top_k=7, leak_future=True)
    m = TransformerLM(cfg, seed=0)
    with m.selection_override(leak_future=False, top_k=4):
        assert m.cfg.top_k == 4 and not m.cfg.leak_future
    assert cfg.top_k == 7 and cfg.leak_future and m.cfg is cfg
    with pytest.raises(ValueError, match="selection_override changes only"):
        with m.selection_override(indexer_heads=2):
            pass
