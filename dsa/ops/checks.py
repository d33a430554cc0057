"""Input checks of the public ops: one place, the same for every impl, each error names the argument.

Shape and dtype checks are free. Value checks (NaN scores, positions out of range) read the tensor on the
host, a synchronisation: they run eagerly and are skipped under ``torch.compile``, where a host read would
break the graph, under CUDA graph capture, where it is an error, and while a model is traced for export.
"""

from __future__ import annotations

import torch

from ..checks import FLOAT_DTYPES, check_same, check_tensor

INDEX_DTYPES = (torch.int32, torch.int64)


def exporting() -> bool:
    """Whether the op is being traced into a graph for export (ONNX: TorchScript tracing or torch.export)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def values_checked() -> bool:
    """Whether value checks run now (eager mode), or not: inside torch.compile or a model traced for export
    (the host read would break the graph or be frozen into it as a constant) and during CUDA graph capture
    (a host read is an error there)."""
    if torch.compiler.is_compiling() or exporting():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_finite(name: str, t: torch.Tensor) -> None:
    """NaN or inf in ``t`` would be ranked by its bit pattern in a top-k: refuse it before any work."""
    if values_checked() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or inf values: the top-k cannot rank them")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v); returns the group size H / H_kv."""
    check_tensor("q", q, 4, FLOAT_DTYPES)
    check_tensor("k", k, 4, FLOAT_DTYPES)
    check_tensor("v", v, 4, FLOAT_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, h, l, d = q.shape
    if k.shape[0] != b or k.shape[2] != l or k.shape[3] != d:
        raise ValueError(f"k shape {tuple(k.shape)} does not fit q shape {tuple(q.shape)} as (B, H_kv, L, d_qk)")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} does not fit k shape {tuple(k.shape)} as (B, H_kv, L, d_v)")
    if h % k.shape[1]:
        raise ValueError(f"the query heads ({h}) must be a multiple of the K/V heads ({k.shape[1]})")
    return h // k.shape[1]


def check_selection(idx: torch.Tensor, b: int, lq: int, lk: int, name: str = "idx") -> None:
    """idx (B, Lq, K) int32/int64, positions in [0, Lk) or -1 for an unused slot."""
    check_tensor(name, idx, 3, INDEX_DTYPES)
    if idx.shape[0] != b or idx.shape[1] != lq:
        raise ValueError(f"{name} must have shape (B, L, K)=({b}, {lq}, K), got {tuple(idx.shape)}")
    if values_checked() and idx.numel() and (int(idx.max()) >= lk or int(idx.min()) < -1):
        raise ValueError(f"{name} must hold positions in [0, L={lk}) or -1 for an unused slot")


def check_indexer(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, *, same_length: bool = True) -> None:
    """q_idx (B, Lq, H_I, d_I), k_idx (B, Lk, d_I), w (B, Lq, H_I); Lq == Lk unless ``same_length`` is False."""
    check_tensor("q_idx", q_idx, 4, FLOAT_DTYPES)
    check_tensor("k_idx", k_idx, 3, FLOAT_DTYPES)
    check_tensor("w", w, 3, FLOAT_DTYPES)
    check_same("k_idx.shape[0] (B)", k_idx.shape[0], "q_idx.shape[0]", q_idx.shape[0])
    check_same("w.shape[0] (B)", w.shape[0], "q_idx.shape[0]", q_idx.shape[0])
    check_same("w.shape[1] (L)", w.shape[1], "q_idx.shape[1]", q_idx.shape[1])
    check_same("k_idx.shape[-1] (d_I)", k_idx.shape[-1], "q_idx.shape[-1]", q_idx.shape[-1])
    check_same("w.shape[-1] (H_I)", w.shape[-1], "q_idx.shape[2]", q_idx.shape[2])
    if same_length:
        check_same("k_idx.shape[1] (L)", k_idx.shape[1], "q_idx.shape[1]", q_idx.shape[1])


def check_scale(scale: float | None) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
