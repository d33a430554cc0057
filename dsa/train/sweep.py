"""Resumable sweeps: run a list of configurations, one JSON line per finished run, appended atomically.

- A finished configuration is never re-run: its key (:func:`config_key`, a hash of the config fields that
  change results) is looked up in the results first, and the sweep says how many it re-used.
- Each configuration is claimed before it trains (``dsa.train.claims``: one claim file per key next to the
  results, created atomically without ``flock``, so several processes or machines can share one results
  set); a claim whose owner died is taken over, one whose owner is alive is waited for, so no configuration
  runs twice and a re-run never duplicates one. Readers keep one record per key anyway (with a warning).
- Lines are appended whole, under an exclusive file lock, and fsync'ed, so a killed process loses at
  most the run in flight; a torn last line (killed mid-write) is cut off before the next append.
- A configuration that raises is recorded with its error and traceback in ``<results>.failed`` (JSON
  lines), said at once, and the sweep carries on; failed configurations are skipped on a re-run unless
  ``--retry-failed``; the sweep ends with a :class:`SweepFailed` error (exit status 1) listing them.
- With several devices, one worker process per device takes configurations from a shared queue; workers
  end with the sweep's process (even when it is killed with SIGKILL).
- ``--shard i/N`` runs every N-th configuration starting at the i-th into ``<results>.shard-i-of-N.jsonl``;
  ``--slurm key=value ...`` submits N such shards as a job array through submitit. Readers
  (``dsa.records``) read a results file and its shards as one.

CLI (``dsa.train.cli``):
     python -m dsa sweep EXPERIMENT --size small|full --out data/gpu/EXPERIMENT.jsonl [--devices all]
     python -m dsa sweep EXP1 EXP2 ... --size full --out-dir data/gpu --workers-per-device 8  (one pool)
     python -m dsa sweep EXP --size full --out data/gpu/EXP.jsonl --shard 0/4       (one of four shards)
     python -m dsa sweep EXP --size full --out data/gpu/EXP.jsonl --shards 4 \
         --slurm slurm_partition=gpu timeout_min=600 gpus_per_node=1               (a Slurm job array)
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dsa.records import drop_duplicate_keys, result_files, shard_path
from dsa.train.trainer import TrainConfig, train

from . import claims

# Fields that name or route a run without changing its result.
# impl: the same function, other rounding; checkpoint_every/checkpoint_path/resume: where and how often the
# state is saved, and a resumed run ends where the uninterrupted one would. (init_from is not here: a run
# started from other weights is another run, and enters the key when set.) design: why a run was made (its
# experiment, arm, k/L ratio), not what it trains (two experiments sharing a configuration share its record)
_NOT_IN_KEY = ("out", "name", "progress", "device", "impl", "checkpoint_every", "checkpoint_path", "resume",
               "design")

# The TrainConfig fields (and their defaults) when the key scheme was fixed. They always enter the key, so
# the keys of every recorded run stay valid; a field added to TrainConfig later enters it only when it is not
# at its default, so adding a field keeps every existing key (a field removed hashes as its old default).
_KEY_FIELDS_V1: dict[str, Any] = {
    "attention": "dense", "recipe": "deepseek", "seq_len": 128, "top_k": 64, "k_policy": "fixed", "k_mass": 0.9,
    "batch_size": 8, "steps": 100, "dense_steps": None, "warmup_steps": None, "indexer_kl": None,
    "leak_future": False, "data": "shakespeare", "tokenizer": "bpe", "vocab_size": 2048, "d_model": 128,
    "n_layers": 2, "n_heads": 4, "n_kv_heads": None, "indexer_heads": 4, "indexer_dim": 32,
    "indexer_rope_dim": 16, "lr": 0.003, "min_lr_ratio": 0.1, "lr_warmup_steps": 20, "weight_decay": 0.1,
    "grad_clip": 1.0, "indexer_lr": 0.001, "eval_every": 50, "eval_batches": 4, "seed": 0, "data_seed": 0,
    "precision": "auto", "sparse_impl": "auto", "chunk": 128,
}


def _at_default(cfg: Any, name: str, value: Any) -> bool:
    """Whether field ``name`` of the dataclass ``cfg`` holds its declared default, or the value that default
    resolves to in ``__post_init__`` given the other fields (e.g. a None meaning 'derive it')."""
    f = next((f for f in fields(cfg) if f.name == name), None)
    if f is None:
        return False
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else MISSING)
    if default is MISSING:
        return False
    if value == default:
        return True
    try:
        return getattr(replace(cfg, **{name: default}), name) == value
    except (TypeError, ValueError):
        return False


def config_key(cfg: TrainConfig) -> str:
    """16 hex digits naming what a run's result depends on: every field but the routing ones
    (out, name, progress, device), where a field newer than the key scheme counts only off its default."""
    if not is_dataclass(cfg):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    values = asdict(cfg)
    d = {name: values.get(name, default) for name, default in _KEY_FIELDS_V1.items()}
    for name, v in values.items():
        if name not in _KEY_FIELDS_V1 and name not in _NOT_IN_KEY and not _at_default(cfg, name, v):
            d[name] = v
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_results(path: str | Path) -> list[dict]:
    """All complete records of one results file (a torn last line is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                print(f"warning: {path}: ignoring a torn last line (a run killed while writing)", file=sys.stderr)
            else:
                raise
    return out


def load_result_set(path: str | Path, warn: bool = True) -> list[dict]:
    """The records of the results file ``path`` and of its shard files (``dsa.records.result_files``) as
    one list, one record per key (the first; ``warn``: say how many repeats were dropped)."""
    recs = [r for p in result_files(path) for r in load_results(p)]
    return drop_duplicate_keys(recs, str(path) if warn else None)


def failures_path(path: str | Path) -> Path:
    """Where failed configurations of the results file ``path`` are recorded: ``x.jsonl`` -> ``x.failed``."""
    return Path(path).with_suffix(".failed")


def load_failures(path: str | Path) -> dict[str, dict]:
    """{key: latest failure record} over the results set ``path`` (its file's and its shards' failures)."""
    out: dict[str, dict] = {}
    for p in result_files(failures_path(path)):
        for r in load_results(p):
            out[r["key"]] = r
    return out


def claims_dir(path: str | Path) -> Path:
    """The folder of the claims of the results set ``path``: ``x.jsonl`` -> ``x.claims/`` (shared by its
    shards)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.claims")


def append_result(path: str | Path, record: dict) -> None:
    """Append one record as one line, atomically with respect to other writers and to crashes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    with open(path, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # torn line from a killed writer: cut back to the last newline
                    f.seek(0)
                    data = f.read()
                    f.truncate(data.rfind(b"\n") + 1)
            f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SweepFailed(RuntimeError):
    """Configurations failed (recorded in the ``.failed`` files); ``records`` holds each sweep's finished
    records, as :func:`run_sweeps` would have returned them."""

    def __init__(self, message: str, records: list[list[dict]]):
        super().__init__(message)
        self.records = records


@dataclass(frozen=True)
class Task:
    """One configuration to run: its fields (picklable for worker processes), key, the file its record is
    appended to (a shard's own file under --shard) and the results set it belongs to."""

    config: dict
    key: str
    out: str
    results: str


def _run_one(cfg: TrainConfig, device: str | None, workers_on_device: int = 1) -> dict:
    cfg = replace(cfg, out="", progress=False, device=device or cfg.device)
    rec = train(cfg)
    rec.pop("model", None)
    rec["key"] = config_key(cfg)
    # Several training processes on one GPU time-share it: a run's time per step then includes waiting
    # for the others, so it is no speed measurement (the analysis says so when this is above 1).
    rec["timing"] = {"workers_on_device": workers_on_device}
    return rec


def _record_failure(task: Task, device: str | None, exc: BaseException) -> None:
    rec = {"key": task.key, "name": TrainConfig(**task.config).run_name(), "config": task.config,
           "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
           "device": device, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    append_result(failures_path(task.out), rec)
    # said now, not only at the end: a long sweep may run for hours after this
    print(f"sweep: configuration {rec['name']} ({task.key}) failed: {rec['error']}; recorded in "
          f"{failures_path(task.out)}; the sweep carries on", file=sys.stderr, flush=True)


def _attempt(task: Task, device: str | None, workers_on_device: int = 1,
             stale_after_s: float = claims.DEFAULT_STALE_AFTER_S) -> str:
    """Claim, train and record one configuration: 'ran', 'failed', 'done' (another process recorded it
    first) or 'busy' (another live process holds its claim)."""
    held = claims.claim(claims_dir(task.results), task.key, stale_after_s)
    if held is None:
        return "busy"
    try:
        # checked under the claim: a run recorded between planning and now must not run again
        if any(r.get("key") == task.key for r in load_result_set(task.results, warn=False)):
            return "done"
        try:
            rec = _run_one(TrainConfig(**task.config), device, workers_on_device)
        except Exception as e:  # noqa: BLE001 (recorded with its traceback; the sweep goes on)
            _record_failure(task, device, e)
            return "failed"
        append_result(task.out, rec)
        return "ran"
    finally:
        held.release()


def _end_with_parent(parent_pid: int) -> None:
    """Make this worker die with the sweep's process: PR_SET_PDEATHSIG on Linux, and a watchdog thread
    (any OS) that exits once the parent is gone, so a killed sweep leaves no worker training on."""
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415
        import signal  # noqa: PLC0415

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker(device: str, queue, deadline: float | None = None, workers_on_device: int = 1,
            parent_pid: int | None = None, stale_after_s: float = claims.DEFAULT_STALE_AFTER_S) -> None:
    if parent_pid is not None:
        _end_with_parent(parent_pid)
    torch.cuda.set_device(device) if device.startswith("cuda") else None
    while True:
        item = queue.get()
        if item is None:
            return
        if deadline is not None and time.time() > deadline:  # wall clock: shared across processes
            continue  # drain the queue without starting more runs
        _attempt(Task(**item), device, workers_on_device, stale_after_s)


def run_sweep(
    configs: list[TrainConfig],
    results: str | Path,
    devices: list[str] | None = None,
    progress: bool = True,
    time_budget_s: float | None = None,
    **options: Any,
) -> list[dict]:
    """Run every configuration not yet in ``results``; return the records of all of ``configs`` (in order).

    devices: None = one process on the default device; several = one worker process per entry (an entry may
    repeat, e.g. ``["cuda:0", "cuda:0"]`` runs two small trainings side by side on one GPU).
    time_budget_s: start no new configuration after this many seconds; the records finished so far are
    returned and a later call resumes with the rest.
    options: retry_failed, shard, stale_after_s, poll_s of :func:`run_sweeps`.
    """
    return run_sweeps([(configs, results)], devices, progress, time_budget_s, **options)[0]


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4): shard 1 of 4 (0-based). ValueError naming --shard otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/N needs N >= 1 and 0 <= i < N, got {text!r}")
    return i, n


def _check_options(shard: tuple[int, int] | None, stale_after_s: float, poll_s: float,
                   time_budget_s: float | None) -> None:
    if shard is not None:
        if not (isinstance(shard, tuple) and len(shard) == 2):
            raise ValueError(f"shard must be a tuple (index, count), got {shard!r}")
        shard_path("x.jsonl", *shard)  # ValueError naming index / count
    if not stale_after_s > 0:
        raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
    if not poll_s > 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
    if time_budget_s is not None and time_budget_s < 0:
        raise ValueError(f"time_budget_s must be >= 0, got {time_budget_s!r}")


def _plan(sweeps: list[tuple[list[TrainConfig], str | Path]], shard: tuple[int, int] | None,
          retry_failed: bool, devices: list[str] | None) -> tuple[list[Task], list[tuple[Path, list[str]]]]:
    """The tasks to run and, per sweep, (results set, keys of its configurations this process answers
    for); prints what each sweep re-uses, skips and runs."""
    tasks: list[Task] = []
    per_sweep: list[tuple[Path, list[str]]] = []
    planned: set[tuple[str, str]] = set()  # a configuration named twice for one file runs once
    for configs, results in sweeps:
        results = Path(results)
        if shard is not None:  # every N-th configuration: shards of similar cost when sizes vary regularly
            configs = [c for j, c in enumerate(configs) if j % shard[1] == shard[0]]
        out = shard_path(results, *shard) if shard else results
        done = {r.get("key") for r in load_result_set(results)}
        failed = set(load_failures(results)) - done
        keys = [config_key(c) for c in configs]
        per_sweep.append((results, keys))
        todo, skipped = [], 0
        for c, k in zip(configs, keys):
            if k in failed and not retry_failed:
                skipped += 1
            elif k not in done and (str(results), k) not in planned:
                planned.add((str(results), k))
                todo.append(Task(asdict(c), k, str(out), str(results)))
        tasks.extend(todo)
        print(f"sweep {out.name}: {len(configs)} configurations, re-using "
              f"{len(configs) - len(todo) - skipped} finished ones from {results}"
              + (" and its shards" if len(result_files(results)) > 1 else "")
              + (f", skipping {skipped} failed ones (see {failures_path(results).name}; --retry-failed runs "
                 "them again)" if skipped else "")
              + f", running {len(todo)}" + (f" on {devices}" if devices else ""))
    return tasks, per_sweep


def _unsettled(tasks: list[Task], since: float) -> list[Task]:
    """The tasks neither recorded nor failed at or after ``since`` (wall clock): those still to run (each
    results set is read once, not once per task)."""
    settled: dict[str, set] = {}
    for res in {t.results for t in tasks}:
        done = {r.get("key") for r in load_result_set(res, warn=False)}
        settled[res] = done | {k for k, f in load_failures(res).items() if f.get("time", 0) >= since}
    return [t for t in tasks if t.key not in settled[t.results]]


def _execute(tasks: list[Task], devices: list[str] | None, progress: bool, deadline: float | None,
             stale_after_s: float, since: float) -> None:
    """One pass over ``tasks``: each is claimed and run here, or skipped when another process has it."""
    if devices and len(devices) > 1:
        _execute_pool(tasks, devices, progress, deadline, stale_after_s, since)
        return
    device = devices[0] if devices else None
    for task in tqdm(tasks, desc="sweep", disable=not progress):
        if deadline is not None and time.time() > deadline:
            break
        _attempt(task, device, 1, stale_after_s)


def _execute_pool(tasks: list[Task], devices: list[str], progress: bool, deadline: float | None,
                  stale_after_s: float, since: float) -> None:
    import multiprocessing as mp  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for t in tasks:
        queue.put(asdict(t))
    for _ in devices:
        queue.put(None)
    procs = [ctx.Process(target=_worker, args=(d, queue, deadline, devices.count(d), os.getpid(), stale_after_s))
             for d in devices]
    for p in procs:
        p.start()
    bar = tqdm(total=len(tasks), desc="sweep", disable=not progress)
    seen = 0
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=5)
        n = len(tasks) - len(_unsettled(tasks, since)) if progress else 0
        bar.update(n - seen)
        seen = n
    bar.close()
    failed = [d for d, p in zip(devices, procs) if p.exitcode]
    if failed:
        raise RuntimeError(f"sweep workers on {failed} died; finished runs are kept in "
                           f"{', '.join(dict.fromkeys(t.out for t in tasks))}; run the same command again to resume")


def _wait_for_others(tasks: list[Task], since: float, deadline: float | None, poll_s: float,
                     stale_after_s: float) -> list[Task]:
    """Wait while other live processes hold the claims of all unsettled ``tasks``; return the unsettled
    ones as soon as one of them is free to claim (its owner finished, failed or died), [] when all settled
    or at the deadline."""
    said = False
    while True:
        pending = _unsettled(tasks, since)
        if not pending or (deadline is not None and time.time() > deadline):
            return []
        live = {}
        for d in {claims_dir(t.results) for t in pending}:
            live.update(claims.live_claims(d, stale_after_s))
        if any(t.key not in live for t in pending):
            return pending
        if not said:
            owners = sorted({f"{o.host}:{o.pid}" for o in live.values() if o is not None})
            print(f"sweep: waiting for {len(pending)} configurations that other processes run now "
                  f"({', '.join(owners) or 'unknown owners'})", flush=True)
            said = True
        time.sleep(poll_s)


def _collect(per_sweep: list[tuple[Path, list[str]]], time_budget_s: float | None) -> list[list[dict]]:
    """Each sweep's records in configuration order; SweepFailed when a configuration failed."""
    out, failures = [], []
    for results, keys in per_sweep:
        done = {r["key"]: r for r in load_result_set(results) if "key" in r}
        missing = [k for k in keys if k not in done]
        failed = {k: f for k, f in load_failures(results).items() if k in missing}
        failures += [(results, f) for f in failed.values()]
        missing = [k for k in missing if k not in failed]
        if missing and time_budget_s is not None:
            print(f"sweep {results.name}: time budget of {time_budget_s:.0f} s reached with {len(missing)} "
                  f"configurations left; run the same command again to resume")
        elif missing:
            raise RuntimeError(f"{len(missing)} configurations have no result in {results}")
        out.append([done[k] for k in keys if k in done])
    if failures:
        lines = [f"  {f['name']} ({f['key']}): {f['error']}" for _, f in failures]
        files = ", ".join(dict.fromkeys(str(f) for r, _ in failures for f in result_files(failures_path(r))))
        raise SweepFailed(f"{len(failures)} configurations failed (errors and tracebacks in {files}; "
                          "--retry-failed runs them again):\n" + "\n".join(lines), out)
    return out


def run_sweeps(
    sweeps: list[tuple[list[TrainConfig], str | Path]],
    devices: list[str] | None = None,
    progress: bool = True,
    time_budget_s: float | None = None,
    *,
    retry_failed: bool = False,
    shard: tuple[int, int] | None = None,
    stale_after_s: float = claims.DEFAULT_STALE_AFTER_S,
    poll_s: float = 5.0,
) -> list[list[dict]]:
    """Several sweeps (configurations, results file) through one pool of workers: configurations start in
    the order given (the first sweep's first), each record goes to its own sweep's file, and a worker that
    finishes one sweep's share goes on with the next sweep's instead of idling. Same resume and time-budget
    rules as :func:`run_sweep`; returns each sweep's records.

    retry_failed: run configurations recorded as failed again (default: skip them).
    shard: (i, N): only every N-th configuration of each sweep from the i-th, appended to its own shard file
    (``dsa.records.shard_path``); the records returned are that shard's.
    stale_after_s: a claim whose heartbeat is this old is taken over (``dsa.train.claims``).
    poll_s: how often to look whether configurations other processes run have finished.
    Raises SweepFailed (with the finished records) when configurations failed.
    """
    _check_options(shard, stale_after_s, poll_s, time_budget_s)
    since = time.time()
    deadline = None if time_budget_s is None else since + time_budget_s
    tasks, per_sweep = _plan(sweeps, shard, retry_failed, devices)
    while tasks:
        _execute(tasks, devices, progress, deadline, stale_after_s, since)
        tasks = _wait_for_others(tasks, since, deadline, poll_s, stale_after_s)
    for results, _ in per_sweep:
        claims.remove_if_empty(claims_dir(results))
    return _collect(per_sweep, time_budget_s)


def with_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    """The same configuration with another number of LM steps; recipe phases that were left at their
    defaults are re-derived from the new count, explicit ones are kept."""
    default = TrainConfig(**{**asdict(cfg), "dense_steps": None, "warmup_steps": None, "indexer_kl": None})
    kw = {**asdict(cfg), "steps": steps}
    for name in ("dense_steps", "warmup_steps"):
        if getattr(cfg, name) == getattr(default, name):
            kw[name] = None
    kw["eval_every"] = min(cfg.eval_every, steps)
    return TrainConfig(**kw)


def resolve_devices(spec: str | None, workers_per_device: int = 1) -> list[str] | None:
    """'cuda:0,cuda:1' / 'all' (every CUDA device here) / None, each repeated ``workers_per_device`` times.
    Resolved where the sweep runs (a cluster job sees its own GPUs, not the submitting machine's)."""
    if isinstance(workers_per_device, bool) or not isinstance(workers_per_device, int) or workers_per_device < 1:
        raise ValueError(f"--workers-per-device must be >= 1, got {workers_per_device!r}")
    devices = None
    if spec == "all":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or None
    elif spec:
        devices = spec.split(",")
    if workers_per_device > 1:
        devices = [d for d in (devices or ["cuda:0" if torch.cuda.is_available() else "cpu"])
                   for _ in range(workers_per_device)]
    return devices


@dataclass(frozen=True)
class ShardJob:
    """One array task of a cluster submission: shard ``index`` of ``count`` of the sweeps. Picklable
    (submitit sends it to the job); a requeued job (pre-emption, time limit) starts again and resumes by key:
    finished configurations are re-used, the interrupted one's claim belongs to the same cluster job and is
    taken over at once."""

    sweeps: list[tuple[list[dict], str]]  # (configuration fields, results file) per sweep
    count: int
    devices: str | None = None
    workers_per_device: int = 1
    time_budget_s: float | None = None
    retry_failed: bool = False
    stale_after_s: float = claims.DEFAULT_STALE_AFTER_S

    def __call__(self, index: int) -> dict[str, int]:
        """Run the shard; returns {results file: records of this shard}."""
        sweeps = [([TrainConfig(**c) for c in cfgs], res) for cfgs, res in self.sweeps]
        recs = run_sweeps(sweeps, resolve_devices(self.devices, self.workers_per_device), progress=False,
                          time_budget_s=self.time_budget_s, retry_failed=self.retry_failed,
                          shard=(index, self.count), stale_after_s=self.stale_after_s)
        return {res: len(r) for (_, res), r in zip(self.sweeps, recs)}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on pre-emption or time-out: requeue the same shard (it resumes by key)."""
        import submitit  # noqa: PLC0415

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def parse_executor_params(items: list[str]) -> dict[str, Any]:
    """['slurm_partition=gpu', 'timeout_min=60'] -> {'slurm_partition': 'gpu', 'timeout_min': 60} (values
    read as Python literals where they are one, else as strings). ValueError naming --slurm otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--slurm takes key=value items, got {item!r}")
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name.strip()] = value
    return out


def submit_shards(job: ShardJob, executor_params: Mapping[str, Any], folder: str | Path) -> list:
    """Submit ``job``'s shards 0..count-1 as one job array through ``submitit.AutoExecutor`` and return the
    submitit jobs. executor_params: ``update_parameters`` keywords (``slurm_partition``, ``timeout_min``,
    ``gpus_per_node``, ``slurm_array_parallelism``, ...); ``cluster`` picks the executor (``local`` runs
    the array as local processes, ``debug`` in this process; default: Slurm when it is there)."""
    import submitit  # noqa: PLC0415

    params = dict(executor_params)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=params.pop("cluster", None))
    executor.update_parameters(**{"name": "dsa-sweep", **params})
    return executor.map_array(job, list(range(job.count)))


if __name__ == "__main__":
    from dsa.train.cli import sweep_main  # noqa: PLC0415

    sys.exit(sweep_main(prog="python -m dsa.train.sweep"))
