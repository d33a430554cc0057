"""The decode ops: the references against the full-sequence ops (same function at an offset), the Triton
kernels (split-K attention over selected or all cached rows, indexer scores + radix top-k) against the
references under TRITON_INTERPRET=1 at small odd sizes, and the input checks."""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import interpreter_for_module

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported

from dsa.ops import (  # noqa: E402
    decode_dense_attention,
    decode_indexer_scores,
    decode_indexer_topk,
    decode_sparse_attention,
    dense_attention,
    indexer_topk,
    sparse_attention,
)

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


def _positions(b, t, s, gen):
    """(B, T) consecutive positions per sequence, each ending somewhere in the cache."""
    end = torch.randint(t - 1, s, (b,), generator=gen)
    return end[:, None] - (t - 1) + torch.arange(t)[None, :]


def _qkv(b, h, hkv, t, s, d, dv, gen, dtype=torch.float32):
    q = torch.randn(b, h, t, d, generator=gen).to(DEV, dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(DEV, dtype)
    v = torch.randn(b, hkv, s, dv, generator=gen).to(DEV, dtype)
    return q, k, v


def _indexer(b, t, s, h_i, d_i, gen):
    return (torch.randn(b, t, h_i, d_i, generator=gen).to(DEV), torch.randn(b, s, d_i, generator=gen).to(DEV),
            torch.randn(b, t, h_i, generator=gen).to(DEV))


def test_references_equal_the_full_sequence_ops_at_an_offset(gen):
    """The last T queries of a length-L sequence against a cache of its L rows: the same outputs and the same
    selected sets as the full-sequence ops give those queries."""
    b, h, hkv, l, t, d = 2, 6, 3, 23, 5, 8
    q, k, v = _qkv(b, h, hkv, l, l, d, d, gen)
    qi, ki, w = _indexer(b, l, l, 3, 8, gen)
    pos = torch.arange(l - t, l).expand(b, t).to(DEV)
    full = dense_attention(q, k, v)[:, :, -t:]
    torch.testing.assert_close(decode_dense_attention(q[:, :, -t:], k, v, pos, impl="reference"), full)
    sel_full = indexer_topk(qi, ki, w, 7, impl="reference")
    sel = decode_indexer_topk(qi[:, -t:], ki, w[:, -t:], 7, pos, impl="reference")
    assert torch.equal(sel.sort(-1).values, sel_full[:, -t:].sort(-1).values)
    out_full = sparse_attention(q, k, v, sel_full, impl="reference")[:, :, -t:]
    torch.testing.assert_close(decode_sparse_attention(q[:, :, -t:], k, v, sel, impl="reference"), out_full,
                               atol=1e-5, rtol=1e-5)


def test_k_at_least_the_context_selects_every_visible_row(gen):
    qi, ki, w = _indexer(2, 3, 9, 2, 8, gen)
    pos = torch.tensor([[2, 3, 4], [6, 7, 8]], device=DEV)
    sel = decode_indexer_topk(qi, ki, w, 50, pos, impl="reference")
    assert sel.shape == (2, 3, 9)
    for bi in range(2):
        for j in range(3):
            row = sel[bi, j]
            assert sorted(row[row >= 0].tolist()) == list(range(int(pos[bi, j]) + 1))


@pytest.mark.parametrize("shape", [(2, 6, 2, 1, 37, 24, 20), (1, 5, 1, 3, 29, 40, 33), (3, 4, 4, 2, 19, 10, 10)])
def test_dense_kernel_matches_reference(shape, gen):
    b, h, hkv, t, s, d, dv = shape
    q, k, v = _qkv(b, h, hkv, t, s, d, dv, gen)
    pos = _positions(b, t, s, gen).to(DEV)
    ref = decode_dense_attention(q, k, v, pos, impl="reference")
    torch.testing.assert_close(decode_dense_attention(q, k, v, pos, impl="triton"), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 2, 1, 37, 24, 20, 7), (1, 17, 1, 2, 45, 36, 28, 11)])
def test_sparse_kernel_matches_reference(shape, gen):
    """Random selections with repeats and -1 slots anywhere, one query with nothing selected."""
    b, h, hkv, t, s, d, dv, k_sel = shape
    q, k, v = _qkv(b, h, hkv, t, s, d, dv, gen)
    idx = torch.randint(-1, s, (b, t, k_sel), generator=gen, dtype=torch.int32)
    idx[0, 0] = -1
    idx = idx.to(DEV)
    ref = decode_sparse_attention(q, k, v, idx, impl="reference")
    out = decode_sparse_attention(q, k, v, idx, impl="triton")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert float(out[0, :, 0].abs().max()) == 0.0


def test_kernel_splits_agree(gen):
    """Every split-K count gives the same result: the merge of the partial softmaxes is exact."""
    from dsa.ops.kernels.decode import decode_attention_triton

    q, k, v = _qkv(1, 4, 1, 1, 150, 16, 16, gen)
    pos = torch.tensor([[137]], device=DEV)
    ref = decode_dense_attention(q, k, v, pos, impl="reference")
    for splits in (1, 2, 3, 5):
        torch.testing.assert_close(decode_attention_triton(q, k, v, None, pos, 0.25, splits=splits),
                                   decode_dense_attention(q, k, v, pos, scale=0.25, impl="reference"),
                                   atol=1e-5, rtol=1e-5)
    assert ref.shape == (1, 4, 1, 16)


def test_mla_latent_cache_with_value_view(gen):
    """MLA's values are a strided view of the latent rows: the kernel reads them in place."""
    lat = torch.randn(2, 1, 33, 40, generator=gen).to(DEV)
    q = torch.randn(2, 17, 1, 40, generator=gen).to(DEV)
    v = lat[..., :32]
    pos = torch.tensor([[30], [12]], device=DEV)
    idx = decode_indexer_topk(*_indexer(2, 1, 33, 3, 16, gen)[:2], torch.rand(2, 1, 3, generator=gen).to(DEV),
                              9, pos, impl="reference")
    for fn, arg in ((decode_sparse_attention, idx), (decode_dense_attention, pos)):
        torch.testing.assert_close(fn(q, lat, v, arg, impl="triton"), fn(q, lat, v, arg, impl="reference"),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 41, 3, 12, 9), (1, 3, 70, 5, 20, 70), (2, 2, 23, 2, 8, 4)])
def test_indexer_kernel_matches_reference(shape, gen):
    b, t, s, h_i, d_i, k = shape
    qi, ki, w = _indexer(b, t, s, h_i, d_i, gen)
    pos = _positions(b, t, s, gen).to(DEV)
    torch.testing.assert_close(decode_indexer_scores(qi, ki, w, pos, impl="triton"),
                               decode_indexer_scores(qi, ki, w, pos, impl="reference"), atol=1e-4, rtol=1e-5)
    ref = decode_indexer_topk(qi, ki, w, k, pos, impl="reference")
    out = decode_indexer_topk(qi, ki, w, k, pos, impl="triton")
    assert out.shape == ref.shape == (b, t, min(k, s))
    assert torch.equal(out.sort(-1).values, ref.sort(-1).values)


def test_bad_inputs_name_the_argument(gen):
    q, k, v = _qkv(1, 4, 2, 1, 9, 8, 8, gen)
    pos = torch.tensor([[3]])
    with pytest.raises(ValueError, match="q_pos"):
        decode_dense_attention(q, k, v, torch.tensor([[9]]))
    with pytest.raises(ValueError, match="q_pos"):
        decode_dense_attention(q, k, v, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="k_cache"):
        decode_dense_attention(q, k[..., :4], v, pos)
    with pytest.raises(ValueError, match="heads"):
        decode_dense_attention(q[:, :3], k, v, pos)
    with pytest.raises(ValueError, match="idx"):
        decode_sparse_attention(q, k, v, torch.tensor([[[9]]], dtype=torch.int32))
    qi, ki, w = _indexer(1, 1, 9, 2, 8, gen)
    with pytest.raises(ValueError, match="top_k"):
        decode_indexer_topk(qi, ki, w, 0, pos)
    with pytest.raises(ValueError, match="w must"):
        decode_indexer_topk(qi, ki, w[:, :, :1], 3, pos)
    with pytest.raises(ValueError, match="k_idx_cache"):
        decode_indexer_topk(qi, ki[..., :4], w, 3, pos)
    with pytest.raises(ValueError, match="NaN"):
        decode_indexer_topk(qi, ki.clone().fill_(float("nan")), w, 3, pos)


@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_model_decoding_through_the_kernels(attention, gen):
    """A model decoding with impl='triton' (the kernels) gives the logits of its full forward (reference)."""
    from dsa.layers import MLAConfig
    from dsa.model import ModelConfig, TransformerLM

    kw = {"vocab_size": 61, "d_model": 32, "n_layers": 1, "n_heads": 4, "max_seq_len": 32, "attention": attention,
          "top_k": 4, "indexer_dim": 16, "indexer_rope_dim": 8,
          "mla": MLAConfig(kv_rank=16, rope_dim=8, nope_dim=8, v_dim=8)}
    ref = TransformerLM(ModelConfig(impl="reference", **kw), seed=5).eval().to(DEV)
    tri = TransformerLM(ModelConfig(impl="triton", **kw), seed=5).eval().to(DEV)
    tokens = torch.randint(0, 61, (2, 11), generator=gen).to(DEV)
    with torch.no_grad():
        full = ref(tokens).logits
        cache = tri.init_cache(2, 11)
        dec = torch.cat([tri(tokens[:, :5], cache=cache).logits]
                        + [tri(tokens[:, j:j + 1], cache=cache).logits for j in range(5, 11)], 1)
    torch.testing.assert_close(dec, full, atol=1e-4, rtol=1e-4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.skipif(not CUDA, reason="real sizes run only with CUDA")
@pytest.mark.parametrize("layout", ["mqa", "mla"])
@pytest.mark.parametrize("batch", [1, 3])
def test_real_size_kernels_on_gpu(layout, batch, gen):
    """DeepSeek's decode shapes in bf16: MQA 64 x 128 on one K/V, MLA-MQA 128 heads on one 576-value latent row
    (values its first 512), a 64 x 128 indexer, k = 2048, a context of 8K + odd."""
    h, d, dv = (64, 128, 128) if layout == "mqa" else (128, 576, 512)
    s = 8192 + 37
    g = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    q = torch.randn(batch, h, 1, d, device="cuda", dtype=torch.bfloat16, generator=g) * d**-0.25
    k = torch.randn(batch, 1, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = k[..., :dv] if layout == "mla" else torch.randn(batch, 1, s, dv, device="cuda", dtype=torch.bfloat16,
                                                         generator=g)
    qi = torch.randn(batch, 1, 64, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    ki = torch.randn(batch, s, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.rand(batch, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    pos = torch.tensor([[s - 1 - 500 * i] for i in range(batch)], device="cuda")
    assert _rel(decode_dense_attention(q, k, v, pos, impl="triton"),
                decode_dense_attention(q, k, v, pos, impl="reference")) < 2e-2
    sel_t = decode_indexer_topk(qi, ki, w, 2048, pos, impl="triton")
    sel_r = decode_indexer_topk(qi, ki, w, 2048, pos, impl="reference")
    scores = decode_indexer_scores(qi, ki, w, pos, impl="reference")
    picked = [scores.gather(-1, x.long()).sum() for x in (sel_t, sel_r)]  # bf16 products may swap near-ties only
    assert float(picked[0]) == pytest.approx(float(picked[1]), rel=1e-3)
    assert _rel(decode_sparse_attention(q, k, v, sel_r, impl="triton"),
                decode_sparse_attention(q, k, v, sel_r, impl="reference")) < 2e-2
