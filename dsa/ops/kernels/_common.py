"""Shared helpers: Triton availability, the interpreter switch (:func:`dsa.checks.interpret_mode`, re-exported for
the kernels), and lazy ``triton.jit``.

The kernels are plain Python functions decorated on first use (not at import): Triton decides between a
compiled ``JITFunction`` and the CPU interpreter when ``triton.jit`` runs, from ``TRITON_INTERPRET``. Lazy
decoration lets a test module set ``TRITON_INTERPRET=1`` even when another module imported ``dsa.ops.kernels``
(or triton) first.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dsa.checks import interpret_mode

try:  # pragma: no cover - depends on the environment
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


_JIT_CACHE: dict[tuple[int, bool], Any] = {}


def jit(fn: Callable) -> Callable:
    """Returns ``triton.jit(fn)`` built for the current interpret mode (cached per mode)."""
    key = (id(fn), interpret_mode())
    k = _JIT_CACHE.get(key)
    if k is None:
        import triton

        k = triton.jit(fn)
        _JIT_CACHE[key] = k
    return k


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
