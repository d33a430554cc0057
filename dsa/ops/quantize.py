"""The indexer in FP8 (e4m3) as DeepSeek-V3.2 runs it: a Hadamard rotation of its queries and key, per-token
scales, and the scores I[t,s] = k_scale[s] * sum_j w'[t,j] * ReLU(q8[t,j] . k8[s]) with w' = w * q_scale.

- :func:`hadamard_transform`: the normalised fast Walsh-Hadamard transform over the last dim (orthogonal:
  q . k is unchanged, up to rounding). It spreads a few large channels (outliers) over all of them, so that one
  scale per token loses less of the small ones to e4m3's 3 mantissa bits.
- :func:`quantize_indexer`: rotate, then one scale per key token and one per (query token, head), amax / 448
  (the largest e4m3 value). The query scale folds into the head weight: ReLU is positively homogeneous and the
  scales are positive, so w * q_scale * ReLU(q8 . k8) = w * ReLU((q8 * q_scale) . k8). The key scale stays
  separate: it multiplies a whole column of scores after the head sum.
- :func:`quantize_indexer_queries`, :func:`quantize_indexer_keys`: its two halves, row by row: an FP8 indexer
  cache (:class:`dsa.layers.cache.LayerCache`) stores the keys so quantized, and a decode step quantizes its
  new queries so (:func:`dsa.ops.decode_indexer_topk` with ``k_scale``).
- :func:`quantize_rows`: the rows by ``impl``: the eager reference :func:`_quantize_rows` (the specification:
  the butterfly, ~100 passes over memory at 128K tokens x 64 heads x 128) or the Triton kernel
  (:mod:`dsa.ops.kernels.quantize`: one pass, the rotation as one tl.dot with the +-1 matrix).
- :func:`fp8_dot_supported`: whether a device multiplies e4m3 operands natively (sm_89+: Ada, Hopper). On
  other GPUs the kernels take the same e4m3 values cast to bf16 (exact: e4m3 values are bf16 values), so the
  scores are the same up to the accumulation order.

Only the selection runs in FP8 (it carries no gradient); the indexer's KL loss scores its selected positions
from the bf16 (or fp32) outputs, so its gradient reaches the indexer's weights as before.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import resolve_impl

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
PRECISIONS = ("bf16", "fp8")
# a floor under amax: an all-zero row (e.g. a padded head) keeps a finite scale and quantizes to zeros
_AMAX_FLOOR = 1e-12


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """x (..., d), d a power of two -> x @ H_d / sqrt(d) (Sylvester's H_d, symmetric; orthogonal after the
    scaling), in x's dtype, computed in fp32 by log2(d) butterfly stages (no d x d matrix)."""
    d = x.shape[-1]
    if d < 1 or d & (d - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two last dim, got {d}")
    return _fwht(x.float().reshape(-1, d)).reshape(x.shape).to(x.dtype)


def _fwht(y: torch.Tensor) -> torch.Tensor:
    """(n, d) fp32 -> (n, d) fp32 rows times H_d / sqrt(d) (d a power of two, checked by the callers)."""
    n, d = y.shape
    h = 1
    while h < d:
        y = y.view(n, d // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(n, d) * d**-0.5


class IndexerFP8(NamedTuple):
    """The indexer's inputs in e4m3 with their scales.

    q: (B, L, H_I, d_I) float8_e4m3fn; k: (B, Lk, d_I) float8_e4m3fn;
    w: (B, L, H_I) float32, the head weights times the query scales; k_scale: (B, Lk) float32."""

    q: torch.Tensor
    k: torch.Tensor
    w: torch.Tensor
    k_scale: torch.Tensor


# rows (of d_I values) rotated and quantized at once: bounds the fp32 temporaries of the butterfly (a few copies
# of 2^24 floats, 64 MiB each) whatever the length; (128K tokens x 64 heads) queries take 32 steps at d_I = 128
_ROWS_ELEMS = 2**24


def _quantize_rows(x: torch.Tensor, rotate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) -> (e4m3 values (..., d), fp32 scale (...)): x (rotated first, in fp32, when ``rotate``)
    ~ values * scale, each row's amax mapped to 448."""
    d = x.shape[-1]
    if rotate and (d < 1 or d & (d - 1)):
        raise ValueError(f"the Hadamard rotation needs a power-of-two indexer dim, got {d}")
    rows = x.reshape(-1, d)
    vals = torch.empty(rows.shape, device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty(rows.shape[0], device=x.device, dtype=torch.float32)
    step = max(1, _ROWS_ELEMS // d)
    for r0 in range(0, rows.shape[0], step):
        xf = rows[r0:r0 + step].float()
        if rotate:
            xf = _fwht(xf)
        sc = xf.abs().amax(-1).clamp(min=_AMAX_FLOOR) / FP8_MAX
        vals[r0:r0 + step] = (xf / sc[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        scale[r0:r0 + step] = sc
    return vals.view(x.shape), scale.view(x.shape[:-1])


# the kernel holds H_d (d x d) and a BLOCK_R x d fp32 product per program: d_I <= 128 (DeepSeek-V3.2's) checked
# to fit an H200 (scripts/check_kernel_resources.py); larger dims take the reference
TRITON_MAX_D = 128
_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_rows(name: str, x: torch.Tensor, rotate: bool) -> None:
    """x (..., d): a float tensor of at least one dim, d a power of two when rotated (before any work)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a last (indexer) dim, got a 0-dim tensor")
    d = x.shape[-1]
    if rotate and (d < 1 or d & (d - 1)):
        raise ValueError(f"{name}: the Hadamard rotation (rotate=True) needs a power-of-two last dim, got {d}")


def _why_no_kernel(x: torch.Tensor) -> str | None:
    """Why ``quantize_rows_triton`` does not cover x (None when it does)."""
    if x.dtype not in _KERNEL_DTYPES:
        return f"the kernel reads bf16, fp16 or fp32 rows, got {x.dtype}"
    if x.shape[-1] > TRITON_MAX_D:
        return f"the kernel takes a last dim <= {TRITON_MAX_D}, got {x.shape[-1]}"
    if x.is_cuda and not fp8_dot_supported(x.device):
        return "Triton has no e4m3 type below compute capability 8.9"
    return None


def quantize_rows(x: torch.Tensor, rotate: bool, *, impl: str = "auto",
                  name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) -> (e4m3 values (..., d), fp32 scale (...)) by ``impl``: the reference :func:`_quantize_rows`
    (the specification) or the Triton kernel (one pass; its fp32 sums in another order than the butterfly's, so
    a value on a rounding boundary may land one e4m3 step away). Rows are independent in both, and ``auto``
    picks one per device (the kernel on CUDA with an e4m3 type, d <= TRITON_MAX_D), so a row quantizes alike
    whichever call holds it. name: the argument's name in error messages."""
    _check_rows(name, x, rotate)
    if resolve_impl(impl, x, op="quantize_rows", unsupported=_why_no_kernel(x)) == "reference":
        return _quantize_rows(x, rotate)
    # a custom op: torch.compile sees one node, not the launch code (imports triton: only when it runs)
    from .kernels.registered import quantize_rows_op  # noqa: PLC0415

    return quantize_rows_op(x, rotate, _AMAX_FLOOR)


@torch.no_grad()
def quantize_indexer(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, *, rotate: bool = True, impl: str = "auto"
) -> IndexerFP8:
    """The indexer's queries, key and head weights in FP8 with per-token scales (see the module docstring).

    q_idx (B, L, H_I, d_I), k_idx (B, Lk, d_I), w (B, L, H_I) float; rotate: apply the Hadamard rotation first
    (d_I a power of two; DeepSeek's choice; False only to measure what it buys); impl: "auto" | "reference" |
    "triton" (:func:`quantize_rows`). No gradient. Returns :class:`IndexerFP8`."""
    from .checks import check_indexer  # noqa: PLC0415 (checks import nothing from here)

    check_indexer(q_idx, k_idx, w, same_length=False)
    _check_rows("q_idx", q_idx, rotate)
    _check_rows("k_idx", k_idx, rotate)
    # one choice for both halves, made before either is quantized
    impl = resolve_impl(impl, q_idx, k_idx, op="quantize_indexer",
                        unsupported=_why_no_kernel(q_idx) or _why_no_kernel(k_idx))
    q8, w8 = quantize_indexer_queries(q_idx, w, rotate=rotate, impl=impl)
    k8, k_scale = quantize_indexer_keys(k_idx, rotate=rotate, impl=impl)
    return IndexerFP8(q8, k8, w8, k_scale)


@torch.no_grad()
def quantize_indexer_queries(
    q_idx: torch.Tensor, w: torch.Tensor, *, rotate: bool = True, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """q_idx (..., H_I, d_I), w (..., H_I) -> (e4m3 queries (..., H_I, d_I), w * q_scale (..., H_I) fp32): the
    query half of :func:`quantize_indexer`, one scale per (token, head), each row on its own (so a decode step
    quantizes its new queries exactly as the full forward quantizes the same rows, with the same ``impl``)."""
    _check_rows("q_idx", q_idx, rotate)
    if not isinstance(w, torch.Tensor) or w.shape != q_idx.shape[:-1]:
        raise ValueError(f"w must have shape q_idx.shape[:-1] = {tuple(q_idx.shape[:-1])}, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    # rotated in fp32 and quantized once: no bf16 rounding between
    q8, q_scale = quantize_rows(q_idx, rotate, impl=impl, name="q_idx")
    return q8, w.float() * q_scale


@torch.no_grad()
def quantize_indexer_keys(
    k_idx: torch.Tensor, *, rotate: bool = True, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """k_idx (..., d_I) -> (e4m3 keys (..., d_I), k_scale (...) fp32): the key half of :func:`quantize_indexer`,
    one scale per token; what an FP8 indexer cache stores (each token's row on its own: appending tokens one
    by one gives the rows of quantizing the whole sequence at once, with the same ``impl``)."""
    return quantize_rows(k_idx, rotate, impl=impl, name="k_idx")


def indexer_key_bytes(d_i: int, fp8: bool, dtype_bytes: int = 2) -> int:
    """Bytes one cached indexer key takes: d_I values at ``dtype_bytes``, or FP8 (DeepSeek-V3.2's cache) one byte
    a value + its fp32 scale (132 bytes at d_I = 128)."""
    return d_i + 4 if fp8 else d_i * dtype_bytes


def fp8_dot_supported(device: torch.device | str) -> bool:
    """True where the Triton kernels multiply e4m3 operands natively: a CUDA device of compute capability
    >= 8.9 (Ada, Hopper, Blackwell). The interpreter on CPU runs fp8 tl.dot too (checked with triton 3.9), but
    that is emulation; the dispatch (:func:`fp8_operands_dtype`) decides separately."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_operands_dtype(device: torch.device | str, interpret: bool) -> torch.dtype:
    """The dtype the kernels read the e4m3 values in: e4m3 where the device (or Triton's CPU interpreter, which
    emulates fp8 tl.dot) has it, bf16 elsewhere (the same values: exact)."""
    return FP8_DTYPE if interpret or fp8_dot_supported(device) else torch.bfloat16


def fp8_cache_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype an FP8 indexer cache stores its e4m3 keys in on ``device``: e4m3 (1 byte a value) wherever the
    kernels can read it (sm_89+ GPUs; the CPU, whose reference casts to fp32 and whose Triton interpreter runs
    fp8 tl.dot), their exact bf16 copy on an older GPU (Triton has no e4m3 type there)."""
    device = torch.device(device)
    return torch.bfloat16 if device.type == "cuda" and not fp8_dot_supported(device) else FP8_DTYPE


def fp8_operands(z: IndexerFP8) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) of ``z`` in the dtype the kernels read on z's device (:func:`fp8_operands_dtype`)."""
    from .dispatch import interpret_mode  # noqa: PLC0415

    dt = fp8_operands_dtype(z.q.device, interpret_mode())
    return z.q.to(dt), z.k.to(dt)
