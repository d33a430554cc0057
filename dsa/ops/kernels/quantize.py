"""The FP8 indexer's rotation and per-row quantization in one pass (``_quantize_kernels.quantize_rows_kernel``):
each row read once in its dtype, its e4m3 values and fp32 scale written once. The eager reference
(``dsa.ops.quantize._quantize_rows``) runs log2(d) butterfly stages in fp32 over the whole tensor: ~100 passes
over HBM at 128K tokens x 64 heads x 128 dims.

Which calls reach it (dtypes, d, devices) the op decides (:mod:`dsa.ops.quantize`); this module launches.
"""

from __future__ import annotations

import functools

import torch

from ._common import interpret_mode, jit, next_pow2
from .indexer import min_dot_k

FP8 = torch.float8_e4m3fn
# rows per program and warps, compiled (untimed: 64 rows x 128 dims is a 16 KiB bf16 tile and a 64 x 128 fp32
# product, the score pass's accumulator size) and in the interpreter (small: it runs a program at a time).
# fp32 rows rotate by an ieee tl.dot (FMAs, no tensor cores): at 64 rows x 4 warps ptxas spilled 30 KB a thread
# at d 128 for sm_90a, at 32 x 8 none (218 registers; scripts/check_kernel_resources.py)
ROWS_TILE = (64, 4)
FP32_ROWS_TILE = (32, 8)
INTERP_ROWS_TILE = (16, 1)


def quantize_meta(d: int, dtype: torch.dtype, rotate: bool, interp: bool) -> dict:
    """The compile-time arguments of ``quantize_rows_kernel`` for rows of d values of ``dtype`` (one place for
    the launch and the ahead-of-time resource check, scripts/check_kernel_resources.py). Rotating, the columns
    are padded to tl.dot's smallest K (zero columns of x and H add nothing and change no amax)."""
    block_r, warps = INTERP_ROWS_TILE if interp else FP32_ROWS_TILE if dtype == torch.float32 else ROWS_TILE
    d_pad = max(min_dot_k(dtype), next_pow2(d)) if rotate else next_pow2(d)
    return dict(D=d, D_PAD=d_pad, BLOCK_R=block_r, ROTATE=rotate, IEEE=dtype == torch.float32, INTERP=interp,
                FP8_MAX=torch.finfo(FP8).max, num_warps=warps)


@functools.lru_cache(maxsize=16)
def sylvester_padded(d: int, d_pad: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(d_pad, d_pad) ``dtype``: Sylvester's +-1 matrix H_d (d a power of two) in the top-left corner, zeros
    elsewhere; unnormalised, so exact in every float dtype. Cached: a decode step quantizes a few rows."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    out = torch.zeros(d_pad, d_pad, dtype=dtype)
    out[:d, :d] = h
    return out.to(device)


@torch.no_grad()
def quantize_rows_triton(x: torch.Tensor, rotate: bool, *, amax_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) bf16/fp16/fp32 -> (e4m3 values (..., d), fp32 scale (...)): each row (rotated by H_d / sqrt(d)
    first when ``rotate``, d a power of two) ~ values * scale, scale = max(amax, amax_floor) / 448. Inputs are
    checked by the op (dsa.ops.quantize); any layout (non-contiguous rows are copied once)."""
    from . import _quantize_kernels as m  # noqa: PLC0415 (imports triton: only when a kernel runs)

    d = x.shape[-1]
    rows = x.reshape(-1, d).contiguous()
    n = rows.shape[0]
    vals = torch.empty(rows.shape, device=x.device, dtype=FP8)
    scale = torch.empty(n, device=x.device, dtype=torch.float32)
    if n:
        meta = quantize_meta(d, x.dtype, rotate, interpret_mode())
        h = sylvester_padded(d, meta["D_PAD"], x.dtype, x.device) if rotate else rows  # H not read unrotated
        grid = (-(-n // meta["BLOCK_R"]),)
        jit(m.quantize_rows_kernel)[grid](rows, h, vals, scale, n, amax_floor, **meta)
    return vals.view(x.shape), scale.view(x.shape[:-1])
