"""DistributedDataParallel under torchrun: two CPU processes (gloo) train one model in sync; two "nodes" of
two ranks each over loopback do too; the corpus cache is prepared by rank 0 before the others read it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_torchrun_two_ranks_stay_in_sync(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dsa.train.trainer", "--attention", "dsa", "--device", "cpu", "--steps", "12", "--seq-len", "48",
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_torchrun_two_nodes_of_two_ranks_over_loopback(tmp_path):
    """`torchrun --nnodes 2`: two launchers (the two "nodes") of two CPU ranks each meet at one address;
    the four ranks train one model in sync, reading a corpus cache no rank had before (rank 0 builds it
    first, the others read it)."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97} and {i % 13} more" for i in range(4000)))
    out = tmp_path / "ddp.json"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DSA_CACHE_DIR": str(tmp_path / "cache")}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
               "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "dsa.train.trainer", "--attention", "dsa", "--device", "cpu", "--steps", "8", "--seq-len", "32",
               "--top-k", "8", "--batch-size", "2", "--eval-every", "4", "--eval-batches", "1", "--d-model", "32",
               "--n-layers", "1", "--data", f"file:{text}", "--tokenizer", "byte", "--no-progress",
               "--out", str(out)]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    rec = json.loads(out.read_text())
    d = rec["distributed"]
    assert d["world_size"] == 4 and d["backend"] == "gloo" and d["global_batch_size"] == 8
    sums = d["param_checksums_by_rank"]
    assert len(sums) == 4 and all(s == pytest.approx(sums[0], rel=1e-12, abs=0) for s in sums)
    assert rec["data"]["from_cache"] is False, "global rank 0 builds the corpus cache (before the others read it)"


def _waves(rank: int, local_rank: int, store_path: str, log: str) -> None:
    """One of four ranks (two per "node") running rank_zero_first on a function that logs its start and end."""
    import time  # noqa: PLC0415

    from dsa.train.distributed import DistInfo, rank_zero_first  # noqa: PLC0415

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 4), rank=rank, world_size=4)

    def work() -> int:
        with open(log, "a") as f:
            f.write(f"start {rank}\n")
        time.sleep(0.3)  # the waves must not overlap even when a rank is slow
        with open(log, "a") as f:
            f.write(f"end {rank}\n")
        return rank

    assert rank_zero_first(DistInfo(rank, 4, local_rank, "gloo"), work) == rank
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_rank_zero_first_runs_rank_zero_then_each_nodes_first_rank_then_the_rest(tmp_path):
    import multiprocessing as mp

    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_waves, args=(r, r % 2, str(tmp_path / "store"), str(log))) for r in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    events = log.read_text().split("\n")[:-1]
    at = {e: i for i, e in enumerate(events)}
    assert at["end 0"] < min(at[f"start {r}"] for r in (1, 2, 3)), "rank 0 first"
    assert at["end 2"] < min(at[f"start {r}"] for r in (1, 3)), "then the second node's local rank 0"


_KILL_AT_5 = """
import sys
import dsa.train.trainer as T

real = T._checkpoint


def dying(run, phase):
    real(run, phase)  # rank 0 writes, every rank waits for the file
    if run.it == 5:
        raise SystemExit(17)


T._checkpoint = dying
from dsa.train.cli import train_main  # noqa: E402

sys.exit(train_main(sys.argv[1:]))
"""


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_torchrun_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    """Two gloo ranks; the run dies right after its checkpoint at iteration 5 (sparse phase: iterations 1-2
    dense, 3 indexer warm-up, 4-9 sparse); --resume (rank 0 wrote the file, every rank loads it) ends
    where an uninterrupted two-rank run ends."""
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97} and {i % 13} more" for i in range(3000)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DSA_DATA_DIR": str(tmp_path / "cache")}
    killer = tmp_path / "kill_at_5.py"
    killer.write_text(_KILL_AT_5)
    args = ["--attention", "dsa", "--device", "cpu", "--steps", "8", "--seq-len", "32", "--top-k", "8",
            "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1", "--d-model", "32", "--n-layers", "1",
            "--data", f"file:{text}", "--tokenizer", "byte", "--no-progress"]

    def launch(target: list[str], out: str, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target,
               *args, "--out", str(tmp_path / out), *extra]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)

    r = launch(["-m", "dsa.train.trainer"], "whole.json", "--checkpoint-path", str(tmp_path / "whole.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    ck = ["--checkpoint-path", str(tmp_path / "cut.pt"), "--checkpoint-every", "5", "--resume"]
    r = launch([str(killer)], "cut.json", *ck)
    assert r.returncode != 0 and not (tmp_path / "cut.json").exists()
    assert (tmp_path / "cut.pt").exists(), r.stderr[-3000:]  # it died after its checkpoint, not before
    r = launch(["-m", "dsa.train.trainer"], "cut.json", *ck)
    assert r.returncode == 0, r.stderr[-3000:]
    whole, cut = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "cut"))
    assert cut["resumed_from"]["it"] == 5 and cut["resumed_from"]["phase"] == "sparse"
    timing = ("time_per_step_s", "tokens_per_s", "peak_mem_mb", "peak_rss_mb")
    strip = [[{k: v for k, v in h.items() if k not in timing} for h in rec["history"]] for rec in (whole, cut)]
    assert strip[0] == strip[1]
    sums = cut["distributed"]["param_checksums_by_rank"]
    assert sums == whole["distributed"]["param_checksums_by_rank"] and sums[0] == sums[1]
