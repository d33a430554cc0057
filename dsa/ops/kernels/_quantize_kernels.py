"""Triton kernel of the FP8 indexer's quantization (``dsa.ops.quantize``; imported only when triton is importable).

``quantize_rows_kernel``: one program = BLOCK_R rows of D values (row-major, D_PAD >= D columns in registers,
the padded ones zero). ROTATE: the rows times the +-1 Sylvester matrix H (D_PAD x D_PAD, H_D in its top-left
corner, zeros elsewhere, in the input's dtype) by one tl.dot with fp32 accumulation, times D^-0.5: +-1 is exact
in bf16/fp16, so the products are exact and only their fp32 sum order differs from the butterfly's. Then each
row's amax, its scale max(amax, AMAX_FLOOR) / FP8_MAX, the values divided by it, clamped to +-FP8_MAX and cast to
e4m3 (round to nearest even, as torch's cast: by hand in fp32, then an exact cast). Padded
columns hold zeros: they change neither amax nor a value.
"""

import triton.language as tl


def quantize_rows_kernel(
    X, H, V, S, N, AMAX_FLOOR,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_R: tl.constexpr, ROTATE: tl.constexpr, IEEE: tl.constexpr,
    INTERP: tl.constexpr, FP8_MAX: tl.constexpr,
):
    # int64 rows: rows * D passes 2^31 at 128K tokens x 64 heads x 128 dims with a batch of two
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, D_PAD)
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]
    offs = rows[:, None] * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0)
    if ROTATE:
        h = tl.load(H + cols[:, None] * D_PAD + cols[None, :])
        if INTERP:  # the interpreter rounds a bf16 tl.dot's result; in fp32 the +-1 products stay exact
            x = x.to(tl.float32)
            h = h.to(tl.float32)
        if IEEE or INTERP:  # fp32 rows: no tf32 rounding of the inputs
            y = tl.dot(x, h, input_precision="ieee")
        else:
            y = tl.dot(x, h)
        y = y * (D ** -0.5)
    else:
        y = x.to(tl.float32)
    amax = tl.max(tl.abs(y), 1)
    # div_rn: IEEE division, as torch's (Triton's '/' on fp32 is an approximate division on NVIDIA GPUs)
    scale = tl.math.div_rn(tl.maximum(amax, AMAX_FLOOR), tl.full([BLOCK_R], FP8_MAX, tl.float32))
    v = tl.math.div_rn(y, tl.broadcast_to(scale[:, None], [BLOCK_R, D_PAD]))
    v = tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX)
    # v rounded to nearest even on e4m3's grid in fp32, so that the cast below is exact on every backend:
    # Triton 3.9's CPU interpreter rounds a cast half up and drops a carry into the exponent (124.7 -> 64, not
    # 128); the GPU's cvt rounds right and gets the same values this way
    bits = v.to(tl.int32, bitcast=True)
    e = (bits >> 23) & 0xFF  # biased fp32 exponent of |v|
    # e4m3's step: 3 mantissa bits below 2^e down to its smallest normal, 2^-6; 2^-9 among the subnormals
    step_e = tl.maximum(e, 127 - 6) - 3
    # 1.5 * 2^23 * step: |v| + magic lies in a binade whose fp32 spacing is the step, so the add rounds (to
    # nearest even) to a multiple of it and the subtraction is exact
    magic = ((step_e + 23) << 23 | 0x400000).to(tl.float32, bitcast=True)
    r = (tl.abs(v) + magic) - magic
    # v's sign bit on r, by bits: -0.0 stays -0.0 (and a negative value rounded to zero gives -0.0), as torch's
    # cast; tl.where(bits < 0, -r, r) gave +0.0 there on an H200
    v = (r.to(tl.int32, bitcast=True) | ((bits >> 31) << 31)).to(tl.float32, bitcast=True)
    tl.store(V + offs, v.to(tl.float8e4nv), mask=mask)
    tl.store(S + rows, scale, mask=rmask)
