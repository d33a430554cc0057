"""The indexer kernels fit a Hopper GPU (H100, H200) at DeepSeek-V3.2's indexer size, 64 heads x 128 dims, and
beyond: compiled ahead of time for sm_90a by scripts/check_kernel_resources.py (no GPU needed, only Triton's
CUDA backend and its ptxas), no launch asks for more shared memory than a block may have. Before the head
blocks the score pass asked for ~2.2 MB at 64 x 128 and failed on an H200 with OutOfResources.

Skips where Triton cannot compile for CUDA. The script runs in its own process: once triton runs the interpreter
(tests/ops/test_kernels.py sets TRITON_INTERPRET) it cannot compile for a GPU in that process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_kernel_resources.py"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# the target size in bf16 (the training dtype) and fp32 (the tests' dtype), more heads (256: the scores-at kernels
# in blocks too), a head count padded to 64; the sizes that fit before compile to the same code (checked once, by
# hand: identical PTX from 1 x 16 to 8 x 64 and 4 x 128)


def _run(sizes: str, dtypes: str, *extra: str) -> subprocess.CompletedProcess:
    """The script in a fresh interpreter without TRITON_INTERPRET: a process whose triton already runs the
    interpreter (tests/ops/test_kernels.py) cannot compile for a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), "--sizes", sizes, "--dtypes", dtypes, *extra], env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def can_compile() -> None:
    """Skips when a tiny kernel cannot be compiled for sm_90a here (no CUDA backend, no ptxas, ...)."""
    probe = _run("1x16", "bf16")
    if probe.returncode not in (0, 1):
        pytest.skip(f"triton cannot compile for sm_90 here: {probe.stderr.strip().splitlines()[-1:]}")


@pytest.mark.parametrize("sizes,dtypes", [("64x128,128x128,256x128,48x128", "bf16"), ("64x128", "fp32"),
                                          ("64x128", "fp8")])
def test_indexer_kernels_fit_hopper_shared_memory(can_compile, sizes, dtypes):
    """Every launch of the indexer kernels (score pass modes 0-3 at their default tiles, scores-at forward and
    backward) at these sizes: shared memory within the limit (the script's table also gives registers and
    spills)."""
    res = _run(sizes, dtypes)
    assert res.returncode == 0 and "all fit" in res.stdout, res.stdout + res.stderr[-2000:]
    per_size = 5 if dtypes == "fp8" else 7  # fp8: the score pass only (the scores-at kernels stay bf16)
    assert res.stdout.count(" yes") >= per_size * len(sizes.split(","))  # every launch was compiled and measured
    if dtypes != "fp8":  # the FP8 indexer's quantization kernel, rotated and not, once per d_I: and no spills
        quant = [line.split() for line in res.stdout.splitlines() if line.startswith("quantize_rows")]
        assert len(quant) == 2 * len({s.split("x")[1] for s in sizes.split(",")})
        assert all(q[-2] == "0" for q in quant), res.stdout


def test_sparse_attention_kernels_fit_hopper_at_the_mla_mqa_shape(can_compile):
    """The sparse attention at DeepSeek-V3.2's MLA in MQA mode (128 query heads on one latent K/V, d_qk 576 =
    512 + 64, d_v 512, bf16) and at MQA 64 x 128: forward, backward (atomic dK/dV and dQ only), the inverted
    and the headsum dK/dV kernels and both probabilities kernels, at the launch code's tiles. Before the head
    blocks and the 512 + 64 split, 128 heads on one K/V head and d_qk padded to 1024 could not launch."""
    res = _run("1x16", "bf16", "--only", "attention", "--attention", "128x1x576x512,64x1x128x128")
    assert res.returncode == 0 and "all fit" in res.stdout, res.stdout + res.stderr[-2000:]
    assert res.stdout.count("attn_") == 14 and res.stdout.count("attn_dkv_hsum") == 2
    assert res.stdout.count("attn_probs_q") == 2
