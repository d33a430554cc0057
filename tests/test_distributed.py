"""DistributedDataParallel under torchrun: two CPU processes (gloo) train one model in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_torchrun_two_ranks_stay_in_sync(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dsa.train", "--attention", "dsa", "--device", "cpu", "--steps", "12", "--seq-len", "48",
           "--top-k", "12", "--batch-size", "4", "--eval-every", "6", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(out.read_text())
    d = rec["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["global_batch_size"] == 8
    sums = d["param_checksums_by_rank"]
    assert len(sums) == 2 and sums[0] == pytest.approx(sums[1], rel=1e-12, abs=0)
    first, last = rec["history"][0]["val_loss"], rec["final"]["val_loss"]
    assert last < first
