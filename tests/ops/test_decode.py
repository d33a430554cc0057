"""The decode ops: the references against the full-sequence ops (same function at an offset), the Triton
kernels (split-K attention over selected or all cached rows, indexer scores + radix top-k, FP8 indexer keys on
e4m3 operands) against the references under TRITON_INTERPRET=1 at small odd sizes, and the input checks."""

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
    indexer_scores,
    indexer_topk,
    sparse_attention,
)
from dsa.ops.decode import decode_topk_reference  # noqa: E402
from dsa.ops.quantize import (  # noqa: E402
    FP8_DTYPE,
    fp8_cache_dtype,
    quantize_indexer,
    quantize_indexer_keys,
    quantize_indexer_queries,
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


@pytest.mark.parametrize("shape,selection", [((2, 1, 41, 3, 12, 9), "radix"), ((1, 3, 70, 5, 20, 70), "radix"),
                                             ((2, 2, 23, 2, 8, 4), "radix"), ((1, 1, 47, 3, 12, 5), "torch"),
                                             ((2, 1, 171, 3, 12, 5), "split")])
def test_indexer_kernel_matches_reference(shape, selection, gen):
    """The indexer kernel's scores and its top-k by each of decode's three selections (one row: torch.topk's
    k-th score; rows of >= 8 chunks of 4k scores: the two-stage radix top-k; else the radix top-k)."""
    from dsa.ops.kernels.decode import decode_selection  # noqa: PLC0415

    b, t, s, h_i, d_i, k = shape
    assert decode_selection(b * t, s, min(k, s)) == selection
    qi, ki, w = _indexer(b, t, s, h_i, d_i, gen)
    pos = _positions(b, t, s, gen).to(DEV)
    torch.testing.assert_close(decode_indexer_scores(qi, ki, w, pos, impl="triton"),
                               decode_indexer_scores(qi, ki, w, pos, impl="reference"), atol=1e-4, rtol=1e-5)
    ref = decode_indexer_topk(qi, ki, w, k, pos, impl="reference")
    out = decode_indexer_topk(qi, ki, w, k, pos, impl="triton")
    assert out.shape == ref.shape == (b, t, min(k, s))
    assert torch.equal(out.sort(-1).values, ref.sort(-1).values)


def test_fp8_reference_equals_the_full_sequence_fp8_indexer_at_an_offset(gen):
    """Cached FP8 keys (quantized alone, as a cache stores them) and the last T raw queries: the scores of the
    full-sequence FP8 indexer at those rows (up to the summation order) and its selected sets, whichever form
    holds the e4m3 values (e4m3, bf16, fp32)."""
    b, l, t, h_i, d_i, k = 2, 29, 6, 3, 16, 7
    qi, ki, w = _indexer(b, l, l, h_i, d_i, gen)
    pos = torch.arange(l - t, l).expand(b, t).to(DEV)
    k8, ks = quantize_indexer_keys(ki)
    full = indexer_scores(qi, ki, w, precision="fp8", impl="reference")[:, -t:]
    got = decode_indexer_scores(qi[:, -t:], k8, w[:, -t:], pos, k_scale=ks, impl="reference")
    fin = torch.isfinite(full)
    assert torch.equal(fin, torch.isfinite(got))
    assert (got[fin] - full[fin]).abs().max() <= 1e-5 * full[fin].abs().max()
    want = indexer_topk(qi, ki, w, k, precision="fp8", impl="reference")[:, -t:].sort(-1).values
    for stored in (k8, k8.bfloat16(), k8.float()):
        sel = decode_indexer_topk(qi[:, -t:], stored, w[:, -t:], k, pos, k_scale=ks, impl="reference")
        assert torch.equal(sel.sort(-1).values, want)


def _fp8_score_bound(qi, ki, w, ref, fin):
    """The allowed |kernel - reference| per score: fp32 summation order in the interpreter (1e-5 of the largest
    score); on a GPU Hopper's FP8 accumulator keeps ~14 bits, so 2^-11 of the sum of the absolute products
    that make each score (as tests/ops/test_indexer_fp8.py bounds the prefill pass)."""
    if not CUDA:
        return 1e-5 * ref[fin].abs().max()
    z = quantize_indexer(qi, ki, w)
    mag = torch.einsum("bth,btsh->bts", z.w.double().abs(),
                       torch.einsum("bthd,bsd->btsh", z.q.double().abs(), z.k.double().abs()))
    return (2.0**-11 * mag * z.k_scale.double()[:, None, :])[fin] + 1e-6


@pytest.mark.parametrize("shape", [(2, 1, 41, 3, 16, 9), (1, 3, 70, 5, 8, 70), (1, 2, 45, 64, 128, 20)])
def test_fp8_indexer_kernel_matches_reference(shape, gen):
    """The decode indexer kernel on FP8 keys (d_I below the FP8 MMA's K of 32, k past the context, and
    DeepSeek's 64 x 128), stored as e4m3 or as their bf16 copy: the reference's scores up to the accumulation
    and its selected sets; and the kernel on bf16 operands (what GPUs without e4m3 run) the same."""
    from dsa.ops.kernels.decode import decode_indexer_scores_triton, decode_indexer_topk_triton

    b, t, s, h_i, d_i, k = shape
    qi, ki, w = _indexer(b, t, s, h_i, d_i, gen)
    pos = _positions(b, t, s, gen).to(DEV)
    k8, ks = quantize_indexer_keys(ki)
    ref = decode_indexer_scores(qi, k8, w, pos, k_scale=ks, impl="reference")
    fin = torch.isfinite(ref)
    bound = _fp8_score_bound(qi, ki, w, ref, fin)
    want = decode_indexer_topk(qi, k8, w, k, pos, k_scale=ks, impl="reference").sort(-1).values
    q8, w8 = quantize_indexer_queries(qi, w)
    bf16 = (q8.bfloat16(), k8.bfloat16(), w8)
    runs = [(decode_indexer_scores(qi, st, w, pos, k_scale=ks, impl="triton"),
             decode_indexer_topk(qi, st, w, k, pos, k_scale=ks, impl="triton")) for st in (k8, k8.bfloat16())]
    runs.append((decode_indexer_scores_triton(*bf16, pos, k_scale=ks),
                 decode_indexer_topk_triton(*bf16, min(k, s), pos, k_scale=ks)))
    for got, sel in runs:
        assert torch.equal(fin, torch.isfinite(got))
        assert ((got[fin] - ref[fin]).abs().double() <= bound).all()
        # on a GPU the FP8 accumulator may swap near-ties of the k-th score: there the set is the top-k of the
        # kernel's own scores (checked within the bound just above)
        own = decode_topk_reference(got, k, pos).sort(-1).values if CUDA else want
        assert sel.shape == (b, t, min(k, s)) and torch.equal(sel.sort(-1).values, own)


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


def test_bad_fp8_inputs_name_the_argument(gen):
    qi, ki, w = _indexer(1, 1, 9, 2, 16, gen)
    pos = torch.tensor([[3]], device=DEV)
    k8, ks = quantize_indexer_keys(ki)
    with pytest.raises(TypeError, match="k_scale"):  # e4m3 keys alone cannot be scored
        decode_indexer_topk(qi, k8, w, 3, pos)
    with pytest.raises(ValueError, match="k_scale must have shape"):
        decode_indexer_topk(qi, k8, w, 3, pos, k_scale=ks[:, :5])
    with pytest.raises(TypeError, match="k_scale"):
        decode_indexer_scores(qi, k8, w, pos, k_scale=ks.double())
    with pytest.raises(TypeError, match="k_idx_cache"):  # float16 cannot hold every e4m3 value's exponent
        decode_indexer_topk(qi, k8.half(), w, 3, pos, k_scale=ks)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        bad_scale = ks.clone()
        bad_scale[0, 2] = bad
        with pytest.raises(ValueError, match="k_scale"):
            decode_indexer_topk(qi, k8, w, 3, pos, k_scale=bad_scale)
    nan_keys = k8.clone()
    nan_keys.view(torch.uint8)[0, 4, 1] = 0x7F  # e4m3fn's NaN byte
    with pytest.raises(ValueError, match="k_idx_cache holds NaN"):
        decode_indexer_topk(qi, nan_keys, w, 3, pos, k_scale=ks)
    with pytest.raises(ValueError, match="e4m3 values"):  # a bf16 copy of unquantized keys
        decode_indexer_topk(qi, ki.bfloat16(), w, 3, pos, k_scale=ks)
    qi12, ki12 = qi[..., :12], ki[..., :12]
    with pytest.raises(ValueError, match="power-of-two d_I"):
        decode_indexer_topk(qi12, ki12, w, 3, pos, k_scale=ks)
    assert k8.dtype == FP8_DTYPE


@pytest.mark.parametrize("attention", ["dense", "dsa", "dsa-fp8"])
def test_model_decoding_through_the_kernels(attention, gen):
    """A model decoding with impl='triton' (the kernels) gives the logits of its full forward (reference); with
    the FP8 indexer its cache holds e4m3 keys, scored by the FP8 decode kernel."""
    from dsa.layers import MLAConfig
    from dsa.model import ModelConfig, TransformerLM

    kw = {"vocab_size": 61, "d_model": 32, "n_layers": 1, "n_heads": 4, "max_seq_len": 32,
          "attention": attention.removesuffix("-fp8"), "top_k": 4, "indexer_dim": 16, "indexer_rope_dim": 8,
          "indexer_precision": "fp8" if attention.endswith("fp8") else "bf16",
          "mla": MLAConfig(kv_rank=16, rope_dim=8, nope_dim=8, v_dim=8)}
    ref = TransformerLM(ModelConfig(impl="reference", **kw), seed=5).eval().to(DEV)
    tri = TransformerLM(ModelConfig(impl="triton", **kw), seed=5).eval().to(DEV)
    tokens = torch.randint(0, 61, (2, 11), generator=gen).to(DEV)
    with torch.no_grad():
        full = ref(tokens).logits
        cache = tri.init_cache(2, 11)
        if attention.endswith("fp8"):  # e4m3 on CPU and sm_89+ GPUs, the bf16 copy on older ones
            assert cache.layers[0].k_idx.dtype == fp8_cache_dtype(DEV)
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


@pytest.mark.skipif(not CUDA, reason="real sizes run only with CUDA")
@pytest.mark.parametrize("batch", [1, 3])
def test_real_size_fp8_indexer_keys_on_gpu(batch, gen):
    """DeepSeek's FP8 indexer in decode: 64 heads x 128 on e4m3 keys with per-token scales (as the cache holds
    them on this GPU), a context of 8K + odd, k = 2048: the kernel's scores within the bound of Hopper's FP8
    accumulator, and a selection of the reference's score mass (fp8 accumulation may swap near-ties only)."""
    s = 8192 + 37
    g = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    qi = torch.randn(batch, 1, 64, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    ki = torch.randn(batch, s, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.rand(batch, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k8, ks = quantize_indexer_keys(ki)
    k8 = k8.to(fp8_cache_dtype("cuda"))
    pos = torch.tensor([[s - 1 - 500 * i] for i in range(batch)], device="cuda")
    ref = decode_indexer_scores(qi, k8, w, pos, k_scale=ks, impl="reference")
    got = decode_indexer_scores(qi, k8, w, pos, k_scale=ks, impl="triton")
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(got))
    assert ((got[fin] - ref[fin]).abs().double() <= _fp8_score_bound(qi, ki, w, ref, fin)).all()
    sel_t = decode_indexer_topk(qi, k8, w, 2048, pos, k_scale=ks, impl="triton")
    sel_r = decode_indexer_topk(qi, k8, w, 2048, pos, k_scale=ks, impl="reference")
    picked = [ref.gather(-1, x.long()).sum() for x in (sel_t, sel_r)]
    assert float(picked[0]) == pytest.approx(float(picked[1]), rel=1e-3)
