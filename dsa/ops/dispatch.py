"""Which implementation an op runs: the one place where ``impl="auto" | "reference" | "triton"`` is decided.

``auto``: the Triton kernel when every tensor is on CUDA and Triton is installed, the reference otherwise
(CPU, float64, or an op/shape the kernel does not cover). ``reference``: always the plain-PyTorch
specification. ``triton``: the kernel, or a ValueError naming why it cannot run here; on CPU it runs in
Triton's interpreter when ``TRITON_INTERPRET=1`` (small sizes, for tests).

Triton is imported only when a kernel is about to run: importing triton fixes ``TRITON_INTERPRET`` for the
process, and merely importing ``dsa`` must leave that to the user.
"""

from __future__ import annotations

import importlib.util

import torch

from dsa.checks import interpret_mode

IMPLS = ("auto", "reference", "triton")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


# looked up once, without importing triton: torch.compile cannot trace importlib's find_spec at call time
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def _why_not_triton(tensors: tuple[torch.Tensor, ...], unsupported: str | None) -> str | None:
    """None when the kernel can run on these tensors, else the reason in words."""
    if unsupported:
        return unsupported
    if not triton_installed():
        return "triton is not installed"
    if any(t.dtype == torch.float64 for t in tensors):
        return "the kernels have no float64 path"
    if not all(t.is_cuda for t in tensors) and not interpret_mode():
        return "the tensors are not on a CUDA device (set TRITON_INTERPRET=1 to run the kernel on CPU)"
    return None


def resolve_impl(impl: str, *tensors: torch.Tensor, op: str, unsupported: str | None = None) -> str:
    """'reference' or 'triton' for ``impl`` on ``tensors``.

    ``unsupported``: a reason the kernel does not cover this call (e.g. leak_future), or None.
    'auto' falls back to the reference silently (CPU is the normal place for it); 'triton' raises instead.
    """
    check_impl(impl)
    if impl == "reference":
        return "reference"
    why = _why_not_triton(tensors, unsupported)
    if impl == "auto":
        return "reference" if why or not all(t.is_cuda for t in tensors) else "triton"
    if why:
        raise ValueError(f"{op}: impl='triton' cannot run here: {why}")
    return "triton"


def impl_on_device(impl: str, device: torch.device | str) -> str:
    """What ``impl`` resolves to for CUDA-or-CPU tensors on ``device`` (for records; the ops decide per call)."""
    check_impl(impl)
    if impl != "auto":
        return impl
    return "triton" if torch.device(device).type == "cuda" and triton_installed() else "reference"
