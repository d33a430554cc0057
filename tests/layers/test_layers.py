"""The drop-in attention layers: every layout (MHA, GQA, MQA, MLA) in and out of hidden states, DSA with
k >= L equal to dense attention, MLA's absorbed (MQA) form equal to its MHA form, bad input named."""

import pytest
import torch

from dsa.layers import AttentionConfig, DenseAttention, DSAAttention, MLAConfig, SparseConfig

MLA = MLAConfig(kv_rank=24, rope_dim=6, nope_dim=10, v_dim=7, q_rank=12)
LAYOUTS = {
    "mha": dict(n_heads=2),
    "gqa": dict(n_heads=6, n_kv_heads=2, head_dim=10, v_head_dim=6),
    "mqa": dict(n_heads=8, n_kv_heads=1, head_dim=8),
    "mla": dict(n_heads=5, mla=MLA),
}


def _cfg(layout: str, **kw) -> AttentionConfig:
    return AttentionConfig(d_model=20, max_seq_len=64, **{**LAYOUTS[layout], **kw})


def _copy_shared(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copies the projections of ``src`` into ``dst`` (a DSA layer has an indexer on top)."""
    dst.proj.load_state_dict(src.proj.state_dict())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dsa_with_k_at_least_l_equals_dense(gen, layout):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    l = 23
    dense = DenseAttention(_cfg(layout))
    dsa = DSAAttention(_cfg(layout), SparseConfig(top_k=l, indexer_heads=3, indexer_dim=8, indexer_rope_dim=4))
    _copy_shared(dsa, dense)
    x = torch.randn(2, l, 20, generator=gen)
    out_d, _ = dense(x)
    out_s, aux = dsa(x, indexer_loss="sparse")
    assert out_s.shape == x.shape and aux.selection.shape == (2, l, l) and aux.selection.dtype == torch.int32
    torch.testing.assert_close(out_s, out_d, rtol=1e-4, atol=1e-5)
    assert float(aux.indexer_kl) >= 0


def test_mla_absorbed_form_equals_mha_form(gen):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    mha = DenseAttention(_cfg("mla"))
    mqa = DenseAttention(_cfg("mla", mla=MLAConfig(**{**MLA.__dict__, "dense_mode": "mqa"})))
    mqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 17, 20, generator=gen, requires_grad=True)
    a, b = mha(x)[0], mqa(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    t = mqa.proj(x)
    assert t.q.shape == (2, 5, 17, 24 + 6) and t.k.shape == (2, 1, 17, 30) and t.v.shape == (2, 1, 17, 24)
    ga = torch.autograd.grad(a.square().sum(), x)[0]
    gb = torch.autograd.grad(b.square().sum(), x)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sparse_layer_trains_and_selects_causally(gen, layout):
    dsa = DSAAttention(_cfg(layout), SparseConfig(top_k=5, indexer_heads=2, indexer_dim=8, indexer_rope_dim=0))
    x = torch.randn(1, 19, 20, generator=gen)
    out, aux = dsa(x, indexer_loss="sparse")
    (out.square().mean() + aux.indexer_kl).backward()
    t = torch.arange(19)[None, :, None]
    assert bool(((aux.selection <= t) | (aux.selection < 0)).all())
    assert ((aux.selection >= 0).sum(-1) == torch.clamp(torch.arange(1, 20), max=5)).all()
    assert dsa.indexer.wq.weight.grad is not None and dsa.proj.wq.weight.grad is not None


def test_bad_configs_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionConfig(d_model=20, n_heads=2, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model .* multiple of n_heads"):
        AttentionConfig(d_model=20, n_heads=6)
    with pytest.raises(ValueError, match="impl must be one of"):
        AttentionConfig(d_model=20, n_heads=2, impl="gather")
    with pytest.raises(ValueError, match="mla dense_mode"):
        MLAConfig(dense_mode="mla")
    with pytest.raises(ValueError, match="k_policy"):
        SparseConfig(k_policy="foo")
    layer = DenseAttention(_cfg("mha"))
    with pytest.raises(ValueError, match="hidden states must be"):
        layer(torch.zeros(2, 5, 21))
    with pytest.raises(ValueError, match="max_seq_len"):
        layer(torch.zeros(1, 65, 20))
