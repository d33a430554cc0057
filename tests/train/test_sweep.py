"""Resumable sweeps: finished configurations are never re-run, appends are whole lines, a torn last line
from a killed writer is cut off, several worker processes share one results file, each configuration is
claimed once (also across a killed sweep and its re-run), failures are recorded and retried, and shards
(also through submitit) read as one results file."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import pytest

import dsa.train.sweep as sweep
from dsa.records import load_jsonl_records, read_jsonl, result_files, shard_path
from dsa.study.runs import runs_table
from dsa.train import claims
from dsa.train.cli import sweep_main
from dsa.train.experiments import EXPERIMENTS, get_experiment
from dsa.train.sweep import append_result, config_key, load_results, run_sweep, run_sweeps, with_steps
from dsa.train.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _tiny(seed: int, attention: str = "dense") -> TrainConfig:
    return TrainConfig(attention=attention, seq_len=16, top_k=4, batch_size=2, steps=3, eval_every=3,
                       eval_batches=1, d_model=16, n_layers=1, n_heads=2, indexer_heads=1, indexer_dim=8,
                       indexer_rope_dim=4, seed=seed, out="", progress=False)


def test_resume_skips_finished_configs_and_says_so(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.jsonl"
    configs = [_tiny(0), _tiny(1), _tiny(2, "dsa")]
    real_train = sweep.train
    calls = []
    crash = {"armed": True}

    def crashing(cfg):
        calls.append(cfg.seed)
        if cfg.seed == 1 and crash["armed"]:
            crash["armed"] = False
            raise KeyboardInterrupt("machine lost")  # not an error of the configuration: the sweep stops
        return real_train(cfg)

    monkeypatch.setattr(sweep, "train", crashing)
    with pytest.raises(KeyboardInterrupt, match="machine lost"):
        run_sweep(configs, results, progress=False)
    assert [r["config"]["seed"] for r in load_results(results)] == [0]
    assert not list(sweep.claims_dir(results).glob("*.claim")), "an interrupted run must release its claim"
    calls.clear()
    recs = run_sweep(configs, results, progress=False)
    assert calls == [1, 2], "the finished configuration must not run again"
    assert "re-using 1 finished" in capsys.readouterr().out
    assert [r["config"]["seed"] for r in recs] == [0, 1, 2]
    calls.clear()
    run_sweep(configs, results, progress=False)
    assert calls == []
    assert len(load_results(results)) == 3
    assert not sweep.claims_dir(results).exists(), "a finished sweep leaves no claims folder"


def test_a_failing_configuration_is_recorded_the_sweep_goes_on_and_retry_runs_it(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.jsonl"
    configs = [_tiny(0), _tiny(1), _tiny(2)]
    real_train = sweep.train
    calls = []
    broken = {"seed": 1}

    def failing(cfg):
        calls.append(cfg.seed)
        if cfg.seed == broken["seed"]:
            raise FloatingPointError("loss diverged")
        return real_train(cfg)

    monkeypatch.setattr(sweep, "train", failing)
    with pytest.raises(sweep.SweepFailed, match="loss diverged") as e:
        run_sweep(configs, results, progress=False)
    assert calls == [0, 1, 2], "the sweep must carry on after a failing configuration"
    assert "dense-L16-k4-s1" in capsys.readouterr().err, "the failure is said when it happens"
    assert [r["config"]["seed"] for r in e.value.records[0]] == [0, 2]
    (failure,) = sweep.load_failures(results).values()
    assert failure["key"] == config_key(_tiny(1)) and failure["config"]["seed"] == 1
    assert "FloatingPointError: loss diverged" in failure["error"] and "in failing" in failure["traceback"]
    calls.clear()
    with pytest.raises(sweep.SweepFailed):
        run_sweep(configs, results, progress=False)
    assert calls == [], "a failed configuration is not run again without retry_failed"
    assert "skipping 1 failed" in capsys.readouterr().out
    broken["seed"] = None
    recs = run_sweep(configs, results, progress=False, retry_failed=True)
    assert calls == [1] and [r["config"]["seed"] for r in recs] == [0, 1, 2]
    assert run_sweep(configs, results, progress=False) == recs, "a retried failure counts as finished"


def _text_corpus(tmp_path, monkeypatch):
    """A small local text corpus with its own cache folder (nothing written under the repository)."""
    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97} and {i % 13} more" for i in range(4000)))
    return text


def test_a_failing_configuration_in_a_worker_process_is_recorded_and_the_worker_goes_on(tmp_path, monkeypatch):
    text = _text_corpus(tmp_path, monkeypatch)
    missing = tmp_path / "later.txt"
    results = tmp_path / "r.jsonl"
    ok = [replace(_tiny(s), data=f"file:{text}", tokenizer="byte") for s in (0, 1)]
    bad = replace(_tiny(2), data=f"file:{missing}", tokenizer="byte")
    with pytest.raises(sweep.SweepFailed, match="FileNotFoundError"):
        run_sweep([bad, *ok], results, devices=["cpu", "cpu"], progress=False)
    assert sorted(r["config"]["seed"] for r in load_results(results)) == [0, 1]
    assert list(sweep.load_failures(results)) == [config_key(bad)]
    missing.write_text(text.read_text())
    recs = run_sweep([bad, *ok], results, progress=False, retry_failed=True)
    assert [r["config"]["seed"] for r in recs] == [2, 0, 1]


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    append_result(path, {"key": "a", "x": 1})
    with open(path, "a") as f:
        f.write('{"key": "b", "x"')  # killed mid-write
    assert [r["key"] for r in load_results(path)] == ["a"]
    append_result(path, {"key": "c", "x": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "c"]


def test_config_key_ignores_routing_fields_only():
    a = _tiny(0)
    assert config_key(a) == config_key(TrainConfig(**{**a.__dict__, "out": "x.json", "device": "cpu",
                                                       "progress": True, "name": "n"}))
    assert config_key(a) != config_key(_tiny(1))


def test_two_worker_processes_share_one_file(tmp_path):
    results = tmp_path / "r.jsonl"
    configs = [_tiny(s) for s in range(3)]
    recs = run_sweep(configs, results, devices=["cpu", "cpu"], progress=False)
    assert sorted(r["config"]["seed"] for r in recs) == [0, 1, 2]
    assert len(load_results(results)) == 3
    assert {r["timing"]["workers_on_device"] for r in recs} == {2}, "the records must say their device was shared"


def test_several_sweeps_share_one_pool_and_keep_their_own_files(tmp_path):
    """Two experiments through one pool of two workers: each record lands in its own sweep's file, a
    finished configuration of either is re-used, and the records come back per sweep in config order."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ca, cb = [_tiny(0), _tiny(1, "dsa")], [_tiny(2), _tiny(3)]
    run_sweep(cb[:1], b, progress=False)
    recs_a, recs_b = run_sweeps([(ca, a), (cb, b)], devices=["cpu", "cpu"], progress=False)
    assert [r["config"]["seed"] for r in recs_a] == [0, 1]
    assert [r["config"]["seed"] for r in recs_b] == [2, 3]
    assert sorted(r["config"]["seed"] for r in load_results(a)) == [0, 1]
    assert [r["config"]["seed"] for r in load_results(b)] == [2, 3], "the finished seed 2 ran again"


def test_the_same_configuration_named_twice_for_one_file_runs_once(tmp_path, monkeypatch):
    a = tmp_path / "a.jsonl"
    calls = []
    real_train = sweep.train
    monkeypatch.setattr(sweep, "train", lambda cfg: calls.append(cfg.seed) or real_train(cfg))
    out = run_sweeps([([_tiny(0)], a), ([_tiny(0), _tiny(1)], a)], progress=False)
    assert calls == [0, 1] and len(out) == 2
    assert [r["config"]["seed"] for r in out[0]] == [0] and [r["config"]["seed"] for r in out[1]] == [0, 1]


def test_cli_takes_several_experiments_with_an_out_dir_only(tmp_path):
    with pytest.raises(SystemExit):
        sweep_main(["exp3_adaptive", "ablation_kl", "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit):
        sweep_main(["exp3_adaptive", "--out", "x.jsonl", "--out-dir", str(tmp_path)])
    assert sweep_main(["ablation_kl", "exp3_adaptive", "--size", "small", "--limit", "1", "--steps", "2",
                       "--out-dir", str(tmp_path)]) == 0
    assert len(load_results(tmp_path / "ablation_kl.jsonl")) == 1
    assert len(load_results(tmp_path / "exp3_adaptive.jsonl")) == 1


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiments_build_valid_configs(name):
    for size in ("small", "full"):
        cfgs = get_experiment(name, size)
        assert cfgs and len({config_key(c) for c in cfgs}) == len(cfgs), "duplicate configurations"
        for c in cfgs:
            if c.attention == "dsa" and c.recipe == "deepseek" and c.indexer_kl:
                assert c.dense_steps > 0 or c.warmup_steps >= 0


def test_exp4_has_the_seeds_variants():
    cfgs = get_experiment("exp4_reproduce", "small")
    kinds = {(c.attention, c.recipe if c.attention == "dsa" else "-", c.leak_future) for c in cfgs}
    assert kinds == {("dense", "-", False), ("dsa", "scratch", True), ("dsa", "scratch", False),
                     ("dsa", "deepseek", False)}
    assert all(c.top_k == c.seq_len // 2 for c in cfgs)
    ds = [c for c in cfgs if c.recipe == "deepseek" and c.attention == "dsa"]
    assert all(c.dense_steps > 0 and c.warmup_steps > 0 and c.indexer_kl for c in ds)


def test_with_steps_rederives_default_phases_and_keeps_explicit_ones():
    c = TrainConfig(attention="dsa", steps=40)
    assert with_steps(c, 200).phases() == [("dense", 50), ("warmup", 20), ("sparse", 150)]
    explicit = TrainConfig(attention="dsa", steps=40, warmup_steps=7)
    assert dict(with_steps(explicit, 200).phases())["warmup"] == 7


def test_unknown_experiment_and_size():
    with pytest.raises(ValueError, match="experiment"):
        get_experiment("exp9")
    with pytest.raises(ValueError, match="size"):
        get_experiment("exp4_reproduce", "huge")


def test_time_budget_stops_cleanly_and_the_next_call_resumes(tmp_path):
    results = tmp_path / "r.jsonl"
    configs = [_tiny(s) for s in range(3)]
    run_sweep(configs[:1], results, progress=False)
    partial = run_sweep(configs, results, progress=False, time_budget_s=0.0)
    assert [r["config"]["seed"] for r in partial] == [0], "no new configuration may start past the budget"
    assert len(run_sweep(configs, results, progress=False)) == 3


# ----------------------------------------------------------------------------------- claims and keys
def test_one_claim_per_key_and_the_stale_claim_rules(tmp_path, monkeypatch):
    d = tmp_path / "claims"
    held = claims.claim(d, "k1")
    assert held is not None and claims.claim(d, "k1") is None, "a live claim of this process is not taken twice"
    assert claims.claim(d, "k2") is not None, "claims are per key"
    held.release()
    assert claims.claim(d, "k1") is not None, "a released key can be claimed again"

    def plant(key: str, host: str, pid: int, job=None, age_s: float = 0.0) -> None:
        path = d / f"{key}.0.claim"
        path.write_text(json.dumps({"host": host, "pid": pid, "job": job, "time": 0.0, "token": "t"}))
        os.utime(path, (time.time() - age_s, time.time() - age_s))

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    plant("dead", socket.gethostname(), int(dead.stdout))
    assert claims.claim(d, "dead") is not None, "a claim of a dead process on this host is taken over at once"
    plant("far", "another-machine", 1)
    assert claims.claim(d, "far") is None, "a fresh claim of another machine is respected"
    assert set(claims.live_claims(d)) >= {"far"}
    plant("old", "another-machine", 1, age_s=120)
    assert claims.claim(d, "old", stale_after_s=60) is not None, "a claim without heartbeat goes stale"
    assert sorted(p.name for p in d.glob("old.*")) == ["old.1.claim"], "a take-over is a new generation"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    plant("requeued", "another-machine", 1, job="77")
    assert claims.claim(d, "requeued") is not None, "a requeued job takes over its earlier incarnation's claim"
    with pytest.raises(ValueError, match="key"):
        claims.claim(d, "a/b")


def test_the_heartbeat_keeps_a_held_claim_fresh(tmp_path):
    d = tmp_path / "claims"
    held = claims.claim(d, "k")
    os.utime(held.path, (time.time() - 3600, time.time() - 3600))
    claims._HEARTBEAT.beat()
    assert time.time() - held.path.stat().st_mtime < 60
    elsewhere = json.loads(held.path.read_text()) | {"host": "another-machine"}
    held.path.write_text(json.dumps(elsewhere))  # as seen from another machine: judged by heartbeat
    assert claims.claim(d, "k", stale_after_s=60) is None
    held.release()
    assert not held.path.exists()


def test_concurrent_claims_of_one_key_give_one_owner(tmp_path):
    d = tmp_path / "claims"
    barrier = threading.Barrier(8)
    won = []

    def race() -> None:
        barrier.wait()
        won.append(claims.claim(d, "k") is not None)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1


@dataclass
class _NewerConfig(TrainConfig):
    """TrainConfig with one field more, as after a future change."""

    label_smoothing: float = 0.0


def test_a_new_field_at_its_default_keeps_the_key_and_changes_it_off_default():
    a = _tiny(0)
    newer = _NewerConfig(**asdict(a))
    assert config_key(newer) == config_key(a)
    assert config_key(replace(newer, label_smoothing=0.1)) != config_key(a)


def test_the_recorded_gpu_runs_keep_their_keys():
    """The notebooks match recorded runs to configurations by key: the key of each record's configuration
    must still be the key it was recorded with (a field TrainConfig no longer has is left out: it hashes as
    its old default), and each experiment's file holds keys of that experiment's configurations."""
    names = {f.name for f in fields(TrainConfig)}
    paths = sorted((ROOT / "data" / "gpu").glob("*.jsonl"))
    assert paths
    for p in paths:
        recs = load_results(p)
        for r in recs:
            cfg = TrainConfig(**{k: v for k, v in r["config"].items() if k in names})
            assert config_key(cfg) == r["key"], f"{p.name}: {r['name']}"
        if p.stem in EXPERIMENTS:
            expected = {config_key(c) for c in get_experiment(p.stem, "full")}
            assert {r["key"] for r in recs} <= expected, f"{p.name}: records no configuration of {p.stem} matches"


# ---------------------------------------------------------------------------------------- readers
def _record(key: str, seed: int) -> dict:
    return {"key": key, "name": f"run-{seed}", "config": {"seed": seed},
            "provenance": {"git_commit": "abc", "device": "cpu", "date": "2026-12-01"}}


def test_readers_drop_duplicate_keys_with_a_warning(tmp_path, capsys):
    p = tmp_path / "gpu" / "x.jsonl"
    for k, s in (("a", 0), ("b", 1), ("a", 0), ("b", 1)):
        append_result(p, _record(k, s))
    assert [r["key"] for r in read_jsonl(p)] == ["a", "b"]
    assert "dropped 2 duplicate" in capsys.readouterr().out
    assert len(runs_table(read_jsonl(p), "x")) == 2, "statistics must count each configuration once"


def test_shard_files_read_as_one_results_file(tmp_path, capsys):
    base = tmp_path / "gpu" / "x.jsonl"
    append_result(shard_path(base, 0, 2), _record("a", 0))
    append_result(shard_path(base, 1, 2), _record("b", 1))
    append_result(shard_path(base, 1, 2), _record("a", 0))  # the same configuration again: read once
    append_result(tmp_path / "gpu" / "y.jsonl", _record("c", 2))
    assert [r["key"] for r in load_jsonl_records("gpu/x.jsonl", root=tmp_path)] == ["a", "b"]
    assert "duplicate" in capsys.readouterr().out
    assert sorted(r["key"] for r in load_jsonl_records("gpu/*.jsonl", root=tmp_path)) == ["a", "b", "c"]
    assert [r["key"] for r in sweep.load_result_set(base)] == ["a", "b"]
    append_result(base, _record("d", 3))
    assert [p.name for p in result_files(base)] == ["x.jsonl", "x.shard-0-of-2.jsonl", "x.shard-1-of-2.jsonl"]
    with pytest.raises(ValueError, match="index"):
        shard_path(base, 2, 2)
    with pytest.raises(ValueError, match="--shard"):
        sweep.parse_shard("1-2")


# ------------------------------------------------------------------------------- processes and shards
def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dsa.train.sweep", "ablation_kl", "--size", "small", "--steps", "3", "--limit", "4",
            "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_9_during_a_pool_sweep_then_a_rerun_gives_each_key_once(tmp_path):
    """The issue's reproduction: a two-worker sweep killed with SIGKILL while its workers train, and the
    same command again. The workers must die with it and the re-run must record each configuration once."""
    out = tmp_path / "pool.jsonl"
    expected = {config_key(with_steps(c, 3)) for c in get_experiment("ablation_kl", "small")[:4]}
    proc = subprocess.Popen(_cli(out, "--devices", "cpu,cpu"), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    owners: set[int] = set()
    deadline = time.time() + 240
    while not owners and proc.poll() is None and time.time() < deadline:
        owners = {o.pid for o in claims.live_claims(sweep.claims_dir(out)).values() if o is not None}
        time.sleep(0.05)
    assert owners, "no worker claimed a configuration"
    proc.kill()
    proc.wait()
    r = subprocess.run(_cli(out, "--devices", "cpu,cpu"), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert sorted(keys) == sorted(expected), "each configuration exactly once"
    assert all(_gone(pid) for pid in owners), "the killed sweep's workers must not train on"


def test_two_shards_through_submitits_local_executor_equal_one_process(tmp_path):
    """A job array of two shards through submitit's local executor records what one process records, in
    two shard files that read as one results file."""
    configs = [_tiny(s) for s in range(3)] + [_tiny(3, "dsa")]
    one = run_sweep(configs, tmp_path / "one.jsonl", progress=False)
    base = tmp_path / "sharded" / "x.jsonl"
    job = sweep.ShardJob([([asdict(c) for c in configs], str(base))], count=2)
    jobs = sweep.submit_shards(job, {"cluster": "local", "timeout_min": 10}, tmp_path / "logs" / "%j")
    assert [j.result() for j in jobs] == [{str(base): 2}, {str(base): 2}]
    assert sorted(p.name for p in base.parent.glob("*.jsonl")) == ["x.shard-0-of-2.jsonl", "x.shard-1-of-2.jsonl"]
    sharded = {r["key"]: r for r in sweep.load_result_set(base)}
    assert set(sharded) == {r["key"] for r in one}
    for r in one:
        s = sharded[r["key"]]
        assert s["config"] == r["config"]
        assert s["final"]["val_loss"] == pytest.approx(r["final"]["val_loss"], rel=1e-5)
    again = run_sweep(configs, base, progress=False)
    assert [r["key"] for r in again] == [r["key"] for r in one], "a plain re-run re-uses every shard's records"
    assert not base.exists(), "nothing ran again"


def test_cli_submits_the_shards_as_a_job_array(tmp_path, capsys):
    """`--shards 2 --slurm cluster=debug ... --wait` (submitit's in-process executor: the CLI path without
    a cluster) runs both shards into their own files."""
    out = tmp_path / "x.jsonl"
    assert sweep_main(["ablation_kl", "--size", "small", "--steps", "1", "--limit", "2", "--out", str(out),
                       "--shards", "2", "--slurm", "cluster=debug", "timeout_min=10", "--wait",
                       "--slurm-folder", str(tmp_path / "logs")]) == 0
    assert capsys.readouterr().out.count(f"{{'{out}': 1}}") == 2, "each shard reports its record"
    assert [p.name for p in result_files(out)] == ["x.shard-0-of-2.jsonl", "x.shard-1-of-2.jsonl"]
    assert len(sweep.load_result_set(out)) == 2


def test_cli_sharding_options_are_checked(tmp_path):
    for bad in (["--shard", "2/2"], ["--shard", "0/2", "--slurm", "cluster=local"], ["--shards", "2"],
                ["--slurm", "=x"]):
        with pytest.raises(SystemExit):
            sweep_main(["ablation_kl", "--out", str(tmp_path / "x.jsonl"), *bad])
    assert sweep.parse_executor_params(["slurm_partition=gpu", "timeout_min=60"]) == {
        "slurm_partition": "gpu", "timeout_min": 60}


def test_a_configuration_another_process_runs_is_waited_for_not_run_again(tmp_path, monkeypatch, capsys):
    """Two machines on one results set: a configuration claimed by a live process elsewhere is not run here;
    the sweep waits for its record."""
    results = tmp_path / "r.jsonl"
    c = _tiny(0)
    claim = sweep.claims_dir(results) / f"{config_key(c)}.0.claim"
    claim.parent.mkdir()
    claim.write_text(json.dumps({"host": "another-machine", "pid": 1, "job": None, "time": 0.0, "token": "t"}))
    calls = []
    monkeypatch.setattr(sweep, "train", lambda cfg: calls.append(cfg.seed))
    rec = {"key": config_key(c), "name": "elsewhere", "config": asdict(c)}

    def other_machine_finishes() -> None:
        time.sleep(0.3)
        append_result(results, rec)
        claim.unlink()

    t = threading.Thread(target=other_machine_finishes)
    t.start()
    recs = run_sweep([c], results, progress=False, poll_s=0.05)
    t.join()
    assert calls == [] and recs == [rec]
    assert "waiting for 1 configurations that other processes run now (another-machine:1)" in capsys.readouterr().out


def test_a_fresh_notebook_sweep_empties_its_results_shards_and_failures(tmp_path):
    from dsa.study.runs import _empty_results

    out = tmp_path / "x.jsonl"
    for p in (out, shard_path(out, 0, 2), sweep.failures_path(out), sweep.failures_path(shard_path(out, 1, 2))):
        append_result(p, _record("a", 0))
    keep = tmp_path / "y.jsonl"
    append_result(keep, _record("b", 1))
    _empty_results(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.jsonl"]
