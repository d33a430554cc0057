"""The indexer kernels fit a Hopper GPU (H100, H200) at DeepSeek-V3.2's indexer size, 64 heads x 128 dims, and
beyond: compiled ahead of time for sm_90a by scripts/check_kernel_resources.py (no GPU needed, only Triton's
CUDA backend and its ptxas), no launch asks for more shared memory than a block may have. Before the head
blocks the score pass asked for ~2.2 MB at 64 x 128 and failed on an H200 with OutOfResources.

Skips where Triton cannot compile for CUDA. Neither triton nor dsa.kernels is imported at module level:
tests/test_kernels.py must set TRITON_INTERPRET before triton is first imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_kernel_resources.py"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# (H_I, d_I, dtype): the target size in bf16 (the training dtype) and fp32 (the tests' dtype), more heads (256:
# the scores-at kernels in blocks too), a head count padded to 64. The sizes that fit before head blocks compile
# to the same code as then (compared once, by hand: the score pass at 4 x 64 up to 4 x 128, identical PTX).
SIZES = [(64, 128, "bf16"), (64, 128, "fp32"), (128, 128, "bf16"), (256, 128, "bf16"), (48, 128, "bf16")]


def _script():
    spec = importlib.util.spec_from_file_location("check_kernel_resources", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def check():
    """The resource-check script as a module; skips when a tiny kernel cannot be compiled for sm_90a here."""
    mod = _script()
    try:
        mod.compile_case(mod.at_cases(1, 16, "bf16")[0])
    except Exception as exc:  # no CUDA backend, no ptxas, ...
        pytest.skip(f"triton cannot compile for sm_{mod.ARCH} here: {type(exc).__name__}: {exc}")
    return mod


@pytest.mark.parametrize("h,di,dtype", SIZES)
def test_indexer_kernels_fit_hopper_shared_memory(check, h, di, dtype):
    """Every launch of the indexer kernels (score pass modes 0-3 at their default tiles, scores-at forward and
    backward) at h x di in dtype: shared memory within the limit (registers and spills: run the script)."""
    from dsa.kernels.indexer_chunked import SCORE_TILE  # noqa: PLC0415

    over = []
    for case in check.pass_cases(h, di, dtype, (SCORE_TILE,)) + check.at_cases(h, di, dtype):
        shared = int(check.compile_case(case).metadata.shared)
        if shared > check.SHARED_LIMIT:
            over.append(f"{case.kernel} {case.tile}: {shared} B")
    assert not over, f"over the {check.SHARED_LIMIT} B of shared memory of sm_{check.ARCH}: {over}"
