"""Long-context runs where selection matters: the task data, the evaluations that score far-token use, and a
runner for the arms of ``dsa.train.experiments.long_context_*`` (which may start from a checkpoint).

Tasks (``design["task"]``): ``"recall"`` and ``"needle"`` (``dsa.text.synthetic``, the answers are the only
scored targets) and ``"text"`` (the corpus of ``TrainConfig.data``, which a synthetic task leaves unused: its
record's ``data`` is the task's own description). What each evaluation measures:

* synthetic tasks: per query, exact match of the argmax at the query position, the query's distance to its
  relevant token (the key for recall, the needle) bucketed relative to k, the indexer's hit rate on the known
  relevant positions (DSA models, mean over layers), and exact match again with the relevant tokens replaced
  by noise (``cut``): a model that still answers without them does not use the far tokens;
* text: loss per position bucket (t < k, k <= t < 4k, t >= 4k), and the loss of the last quarter of each window
  with its full context against the same positions with the context cut to the last k tokens.

Counts are stored, not rates: the statistics (binomial intervals, equivalence tests) live in ``dsa.study``.

The run's design factors (``design``: task, arm, L, k, layout, replicate, the arm it starts from ...) travel
with the config; until ``TrainConfig`` has its own ``design`` field they ride on the config object as an
attribute (:func:`with_design` / :func:`design_of`) and the runner writes them into the record.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dsa.text.synthetic import (
    TASKS,
    SyntheticBatch,
    SyntheticConfig,
    SyntheticSampler,
    cut_relevant,
    masked_targets,
    selection_hits,
)
from dsa.train.trainer import CONTINUE_SAME, TrainConfig, train

DISTANCE_BUCKETS = ("d < k/4", "k/4 <= d < k", "k <= d < 4k", "d >= 4k")
POSITION_BUCKETS = ("t < k", "k <= t < 4k", "t >= 4k")
_EVAL_SEED_OFFSET = 104729  # evaluation batches come from their own stream, never a training step's batch


# ------------------------------------------------------------------------------------------ design
def with_design(cfg: TrainConfig, design: dict) -> TrainConfig:
    """``cfg`` carrying its design factors: in ``TrainConfig.design`` where that field exists, else as an
    attribute of the object (read back by :func:`design_of`)."""
    if not isinstance(design, dict):
        raise TypeError(f"design must be a dict, got {type(design).__name__}")
    if "design" in {f.name for f in fields(TrainConfig)}:
        return replace(cfg, design=dict(design))
    cfg.__dict__["design"] = dict(design)
    return cfg


def design_of(cfg: TrainConfig) -> dict:
    return dict(getattr(cfg, "design", None) or {})


def task_of(cfg: TrainConfig) -> str:
    """The run's task: design['task'] ('recall', 'needle' or 'text'); 'text' when the design names none."""
    return design_of(cfg).get("task", "text")


def with_init_from(cfg: TrainConfig, path: str | Path) -> TrainConfig:
    """``cfg`` starting from the checkpoint at ``path``: a continuation when ``cfg.start_step`` > 0 (the
    checkpoint's step, schedule and optimiser state), else fresh optimisers at step 0."""
    return with_design(replace(cfg, init_from=str(path)), design_of(cfg))


# ------------------------------------------------------------------------------------------ data
def synthetic_config(cfg: TrainConfig, design: dict) -> SyntheticConfig:
    return SyntheticConfig(vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, n_pairs=design.get("n_pairs", 8),
                           n_queries=design.get("n_queries", 1), distance=(design.get("distances") or [None])[0])


def eval_task_batches(cfg: TrainConfig, design: dict, n_batches: int) -> list[SyntheticBatch]:
    """Evaluation batches of the config's synthetic task; the needle task cycles through design['distances']."""
    task = task_of(cfg)
    dist = tuple(design["distances"]) if task == "needle" and design.get("distances") else None
    s = SyntheticSampler(task, synthetic_config(cfg, design), cfg.batch_size, cfg.data_seed + _EVAL_SEED_OFFSET,
                         distances=dist)
    if dist:  # every distance evaluated equally often
        n_batches = -(-n_batches // len(dist)) * len(dist)
    return [s.full_batch(i) for i in range(n_batches)]


def task_data(cfg: TrainConfig, design: dict):
    """(vocab_size, train_sampler, warm_sampler, val_batches, meta) for ``dsa.train.trainer.train(cfg, data=...)``.
    Every arm gets the stream from its start: the trainer reads batch ``i`` at global LM step ``i``, so a run
    continued at ``cfg.start_step`` reads the batches that come after its source's. (Records written before
    ``start_step`` existed carry ``design['data_offset']``, applied here then; it is not read any more.)"""
    task = task_of(cfg)
    if task in TASKS:
        scfg = synthetic_config(cfg, design)
        dist = tuple(design["distances"]) if task == "needle" and design.get("distances") else None
        train_s = SyntheticSampler(task, scfg, cfg.batch_size, cfg.data_seed, distances=dist)
        warm_s = SyntheticSampler(task, scfg, cfg.batch_size, cfg.data_seed + 7919, distances=dist)
        val = [(b.x, masked_targets(b)) for b in eval_task_batches(cfg, design, cfg.eval_batches)]
        meta = {"name": task, "synthetic": asdict(scfg), "distances": list(dist) if dist else None}
        return cfg.vocab_size, train_s, warm_s, val, meta
    from dsa.train.trainer import _load_data  # noqa: PLC0415

    corpus, train_s, warm_s, val = _load_data(cfg)
    return corpus.vocab_size, train_s, warm_s, val, corpus.meta


# ------------------------------------------------------------------------------------------ evaluation
def distance_bucket(d: int, k: int) -> str:
    """The DISTANCE_BUCKETS label of a query-to-relevant-token distance ``d`` relative to the selection size k."""
    if 4 * d < k:
        return DISTANCE_BUCKETS[0]
    return DISTANCE_BUCKETS[1] if d < k else DISTANCE_BUCKETS[2] if d < 4 * k else DISTANCE_BUCKETS[3]


def _empty_counts() -> dict:
    return {"n": 0, "correct": 0, "correct_cut": 0, "hits": 0.0, "hit_pairs": 0}


def _exact(model, batch: SyntheticBatch, sparse: bool, want_selection: bool):
    """(B, Q) bool exact match at the query positions, and the per-layer selections (or [])."""
    out = model(batch.x, sparse=sparse)
    q = batch.query_pos
    pred = out.logits.argmax(-1).gather(1, q)
    sel = [a.selection for a in out.aux if a.selection is not None] if want_selection else []
    return pred == batch.y.gather(1, q), sel


@torch.no_grad()
def task_eval(model, batches: Sequence[SyntheticBatch], top_k: int, sparse: bool, seed: int = 0,
              by: str = "bucket") -> dict:
    """Exact-match counts per distance bucket (``by='bucket'``) or per exact distance (``by='distance'``).

    batches: SyntheticBatch with x, y, loss_mask (B, L), query_pos (B, Q), relevant_pos (B, Q, R)
    Returns {key: {n, correct, correct_cut, hits, hit_pairs}}: ``correct_cut`` with the relevant tokens replaced
    by noise; ``hits`` / ``hit_pairs``: relevant positions found in the selection, summed over layers (DSA, sparse).
    """
    if by not in ("bucket", "distance"):
        raise ValueError(f"by must be 'bucket' or 'distance', got {by!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    for b in batches:
        b = b.to(device)
        ok, sel = _exact(model, b, sparse, want_selection=sparse)
        ok_cut, _ = _exact(model, cut_relevant(b.to("cpu"), _cfg_for_noise(model, b), g).to(device), sparse, False)
        hits = [selection_hits(s.long(), b.query_pos, b.relevant_pos) for s in sel]  # each (B, Q, R)
        dist = (b.query_pos - b.relevant_pos[..., 0]).cpu()
        for i, j in zip(*torch.nonzero(torch.ones_like(dist, dtype=torch.bool), as_tuple=True)):
            d = int(dist[i, j])
            key = distance_bucket(d, top_k) if by == "bucket" else d
            c = out.setdefault(key, _empty_counts())
            c["n"] += 1
            c["correct"] += int(ok[i, j])
            c["correct_cut"] += int(ok_cut[i, j])
            valid = b.relevant_pos[i, j] >= 0
            for h in hits:
                c["hits"] += int(h[i, j][valid].sum())
                c["hit_pairs"] += int(valid.sum())
    model.train(was_training)
    return out


def _cfg_for_noise(model, batch: SyntheticBatch) -> SyntheticConfig:
    """The vocabulary layout of the model's task (noise ids) for :func:`cut_relevant`."""
    return SyntheticConfig(vocab_size=model.cfg.vocab_size, seq_len=batch.x.shape[1])


@torch.no_grad()
def position_loss(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], top_k: int, sparse: bool) -> dict:
    """Summed next-token loss and token counts per POSITION_BUCKETS label (t < k, k <= t < 4k, t >= 4k).

    batches: (x, y) pairs, each (B, L) int64. Returns {bucket: {"loss_sum", "n"}} (buckets with no position omitted).
    """
    device = next(model.parameters()).device
    out: dict = {}
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        ce = F.cross_entropy(model(x, sparse=sparse).logits.transpose(1, 2), y, reduction="none")  # (B, L)
        t = torch.arange(x.shape[1], device=device)
        masks = (t < top_k, (t >= top_k) & (t < 4 * top_k), t >= 4 * top_k)
        for name, m in zip(POSITION_BUCKETS, masks):
            if int(m.sum()):
                c = out.setdefault(name, {"loss_sum": 0.0, "n": 0})
                c["loss_sum"] += float(ce[:, m].sum())
                c["n"] += int(m.sum()) * x.shape[0]
    return out


@torch.no_grad()
def truncated_context_loss(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], window: int,
                           sparse: bool) -> dict:
    """Loss of the last quarter of each window with its full context vs with the context cut to ``window``
    tokens before that quarter (the model run on the suffix only; RoPE makes positions relative).

    batches: (x, y) pairs, each (B, L), L >= 2; needs window + L/4 <= L. Returns {"full_loss", "cut_loss", "n"}.
    """
    device = next(model.parameters()).device
    full = cut = 0.0
    n = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        length = x.shape[1]
        m = max(1, length // 4)
        if window + m > length:
            raise ValueError(f"window ({window}) + L/4 ({m}) must be <= L ({length})")
        lf = model(x, sparse=sparse).logits[:, -m:]
        lc = model(x[:, length - m - window:], sparse=sparse).logits[:, -m:]
        full += float(F.cross_entropy(lf.transpose(1, 2), y[:, -m:], reduction="sum"))
        cut += float(F.cross_entropy(lc.transpose(1, 2), y[:, -m:], reduction="sum"))
        n += y[:, -m:].numel()
    return {"full_loss": full / n, "cut_loss": cut / n, "n": n, "window": window}


def evaluate_run(model, cfg: TrainConfig, design: dict, val, n_batches: int) -> dict:
    """The long-context evaluation of a trained model (synthetic task or text), as JSON-ready counts."""
    sparse = cfg.attention == "dsa"
    if task_of(cfg) in TASKS:
        batches = eval_task_batches(cfg, design, n_batches)
        res = {"kind": "task", "by_bucket": task_eval(model, batches, cfg.top_k, sparse, seed=cfg.data_seed)}
        if task_of(cfg) == "needle":
            res["by_distance"] = {str(k): v for k, v in task_eval(model, batches, cfg.top_k, sparse,
                                                                   seed=cfg.data_seed, by="distance").items()}
        return res
    res = {"kind": "text", "by_position": position_loss(model, val[:n_batches], cfg.top_k, sparse)}
    if cfg.top_k + cfg.seq_len // 4 <= cfg.seq_len:
        res["truncated"] = truncated_context_loss(model, val[:n_batches], cfg.top_k, sparse)
    return res


# ------------------------------------------------------------------------------------------ runner
def order_arms(configs: Sequence[TrainConfig]) -> list[TrainConfig]:
    """The configs in their own order except that every run comes after the run it starts from (each step takes
    the first pending run whose source is done; ValueError on a missing or circular source)."""
    names = {c.run_name() for c in configs}
    done: set[str] = set()
    out: list[TrainConfig] = []
    pending = list(configs)
    while pending:
        ready = next((c for c in pending if design_of(c).get("init_from_arm") in (None, *done)), None)
        if ready is None:
            missing = sorted({design_of(c)["init_from_arm"] for c in pending} - names)
            raise ValueError(f"init_from_arm names runs that are not in the list: {missing}" if missing
                             else "init_from_arm forms a cycle")
        out.append(ready)
        done.add(ready.run_name())
        pending.remove(ready)
    return out


def check_continuations(configs: Sequence[TrainConfig]) -> None:
    """ValueError, before anything trains, unless every arm that starts from another (``design['init_from_arm']``)
    continues it: it starts at the global LM step its source ends at (``start_step`` = the source's
    ``start_step + steps``), on the same LR schedule (shape and length) and batch stream
    (``dsa.train.trainer.CONTINUE_SAME``), and its source writes a checkpoint (``design['save_checkpoint']``).
    An arm with ``start_step`` > 0 must name its source. (The trainer checks the checkpoint itself again.)"""
    by_name = {c.run_name(): c for c in configs}
    for c in configs:
        src_name = design_of(c).get("init_from_arm")
        if src_name is None:
            if c.start_step and c.init_from is None:
                raise ValueError(f"{c.run_name()}: start_step {c.start_step} > 0 but no init_from_arm to continue")
            continue
        src = by_name.get(src_name)
        if src is None:
            raise ValueError(f"init_from_arm names runs that are not in the list: [{src_name!r}]")
        why = [f"{k}: {getattr(src, k)!r} vs {getattr(c, k)!r}" for k in CONTINUE_SAME
               if getattr(src, k) != getattr(c, k)]
        if src.schedule_length() != c.schedule_length():
            why.append(f"LR schedule of {src.schedule_length()} vs {c.schedule_length()} steps")
        if c.start_step != src.start_step + src.steps:
            why.append(f"starts at step {c.start_step}, its source ends at {src.start_step + src.steps}")
        if not design_of(src).get("save_checkpoint"):
            why.append("its source writes no checkpoint (design save_checkpoint)")
        if why:
            raise ValueError(f"{c.run_name()} does not continue {src_name}: " + "; ".join(why))


def run_arms(configs: Sequence[TrainConfig], out: str | Path, ckpt_dir: str | Path, n_eval_batches: int = 4,
             device: str | None = None, extra: dict | None = None) -> list[dict]:
    """Train and evaluate every config (sources before the arms that start from them), appending one JSON
    line per run to ``out``: the trainer's record (config, history, final, provenance ...) plus ``design``,
    ``long_context`` (:func:`evaluate_run`) and ``extra`` (e.g. {"timing": {"workers_on_device": n}}).
    An arm with ``design['save_checkpoint']`` writes the trainer's full checkpoint (weights, optimisers,
    step, data position) to ``ckpt_dir/<run name>.pt``; the arms that name it in ``init_from_arm`` continue
    from it (:func:`check_continuations`, checked for all arms before the first one trains)."""
    check_continuations(configs)
    out, ckpt_dir = Path(out), Path(ckpt_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpts: dict[str, Path] = {}
    records = []
    for cfg in order_arms(configs):
        design = design_of(cfg)
        if device is not None:
            cfg = with_design(replace(cfg, device=device), design)
        if design.get("init_from_arm"):
            cfg = with_init_from(cfg, ckpts[design["init_from_arm"]])
        if design.get("save_checkpoint"):
            ckpts[cfg.run_name()] = ckpt_dir / f"{cfg.run_name()}.pt"
            cfg = with_design(replace(cfg, checkpoint_path=str(ckpts[cfg.run_name()])), design)
        data = task_data(cfg, design)
        rec = train(cfg, data=data)
        model = rec.pop("model")
        with torch.autocast("cuda", dtype=torch.bfloat16) if model.embed.weight.is_cuda else contextlib.nullcontext():
            rec["long_context"] = evaluate_run(model, cfg, design, data[3], n_eval_batches)
        rec["design"] = design
        rec.update(extra or {})
        with out.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------ command line
def build_parser(prog: str | None = None):
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=prog or "python -m dsa long-context",
                                description="Run a long-context experiment (dsa.train.experiments) to JSON lines.")
    p.add_argument("--experiment", required=True,
                   choices=("long_context_sparse", "long_context_recipe", "long_context_pilot"),
                   help="which long-context experiment (dsa.train.experiments.LONG_CONTEXT_EXPERIMENTS)")
    p.add_argument("--size", default="small", choices=("small", "full"), help="small (CPU) | full (GPU)")
    p.add_argument("--seeds", default="", help="comma-separated seeds to run (default: all of the experiment's)")
    p.add_argument("--tasks", default="", help="comma-separated tasks to run: recall, needle, text (default: all)")
    p.add_argument("--out", required=True, help="JSON-lines file the records are appended to")
    p.add_argument("--ckpt-dir", default="runs/long_context_ckpt", help="where dense checkpoints are written")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the configs' own)")
    p.add_argument("--eval-batches", type=int, default=4, help="evaluation batches per run (default %(default)s)")
    p.add_argument("--workers-on-device", type=int, default=1,
                   help="training processes sharing this device (recorded: timings are not speeds when > 1)")
    p.add_argument("--list", action="store_true", help="print the run names and exit")
    return p


def _selected(args) -> list[TrainConfig]:
    """The configs the arguments pick; ValueError naming the argument when they are wrong or pick nothing."""
    from dsa.train.experiments import get_experiment  # noqa: PLC0415

    try:
        seeds = {int(s) for s in args.seeds.split(",") if s.strip()} or None
    except ValueError as e:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from e
    tasks = {t.strip() for t in args.tasks.split(",") if t.strip()} or None
    bad = (tasks or set()) - {"recall", "needle", "text"}
    if bad:
        raise ValueError(f"--tasks must name recall, needle or text, got {sorted(bad)}")
    if args.eval_batches < 1 or args.workers_on_device < 1:
        raise ValueError("--eval-batches and --workers-on-device must be >= 1")
    cfgs = [c for c in get_experiment(args.experiment, args.size)
            if (seeds is None or c.seed in seeds) and (tasks is None or design_of(c)["task"] in tasks)]
    if not cfgs:
        raise ValueError("no run matches --seeds / --tasks")
    return cfgs


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa long-context``: train and evaluate the chosen runs of a long-context experiment."""
    from dsa import cli  # noqa: PLC0415

    p = build_parser(prog)
    args = cli.parse_args(p, argv)
    with cli.usage_errors(p):
        cfgs = _selected(args)
    if args.list:
        print("\n".join(c.run_name() for c in order_arms(cfgs)))
        return 0
    run_arms(cfgs, args.out, args.ckpt_dir, n_eval_batches=args.eval_batches, device=args.device,
             extra={"timing": {"workers_on_device": args.workers_on_device}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
