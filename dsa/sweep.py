"""Resumable sweeps: run a list of configurations, one JSON line per finished run, appended atomically.

- A finished configuration is never re-run: its key (a hash of the config fields that change results) is
  looked up in the results file first, and the sweep says how many it re-used.
- Lines are appended whole, under an exclusive file lock, and fsync'ed, so a killed process loses at
  most the run in flight; a torn last line (killed mid-write) is cut off before the next append.
- With several devices, one worker process per device takes configurations from a shared queue.

CLI: python -m dsa.sweep EXPERIMENT --size small|full --out data/gpu/EXPERIMENT.jsonl [--devices all]
     python -m dsa.sweep EXP1 EXP2 ... --size full --out-dir data/gpu --workers-per-device 8  (one pool)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .train import TrainConfig, train

# Fields that name or route a run without changing its result.
_NOT_IN_KEY = ("out", "name", "progress", "device")


def config_key(cfg: TrainConfig) -> str:
    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_results(path: str | Path) -> list[dict]:
    """All complete records of a results file (a torn last line is skipped with a warning)."""
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


def _run_one(cfg: TrainConfig, device: str | None, workers_on_device: int = 1) -> dict:
    cfg = replace(cfg, out="", progress=False, device=device or cfg.device)
    rec = train(cfg)
    rec.pop("model", None)
    rec["key"] = config_key(cfg)
    # Several training processes on one GPU time-share it: a run's time per step then includes waiting
    # for the others, so it is no speed measurement (the analysis says so when this is above 1).
    rec["timing"] = {"workers_on_device": workers_on_device}
    return rec


def _worker(device: str, queue, deadline: float | None = None, workers_on_device: int = 1) -> None:
    torch.cuda.set_device(device) if device.startswith("cuda") else None
    while True:
        item = queue.get()
        if item is None:
            return
        if deadline is not None and time.time() > deadline:  # wall clock: shared across processes
            continue  # drain the queue without starting more runs
        cfg, results = item
        rec = _run_one(TrainConfig(**cfg), device, workers_on_device)
        append_result(results, rec)


def run_sweep(
    configs: list[TrainConfig],
    results: str | Path,
    devices: list[str] | None = None,
    progress: bool = True,
    time_budget_s: float | None = None,
) -> list[dict]:
    """Run every configuration not yet in ``results``; return the records of all of ``configs`` (in order).

    devices: None = one process on the default device; several = one worker process per entry (an entry may
    repeat, e.g. ``["cuda:0", "cuda:0"]`` runs two small trainings side by side on one GPU).
    time_budget_s: start no new configuration after this many seconds; the records finished so far are
    returned and a later call resumes with the rest.
    """
    return run_sweeps([(configs, results)], devices, progress, time_budget_s)[0]


def run_sweeps(
    sweeps: list[tuple[list[TrainConfig], str | Path]],
    devices: list[str] | None = None,
    progress: bool = True,
    time_budget_s: float | None = None,
) -> list[list[dict]]:
    """Several sweeps (configurations, results file) through one pool of workers: configurations start in
    the order given (the first sweep's first), each record goes to its own sweep's file, and a worker that
    finishes one sweep's share goes on with the next sweep's instead of idling. Same resume and time-budget
    rules as :func:`run_sweep`; returns each sweep's records."""
    t0 = time.monotonic()
    plan = []  # (config, key, results path)
    per_sweep: list[tuple[Path, list[str]]] = []
    planned: set[tuple[str, str]] = set()  # a configuration named twice for one file runs once
    reused = 0
    for configs, results in sweeps:
        results = Path(results)
        done = {r["key"] for r in load_results(results)}
        keys = [config_key(c) for c in configs]
        per_sweep.append((results, keys))
        todo = []
        for c, k in zip(configs, keys):
            if k not in done and (str(results), k) not in planned:
                planned.add((str(results), k))
                todo.append((c, k, results))
        reused += len(configs) - len(todo)
        plan.extend(todo)
        print(f"sweep {results.name}: {len(configs)} configurations, re-using {len(configs) - len(todo)} finished "
              f"ones from {results}, running {len(todo)}" + (f" on {devices}" if devices else ""))
    if devices and len(devices) > 1 and plan:
        import multiprocessing as mp  # noqa: PLC0415

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for c, _, results in plan:
            queue.put((asdict(c), str(results)))
        for _ in devices:
            queue.put(None)
        deadline = None if time_budget_s is None else time.time() + time_budget_s
        procs = [ctx.Process(target=_worker, args=(d, queue, deadline, devices.count(d))) for d in devices]
        for p in procs:
            p.start()
        bar = tqdm(total=len(plan), desc="sweep", disable=not progress)
        todo_keys = {(str(r), k) for _, k, r in plan}
        seen = 0
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=5)
            n = sum(len({(str(r), x["key"]) for x in load_results(r)} & todo_keys) for r in {p for p, _ in per_sweep})
            bar.update(n - seen)
            seen = n
        bar.close()
        failed = [d for d, p in zip(devices, procs) if p.exitcode]
        if failed:
            raise RuntimeError(f"sweep workers on {failed} failed; finished runs are kept in "
                               f"{', '.join(dict.fromkeys(str(p) for p, _ in per_sweep))}")
    else:
        device = devices[0] if devices else None
        for cfg, _, results in tqdm(plan, desc="sweep", disable=not progress):
            if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
                break
            append_result(results, _run_one(cfg, device))
    out = []
    for results, keys in per_sweep:
        done = {r["key"]: r for r in load_results(results)}
        missing = [k for k in keys if k not in done]
        if missing and time_budget_s is not None:
            print(f"sweep {results.name}: time budget of {time_budget_s:.0f} s reached with {len(missing)} "
                  f"configurations left; run the same command again to resume")
        elif missing:
            raise RuntimeError(f"{len(missing)} configurations have no result in {results}")
        out.append([done[k] for k in keys if k in done])
    return out


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


def main(argv: list[str] | None = None) -> int:
    from .experiments import EXPERIMENTS, get_experiment  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m dsa.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="+", choices=sorted(EXPERIMENTS),
                   help="one or more experiments; several share one pool of workers, in the order given")
    p.add_argument("--size", choices=("small", "full"), default="small")
    p.add_argument("--out", default=None, help="results .jsonl of one experiment (default runs/<experiment>-<size>.jsonl)")
    p.add_argument("--out-dir", default=None, help="folder for <experiment>.jsonl files (several experiments)")
    p.add_argument("--devices", default=None, help="comma-separated devices, or 'all' for every CUDA device")
    p.add_argument("--workers-per-device", type=int, default=1,
                   help="training processes per device (small models leave a GPU mostly idle)")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every configuration")
    p.add_argument("--limit", type=int, default=None, help="run only the first N configurations")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="start no new configuration after this many seconds; re-run to resume")
    args = p.parse_args(argv)
    if args.out and len(args.experiment) > 1:
        p.error("--out names one results file: give several experiments --out-dir instead")
    if args.out and args.out_dir:
        p.error("give --out or --out-dir, not both")
    sweeps = []
    for name in dict.fromkeys(args.experiment):
        configs = get_experiment(name, args.size)
        if args.steps:
            configs = [with_steps(c, args.steps) for c in configs]
        if args.limit:
            configs = configs[: args.limit]
        if args.out:
            out = args.out
        elif args.out_dir:
            out = str(Path(args.out_dir) / f"{name}.jsonl")
        else:
            out = f"runs/{name}-{args.size}.jsonl"
        sweeps.append((configs, out))
    devices = None
    if args.devices == "all":
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or None
    elif args.devices:
        devices = args.devices.split(",")
    if args.workers_per_device < 1:
        p.error(f"--workers-per-device must be >= 1, got {args.workers_per_device}")
    if args.workers_per_device > 1:
        devices = [d for d in (devices or ["cuda:0" if torch.cuda.is_available() else "cpu"])
                   for _ in range(args.workers_per_device)]
    for recs in run_sweeps(sweeps, devices, time_budget_s=args.time_budget_s):
        for r in recs:
            f = r["final"]
            print(f"{r['name']:<40} val_loss={f['val_loss']:.4f} acc={f['val_acc']:.4f} "
                  f"t/step={1e3 * (f.get('time_per_step_s') or 0):.1f}ms recall={f.get('recall', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
