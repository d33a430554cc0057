"""The training commands: ``python -m dsa train`` (one run, :mod:`dsa.train.trainer`) and ``python -m dsa sweep``
(an experiment's runs, resumable, :mod:`dsa.train.sweep`).

Every value is checked before any data loads: ``train``'s flags are :class:`TrainConfig`'s fields (its
``__post_init__`` checks them), the sweep's are checked by :func:`check_sweep_args`; a bad one ends with
``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from dsa import cli
from dsa.checks import check_out_file, resolve_device
from dsa.train import sweep, trainer
from dsa.train.trainer import TrainConfig


# ------------------------------------------------------------------------------------------ train
def build_train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=trainer.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_option(p)
    cli.add_dataclass_flags(p, TrainConfig)
    p.add_argument("--print-json", action="store_true", help="also print the final metrics as one JSON line")
    return p


def train_config_from_args(p: argparse.ArgumentParser, argv: list[str] | None) -> tuple[TrainConfig, bool]:
    """(the checked TrainConfig, --print-json); exits with status 2 on a bad value."""
    args = vars(cli.parse_args(p, argv))
    args.pop("config")
    print_json = args.pop("print_json")
    with cli.usage_errors(p):
        cfg = TrainConfig(**args)
        cfg.check_runtime()
        trainer.read_checkpoints(cfg, quiet=True)  # a bad checkpoint file is a usage error too
    return cfg, print_json


def _summary(rec: dict) -> str:
    f = rec["final"]
    line = (f"{rec['name']}: val_loss={f['val_loss']:.4f} val_acc={f['val_acc']:.4f} ppl={f['val_ppl']:.2f} "
            f"time/step={f['time_per_step_s'] * 1e3:.1f} ms")
    if "recall" in f:
        line += f" recall={f['recall']:.3f}"
    if "val_loss_causal_eval" in f:
        line += f" val_loss(causal guard on at eval)={f['val_loss_causal_eval']:.4f}"
    return line


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa train``: one training run, its record written to runs/<name>.json (or --out)."""
    ddp_util = trainer.ddp_util
    cfg, print_json = train_config_from_args(build_train_parser(prog), argv)
    rec = trainer.train(cfg)
    if not ddp_util.is_main_process():
        ddp_util.barrier_and_close()
        return 0
    print(_summary(rec))
    print(f"wrote {rec['path']}" if "path" in rec else "no JSON written (--out '')")
    if print_json:
        print(json.dumps(dict(rec["final"]), default=str))
    ddp_util.barrier_and_close()
    return 0


# ------------------------------------------------------------------------------------------ sweep
def build_sweep_parser(experiments: list[str], prog: str | None = None) -> argparse.ArgumentParser:
    from dsa.train.claims import DEFAULT_STALE_AFTER_S  # noqa: PLC0415
    from dsa.train.experiments import SIZES  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=prog, description=sweep.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_option(p)
    # choices are checked in check_sweep_args: argparse rejects an empty '*' list against choices (3.11)
    p.add_argument("experiment", nargs="*", metavar="EXPERIMENT",
                   help="one or more experiments; several share one pool of workers, in the order given "
                        f"(choices: {', '.join(experiments)})")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: CPU sizes (seconds a run); full: the study's GPU sizes (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="results .jsonl of one experiment (default runs/<experiment>-<size>.jsonl)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="folder for <experiment>.jsonl files (several experiments)")
    p.add_argument("--devices", default=None, metavar="DEV[,DEV...]",
                   help="comma-separated devices (cpu, cuda, cuda:N), or 'all' for every CUDA device "
                        "(default: one process on the default device)")
    p.add_argument("--workers-per-device", type=int, default=1, metavar="N",
                   help="training processes per device, >= 1 (small models leave a GPU mostly idle)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="override the LM steps of every configuration, >= 1")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="run only the first N configurations")
    p.add_argument("--time-budget-s", type=float, default=None, metavar="SECONDS",
                   help="start no new configuration after this many seconds; re-run to resume")
    p.add_argument("--retry-failed", action="store_true",
                   help="run configurations recorded as failed (<results>.failed) again")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="run shard i of N (0-based) into <results>.shard-i-of-N.jsonl")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --slurm: submit N shards as one job array (default 1)")
    p.add_argument("--slurm", nargs="+", default=None, metavar="KEY=VALUE",
                   help="submit through submitit's AutoExecutor with these parameters (e.g. slurm_partition=gpu "
                        "timeout_min=600 gpus_per_node=1; cluster=local runs the array locally)")
    p.add_argument("--slurm-folder", default="runs/slurm/%j", metavar="DIR",
                   help="submitit's folder for job logs and pickles (default: %(default)s)")
    p.add_argument("--wait", action="store_true", help="with --slurm: wait for the jobs and report them")
    p.add_argument("--stale-after-s", type=float, default=DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                   help="take over a claim whose owner's heartbeat is this old (an owner on another machine) "
                        "(default: %(default)s)")
    return p


def check_sweep_args(args: argparse.Namespace, experiments: list[str]) -> None:
    """Every sweep option on its own and in combination, before any configuration is built or run.
    ValueError naming the flag."""
    if not args.experiment:
        raise ValueError(f"give at least one EXPERIMENT of {', '.join(experiments)}")
    unknown = [e for e in args.experiment if e not in experiments]
    if unknown:
        raise ValueError(f"EXPERIMENT must be among {', '.join(experiments)}, got {', '.join(unknown)}")
    if args.out and len(set(args.experiment)) > 1:
        raise ValueError("--out names one results file: give several experiments --out-dir instead")
    if args.out and args.out_dir:
        raise ValueError("give --out or --out-dir, not both")
    check_out_file("--out", args.out)
    if args.out_dir and Path(args.out_dir).is_file():
        raise ValueError(f"--out-dir must be a folder, got the file {args.out_dir!r}")
    for flag, value in (("--workers-per-device", args.workers_per_device), ("--steps", args.steps),
                        ("--limit", args.limit), ("--shards", args.shards)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.time_budget_s is not None and not (math.isfinite(args.time_budget_s) and args.time_budget_s >= 0):
        raise ValueError(f"--time-budget-s must be a finite number >= 0, got {args.time_budget_s}")
    if not (math.isfinite(args.stale_after_s) and args.stale_after_s > 0):
        raise ValueError(f"--stale-after-s must be a finite number > 0, got {args.stale_after_s}")
    if args.shard:
        sweep.parse_shard(args.shard)
    if args.slurm is not None:
        if args.shard:
            raise ValueError("--slurm submits every shard itself: give --shards N, not --shard")
        sweep.parse_executor_params(args.slurm)
    elif args.shards is not None or args.wait:
        raise ValueError("--shards and --wait only apply with --slurm")
    if args.devices and args.devices != "all" and args.slurm is None:  # a cluster job resolves its own
        for d in args.devices.split(","):
            try:
                resolve_device(d.strip())
            except ValueError as e:
                raise ValueError(f"--devices: {e}") from None


def sweeps_from_args(args: argparse.Namespace) -> list[tuple[list[TrainConfig], str]]:
    from dsa.train.experiments import get_experiment  # noqa: PLC0415

    sweeps = []
    for name in dict.fromkeys(args.experiment):
        configs = get_experiment(name, args.size)
        if args.steps is not None:
            configs = [sweep.with_steps(c, args.steps) for c in configs]
        if args.limit is not None:
            configs = configs[: args.limit]
        if args.out:
            out = args.out
        elif args.out_dir:
            out = str(Path(args.out_dir) / f"{name}.jsonl")
        else:
            out = f"runs/{name}-{args.size}.jsonl"
        sweeps.append((configs, out))
    return sweeps


def _submit(args: argparse.Namespace, sweeps: list[tuple[list[TrainConfig], str]]) -> int:
    job = sweep.ShardJob([([asdict(c) for c in cfgs], str(res)) for cfgs, res in sweeps], args.shards or 1,
                         args.devices, args.workers_per_device, args.time_budget_s, args.retry_failed,
                         args.stale_after_s)
    jobs = sweep.submit_shards(job, sweep.parse_executor_params(args.slurm), args.slurm_folder)
    print(f"submitted {len(jobs)} shard(s): {', '.join(j.job_id for j in jobs)} (logs under {args.slurm_folder})")
    if not args.wait:
        return 0
    bad = 0
    for i, j in enumerate(jobs):
        try:
            print(f"shard {i}/{len(jobs)} ({j.job_id}): {j.result()}")
        except Exception as e:  # noqa: BLE001 (each shard is reported; the exit status says one failed)
            bad += 1
            print(f"shard {i}/{len(jobs)} ({j.job_id}) failed: {e}", file=sys.stderr)
    return 1 if bad else 0


def sweep_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa sweep``: run (or submit) experiments' configurations, resumably."""
    from dsa.train.experiments import EXPERIMENTS  # noqa: PLC0415

    names = sorted(EXPERIMENTS)
    p = build_sweep_parser(names, prog)
    args = cli.parse_args(p, argv)
    with cli.usage_errors(p):
        check_sweep_args(args, names)
        sweeps = sweeps_from_args(args)  # builds (and so checks) every TrainConfig, --steps applied
    if args.slurm is not None:
        return _submit(args, sweeps)
    devices = sweep.resolve_devices(args.devices, args.workers_per_device)
    shard = sweep.parse_shard(args.shard) if args.shard else None
    try:
        results = sweep.run_sweeps(sweeps, devices, time_budget_s=args.time_budget_s,
                                   retry_failed=args.retry_failed, shard=shard, stale_after_s=args.stale_after_s)
    except sweep.SweepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for recs in results:
        for r in recs:
            f = r["final"]
            print(f"{r['name']:<40} val_loss={f['val_loss']:.4f} acc={f['val_acc']:.4f} "
                  f"t/step={1e3 * (f.get('time_per_step_s') or 0):.1f}ms recall={f.get('recall', float('nan')):.3f}")
    return 0
