"""The FP8 indexer's rotation + per-row quantization: the Triton kernel (dsa.ops.kernels.quantize; Triton's CPU
interpreter without CUDA) against the eager reference ``dsa.ops.quantize._quantize_rows`` (the specification),
on fresh random odd shapes with outlier rows and an all-zero row, through the public entries and their impl
choice, and the input checks.

The kernel sums the +-1 products in fp32 in another order than the reference's butterfly: a rotated value on a
rounding boundary may land on the neighbouring e4m3 value. Unrotated, nothing is summed: the bytes are equal on
CPU. On CUDA torch divides by a scalar as a product with its reciprocal (amax / 448 then differs from the
kernel's IEEE division by an ulp, measured on an H200), so there the unrotated rows are held to the rotated
bound."""

import pytest
import torch
from triton_interpreter import interpreter_for_module

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported

pytest.importorskip("triton", reason="triton is not importable: the Triton kernels cannot be tested")

import dsa.ops.quantize as qz  # noqa: E402
from dsa.ops.quantize import (  # noqa: E402
    FP8_DTYPE,
    FP8_MAX,
    _quantize_rows,
    quantize_indexer,
    quantize_indexer_keys,
    quantize_indexer_queries,
    quantize_rows,
)

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
# scales: amax of the rotated row, summed in another order (fp32: a few ulps; tensor cores on CUDA a few more)
SCALE_RTOL = 1e-5 if CUDA else 2e-6


def _rows(gen: torch.Generator, lead: tuple[int, ...], d: int, dtype: torch.dtype) -> torch.Tensor:
    """(*lead, d) normal values with a few outlier channels (x1000 and x1e-6 rows), a row under the amax floor,
    and an all-zero row."""
    x = torch.randn(*lead, d, generator=gen)
    flat = x.view(-1, d)
    n = flat.shape[0]
    for r in torch.randperm(n, generator=gen)[:max(1, n // 5)].tolist():
        flat[r, int(torch.randint(0, d, (1,), generator=gen))] *= 1000.0  # one large channel
    flat[n // 2] *= 1e-6
    flat[n // 3] = 1e-14  # amax 1e-14 < the floor 1e-12: the scale is the floor's
    flat[n - 1] = 0.0
    return x.to(dtype).to(DEV)


def _e4m3_rank(v: torch.Tensor) -> torch.Tensor:
    """Each e4m3 value's position on the e4m3 grid (ordered: neighbours differ by 1, +0 and -0 both 0)."""
    b = v.view(torch.uint8).to(torch.int32)
    return torch.where(b >= 128, -(b - 128), b)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same e4m3 bytes (torch.equal compares float8 tensors only through their bits)."""
    return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def assert_quantized_close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
                           exact: bool) -> None:
    """Scales to SCALE_RTOL; e4m3 values equal (exact) or each at most one grid step off, <= 1% of them off."""
    (v, s), (vr, sr) = got, want
    assert v.dtype == vr.dtype == FP8_DTYPE and s.dtype == sr.dtype == torch.float32
    assert v.shape == vr.shape and s.shape == sr.shape
    if exact and not CUDA:
        assert torch.equal(s, sr) and _same(v, vr)
        return
    torch.testing.assert_close(s, sr, rtol=SCALE_RTOL, atol=0)
    steps = (_e4m3_rank(v) - _e4m3_rank(vr)).abs()
    assert int(steps.max()) <= 1, "a value more than one e4m3 step from the reference's"
    assert int((steps > 0).sum()) <= max(1, v.numel() // 100), f"{int((steps > 0).sum())} of {v.numel()} differ"
    # and so the dequantized values within one step of their row's grid (32: e4m3's step in its top binade, and
    # one more for the scales' difference)
    deq, deq_r = v.float() * s[..., None], vr.float() * sr[..., None]
    assert ((deq - deq_r).abs() <= sr[..., None] * 33).all()


@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [1, 4, 16, 32, 64, 128])
def test_kernel_matches_the_reference(gen, d, dtype, rotate):
    lead = (2, 2 * int(torch.randint(3, 12, (1,), generator=gen)) + 1, 3)  # odd tokens, 3 heads: odd row counts
    x = _rows(gen, lead, d, dtype)
    got = quantize_rows(x, rotate, impl="triton")
    assert_quantized_close(got, _quantize_rows(x, rotate), exact=not rotate)
    assert got[1].shape == lead and (got[1] > 0).all()
    assert (got[0][-1, -1, -1].float() == 0).all()  # the all-zero row: zeros, not NaN


def test_kernel_rounds_to_nearest_even_as_torch(gen):
    """Unrotated rows whose amax is 448 have scale 1: the values go to e4m3 unchanged, so the kernel's rounding
    meets torch's cast on every midpoint between neighbours (ties to even), subnormals, and random values."""
    grid = torch.arange(0, 127, dtype=torch.uint8).view(FP8_DTYPE).float()  # the non-negative finite e4m3 values
    mids = (grid[1:] + grid[:-1]) / 2
    rand = (torch.rand(2000, generator=gen) * 2 - 1) * FP8_MAX * torch.rand(2000, generator=gen) ** 8
    vals = torch.cat([grid, mids, -mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e3)), rand])
    d = 128
    x = torch.cat([vals, torch.zeros(-vals.numel() % (d - 1))]).view(-1, d - 1)
    x = torch.cat([torch.full((x.shape[0], 1), FP8_MAX), x], 1).to(DEV)  # amax 448: scale exactly 1
    v, s = quantize_rows(x, False, impl="triton")
    assert (s == 1).all()
    assert _same(v, x.to(FP8_DTYPE))


def test_kernel_takes_any_layout_and_no_rows(gen):
    x = _rows(gen, (5, 7), 32, torch.bfloat16).transpose(0, 1)  # not contiguous
    assert_quantized_close(quantize_rows(x, True, impl="triton"), _quantize_rows(x, True), exact=False)
    v, s = quantize_rows(torch.zeros(0, 3, 16, device=DEV), True, impl="triton")
    assert v.shape == (0, 3, 16) and s.shape == (0, 3)


def test_public_entries_by_impl_and_row_by_row_as_a_decode_step(gen):
    """quantize_indexer's halves by the kernel match the reference, and quantizing one token at a time (a decode
    step, a cache append) gives the bytes of the whole call (rows are independent)."""
    b, l, h, d = 2, 9, 5, 64
    q, k = _rows(gen, (b, l, h), d, torch.bfloat16), _rows(gen, (b, l), d, torch.bfloat16)
    w = torch.randn(b, l, h, generator=gen).to(DEV)
    z, zr = quantize_indexer(q, k, w, impl="triton"), quantize_indexer(q, k, w, impl="reference")
    vq, sq = quantize_rows(q, True, impl="triton")
    assert _same(z.q, vq) and torch.equal(z.w, w.float() * sq)  # the query scale folded into w
    assert_quantized_close((vq, sq), _quantize_rows(q, True), exact=False)
    assert_quantized_close((z.k, z.k_scale), (zr.k, zr.k_scale), exact=False)
    for t in range(l):
        q8, w8 = quantize_indexer_queries(q[:, t:t + 1], w[:, t:t + 1], impl="triton")
        k8, ks = quantize_indexer_keys(k[:, t:t + 1], impl="triton")
        assert _same(q8, z.q[:, t:t + 1]) and torch.equal(w8, z.w[:, t:t + 1])
        assert _same(k8, z.k[:, t:t + 1]) and torch.equal(ks, z.k_scale[:, t:t + 1])


def test_the_kernel_path_compiles_fullgraph(gen):
    """The FP8 layer's quantization inside torch.compile(fullgraph=True): the kernel is one custom-op node (aot_eager
    without CUDA, where the interpreter runs it; inductor with CUDA), with the eager bytes."""
    torch._dynamo.reset()
    x = _rows(gen, (5, 3), 32, torch.bfloat16)

    def quantize(x):
        return quantize_rows(x, True, impl="triton")

    got = torch.compile(quantize, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(x)
    want = quantize(x)
    assert _same(got[0], want[0]) and torch.equal(got[1], want[1])


def test_auto_is_the_kernel_on_cuda_and_the_reference_on_cpu(gen):
    x = _rows(gen, (7,), 16, torch.bfloat16)
    want = quantize_rows(x, True, impl="triton" if CUDA else "reference")
    got = quantize_rows(x, True)
    assert _same(got[0], want[0]) and torch.equal(got[1], want[1])


def test_triton_on_cpu_without_the_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="impl='triton' cannot run here.*TRITON_INTERPRET"):
        quantize_rows(torch.zeros(3, 16), True, impl="triton")


def test_bad_input_is_refused_before_any_work(monkeypatch):
    def no_work(*args):
        raise AssertionError("quantized before the inputs were checked")

    import dsa.ops.kernels.quantize as kq  # noqa: PLC0415

    monkeypatch.setattr(qz, "_quantize_rows", no_work)
    monkeypatch.setattr(kq, "quantize_rows_triton", no_work)
    q, k, w = torch.zeros(1, 3, 2, 24), torch.zeros(1, 3, 24), torch.ones(1, 3, 2)
    with pytest.raises(ValueError, match="q_idx.*power-of-two"):
        quantize_indexer(q, k, w, impl="reference")
    with pytest.raises(ValueError, match="quantize_indexer.*float64"):  # the keys refused before the queries run
        quantize_indexer(torch.zeros(1, 3, 2, 16), torch.zeros(1, 3, 16, dtype=torch.float64), w, impl="triton")
    with pytest.raises(ValueError, match="k_idx.*power-of-two"):
        quantize_indexer_keys(k, impl="reference")
    with pytest.raises(ValueError, match="w must have shape"):
        quantize_indexer_queries(torch.zeros(3, 2, 16), torch.ones(3, 4), impl="reference")
    with pytest.raises(ValueError, match="impl must be one of"):
        quantize_indexer_keys(torch.zeros(3, 16), impl="fast")
    with pytest.raises(TypeError, match="k_idx must be a floating-point"):
        quantize_indexer_keys(torch.zeros(3, 16, dtype=torch.int32))
    for x, why in ((torch.zeros(3, 16, dtype=torch.float64), "float64"), (torch.zeros(3, 256), "last dim <= 128")):
        with pytest.raises(ValueError, match=why):
            quantize_indexer_keys(x, impl="triton")


def test_unrotated_rows_of_any_width_take_the_kernel(gen):
    x = _rows(gen, (11,), 24, torch.float32)  # not a power of two: fine without the rotation
    assert_quantized_close(quantize_rows(x, False, impl="triton"), _quantize_rows(x, False), exact=True)


@pytest.mark.skipif(not CUDA, reason="real sizes run only with CUDA (~7 GB at batch 2)")
@pytest.mark.parametrize("b,l", [(1, 131072), (2, 131072 + 64)])
def test_kernel_at_deepseek_size(b, l):
    """q (B, L, 64, 128) bf16, DeepSeek-V3.2's indexer queries at 128K; at batch 2 the element offsets pass 2^31.
    The first and last rows (the largest offsets) against the reference on those slices."""
    g = torch.Generator(device="cuda").manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    q = torch.randn(b, l, 64, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v, s = quantize_rows(q, True, impl="triton")
    for sl in (slice(0, 257), slice(l - 257, l)):
        assert_quantized_close((v[:, sl], s[:, sl]), _quantize_rows(q[:, sl], True), exact=False)
