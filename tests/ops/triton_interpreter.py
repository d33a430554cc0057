"""One module-scoped switch to Triton's CPU interpreter, for the test modules that run kernels.

Without CUDA, ``TRITON_INTERPRET=1`` is set when the module calling :func:`interpreter_for_module` is imported
(before triton is: it reads the variable at import too) and again at the module's setup (another module's
teardown may have removed it since), and put back after the module: it would otherwise reach the notebook
kernels that later tests start, and run their CPU code in the interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch


def interpreter_for_module():
    """Sets the variable now and returns the autouse module fixture that keeps it for the module."""
    old = os.environ.get("TRITON_INTERPRET")
    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ["TRITON_INTERPRET"] = "1"

    @pytest.fixture(autouse=True, scope="module")
    def _interpreter_for_this_module_only():
        if cpu:
            os.environ["TRITON_INTERPRET"] = "1"
        yield
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old

    return _interpreter_for_this_module_only
