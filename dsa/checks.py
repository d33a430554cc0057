"""Argument checks that fail loudly, naming the argument (never a silent wrong answer), and where the code runs
(:func:`resolve_device`, :func:`interpret_mode`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_top_k(top_k: int | torch.Tensor, seq_len: int, name: str = "top_k") -> None:
    """k must satisfy 1 <= k <= L (a scalar, or every entry of a per-query tensor)."""
    if isinstance(top_k, torch.Tensor):
        if top_k.dtype.is_floating_point or top_k.dtype == torch.bool:
            raise TypeError(f"{name} tensor must have an integer dtype, got {top_k.dtype}")
        if top_k.numel() == 0:
            raise ValueError(f"{name} tensor is empty")
        lo, hi = int(top_k.min()), int(top_k.max())
    else:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"{name} must be an int or an integer tensor, got {type(top_k).__name__}")
        lo = hi = top_k
    if lo < 1:
        raise ValueError(f"{name} must be >= 1, got {lo}")
    if hi > seq_len:
        raise ValueError(f"{name} must be <= the sequence length L={seq_len}, got {hi}")


def check_tensor(
    name: str,
    t: torch.Tensor,
    ndim: int,
    dtypes: Sequence[torch.dtype] | None = None,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def check_same(name_a: str, a: int, name_b: str, b: int) -> None:
    if a != b:
        raise ValueError(f"{name_a} ({a}) must equal {name_b} ({b})")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def resolve_device(device: str) -> torch.device:
    """The device named by ``device``: "auto" is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter. The one reading of that variable: the op
    dispatch (:mod:`dsa.ops.dispatch`) and the kernels (:mod:`dsa.ops.kernels`) both ask here, and it never
    imports triton (importing triton fixes the mode for the process)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_out_file(name: str, path: str | None) -> None:
    """An output file path must not name an existing folder (it would fail only when the result is written)."""
    if path and Path(path).is_dir():
        raise ValueError(f"{name} must be a file path, got the existing folder {path!r}")


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number (not a bool) within [low, high] (``*_open``: the end excluded). ValueError or
    TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    bounds = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def check_int(name: str, value: Any, low: int = 1) -> None:
    """An int (not a bool) >= ``low``. ValueError or TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
