"""The study's experiments as lists of TrainConfig, at two sizes: ``small`` (CPU, seconds) and ``full`` (GPU).

Every experiment compares runs that differ only in what is under test: same seeds, same data order
(data_seed = 0 for all), same architecture except the attention.

Each configuration records its design factors as it is created, in ``TrainConfig.design`` (``dsa.train.design``
says which; kept out of the sweep key: the key says what was trained, the design says why), so the tables read
them back instead of decoding them from k and L. Records written before the field existed get theirs from
``dsa.study.legacy`` when they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dsa.checks import check_int
from dsa.train.design import SPARSITY_RATIOS, arm_label, k_rule_text
from dsa.train.long_context import with_design
from dsa.train.trainer import TrainConfig

SIZES = ("small", "full")

# Model and optimisation shared by every run of a size. "full" follows the seeds' exp4 scale
# (d_model 256, 1000 steps); "small" is the same design shrunk to run on 2 CPU cores.
# Plain dicts, not TrainConfig: a TrainConfig resolves its recipe defaults (dense_steps, warmup_steps,
# indexer_kl) from its own attention/steps at construction, so each run is built from scratch in _base.
_BASE = {
    "small": dict(d_model=64, n_layers=2, n_heads=4, indexer_heads=2, indexer_dim=16, indexer_rope_dim=8,
                  batch_size=8, steps=40, eval_every=20, eval_batches=2, lr=3e-3, lr_warmup_steps=5,
                  vocab_size=2048, out="", progress=False),
    "full": dict(d_model=256, n_layers=4, n_heads=8, indexer_heads=4, indexer_dim=64, indexer_rope_dim=32,
                 batch_size=16, steps=1000, eval_every=100, eval_batches=8, lr=3e-3, lr_warmup_steps=50,
                 vocab_size=2048, out="", progress=False),
}
_SEEDS = {"small": (0, 1), "full": (0, 1, 2)}


def _base(size: str, experiment: str, ratio: float | None = None, **kw: Any) -> TrainConfig:
    """A run of ``experiment`` at ``size``: the size's shared settings, ``kw``, and the design factors (the
    arm, and for DSA the designed k/L ``ratio`` that sets k = max(1, round(ratio * L)) unless kw gives top_k)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if ratio is not None and "top_k" not in kw:
        kw["top_k"] = max(1, round(ratio * kw["seq_len"]))
    cfg = TrainConfig(**{**_BASE[size], **kw})
    design: dict[str, Any] = {"experiment": experiment,
                              "arm": arm_label(cfg.attention, cfg.recipe, cfg.leak_future, cfg.k_policy)}
    if cfg.attention == "dsa" and ratio is not None:
        design.update(ratio=float(ratio), k_rule=k_rule_text(ratio))
    return replace(cfg, design=design)


def _ablation(cfg: TrainConfig, ablation: str, level: int) -> TrainConfig:
    return replace(cfg, design={**cfg.design, "ablation": ablation, "level": int(level)})


def _variants_exp4(size: str, seq_lens: tuple[int, ...], leaky: bool) -> list[TrainConfig]:
    out = []
    exp = "exp4_reproduce" if leaky else "exp4_long"
    for l in seq_lens:
        k = l // 2  # the seeds' exp4: 50% of the tokens
        for seed in _SEEDS[size]:
            out.append(_base(size, exp, attention="dense", seq_len=l, top_k=k, seed=seed))
            if leaky:
                out.append(_base(size, exp, 0.5, attention="dsa", recipe="scratch", leak_future=True, seq_len=l,
                                 top_k=k, seed=seed))
                out.append(_base(size, exp, 0.5, attention="dsa", recipe="scratch", seq_len=l, top_k=k, seed=seed))
            out.append(_base(size, exp, 0.5, attention="dsa", recipe="deepseek", seq_len=l, top_k=k, seed=seed))
    return out


def exp4_reproduce(size: str) -> list[TrainConfig]:
    """Seeds' exp4: dense vs the seeds' leaky sparse vs causal sparse-from-scratch vs causal DSA (DeepSeek
    recipe), L = 64, 128, 256, k = L/2."""
    return _variants_exp4(size, (64, 128, 256), leaky=True)


def exp4_long(size: str) -> list[TrainConfig]:
    """Causal DSA vs dense at longer L (k = L/2 as in exp4, and k = L/8 where attention is really sparse)."""
    lens = (512, 1024) if size == "small" else (512, 1024, 2048, 4096)
    out = []
    for l in lens:
        for seed in _SEEDS[size][:2] if size == "small" else _SEEDS[size]:
            kw = dict(seq_len=l, seed=seed, steps=20 if size == "small" else 1000,
                      batch_size=2 if size == "small" else max(1, 16 * 256 // l))
            out.append(_base(size, "exp4_long", attention="dense", top_k=l // 8, **kw))
            out.append(_base(size, "exp4_long", 0.5, attention="dsa", top_k=l // 2, **kw))
            out.append(_base(size, "exp4_long", 0.125, attention="dsa", top_k=l // 8, **kw))
    return out


def exp5_sparsity(size: str) -> list[TrainConfig]:
    """Seeds' exp5: k/L ratio x L x seeds, causal DSA (DeepSeek recipe); dense at each L as the reference."""
    lens = (64, 128) if size == "small" else (64, 128, 256, 512, 1024)
    seeds = (0, 1, 2)
    out = []
    for l in lens:
        kw = dict(seq_len=l, steps=30 if size == "small" else 500,
                  batch_size=_BASE[size]["batch_size"] if size == "small" else max(4, 16 * 256 // l))
        for seed in seeds:
            out.append(_base(size, "exp5_sparsity", attention="dense", top_k=l // 2, seed=seed, **kw))
            for r in SPARSITY_RATIOS:
                out.append(_base(size, "exp5_sparsity", r, attention="dsa", top_k=max(1, round(r * l)), seed=seed,
                                 **kw))
    return out


def exp3_adaptive(size: str) -> list[TrainConfig]:
    """Seeds' exp3: adaptive per-query k (indexer-mass and entropy rules) vs dense and fixed 25/50/75%."""
    l = 128 if size == "small" else 512
    out = []
    for seed in _SEEDS[size]:
        kw = dict(seq_len=l, seed=seed)
        out.append(_base(size, "exp3_adaptive", attention="dense", top_k=l // 2, **kw))
        for r in (0.25, 0.5, 0.75):
            out.append(_base(size, "exp3_adaptive", r, attention="dsa", top_k=int(r * l), **kw))
        for mass in (0.8, 0.95):  # an adaptive rule's ratio is its cap
            out.append(_base(size, "exp3_adaptive", 0.75, attention="dsa", top_k=int(0.75 * l), k_policy="mass",
                             k_mass=mass, **kw))
        out.append(_base(size, "exp3_adaptive", 0.75, attention="dsa", top_k=int(0.75 * l), k_policy="entropy",
                         **kw))
    return out


def ablation_indexer_heads(size: str) -> list[TrainConfig]:
    l = 128 if size == "small" else 512
    heads = (1, 2, 4) if size == "small" else (1, 2, 4, 8, 16)
    return [_ablation(_base(size, "ablation_indexer_heads", 0.25, attention="dsa", seq_len=l, top_k=l // 4,
                            indexer_heads=h, seed=s), "heads", h)
            for h in heads for s in _SEEDS[size]]


def ablation_warmup(size: str) -> list[TrainConfig]:
    l = 128 if size == "small" else 512
    lengths = (0, 5, 10) if size == "small" else (0, 100, 200, 500)
    return [_ablation(_base(size, "ablation_warmup", 0.25, attention="dsa", seq_len=l, top_k=l // 4, warmup_steps=w,
                            seed=s), "warmup", w)
            for w in lengths for s in _SEEDS[size]]


def ablation_kl(size: str) -> list[TrainConfig]:
    """Indexer trained by its KL loss vs not trained at all (what the seeds' setup amounts to)."""
    l = 128 if size == "small" else 512
    out = []
    for s in _SEEDS[size]:
        out.append(_ablation(_base(size, "ablation_kl", 0.25, attention="dsa", seq_len=l, top_k=l // 4, seed=s),
                             "kl", 1))
        out.append(_ablation(_base(size, "ablation_kl", 0.25, attention="dsa", seq_len=l, top_k=l // 4, seed=s,
                                   warmup_steps=0, indexer_kl=False), "kl", 0))
    return out


# ------------------------------------------------------------------------- long context (issue 17)
# The MQA layout (one K/V head shared by every query head: where DSA's selection can pay, see
# ../shared/notes/where_dsa_pays.md), a small indexer (4 x 64 at full size), 64K tokens per step at full size.
_LC_BASE = {
    "small": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, indexer_heads=2, indexer_dim=16,
                  indexer_rope_dim=8, batch_size=4, steps=30, eval_every=30, eval_batches=2, lr=3e-3,
                  lr_warmup_steps=5, out="", progress=False),
    "full": dict(d_model=256, n_layers=2, n_heads=8, n_kv_heads=1, indexer_heads=4, indexer_dim=64,
                 indexer_rope_dim=32, batch_size=8, steps=2000, eval_every=250, eval_batches=4, lr=3e-3,
                 lr_warmup_steps=100, out="", progress=False),
}
_LC_SEEDS = {"small": (0, 1), "full": (0, 1, 2, 3, 4)}  # >= 5 seeds per arm at full size (issue 17)
_LC_TOKENS_PER_STEP = {"small": 512, "full": 65536}
LC_TASK_VOCAB = 512  # synthetic tasks: 127 keys, 127 values (chance = 1/127), the rest noise
LC_TASKS = ("recall", "needle", "text")


def needle_distances(seq_len: int, top_k: int) -> tuple[int, ...]:
    """Needle distances from k/4 to far beyond k: k/4, k/2, k, 2k, 4k, 16k and L/2, those below L."""
    ds = {max(1, top_k // 4), max(1, top_k // 2), top_k, 2 * top_k, 4 * top_k, 16 * top_k, seq_len // 2}
    return tuple(sorted(d for d in ds if 1 <= d < seq_len - 1))


def _lc_task(task: str, seq_len: int, top_k: int) -> tuple[dict, dict]:
    """(TrainConfig fields, design factors) of a long-context task."""
    if task == "text":
        return dict(vocab_size=2048), {"task": "text"}
    n_pairs = min(32, (seq_len - 2) // 4)
    design = {"task": task, "n_pairs": n_pairs, "n_queries": n_pairs}
    if task == "needle":
        design = {"task": task, "distances": list(needle_distances(seq_len, top_k))}
    return dict(vocab_size=LC_TASK_VOCAB), design  # TrainConfig.data (a corpus) is unused by a synthetic task


def _lc(size: str, experiment: str, arm: str, task: str, seq_len: int, top_k: int, seed: int,
        replicate: int = 0, design: dict | None = None, **kw) -> TrainConfig:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    task_kw, task_design = _lc_task(task, seq_len, top_k)
    kw.setdefault("batch_size", max(1, _LC_TOKENS_PER_STEP[size] // seq_len))
    base = dict(_LC_BASE[size])
    name = f"{experiment}-{task}-{arm}-L{seq_len}-k{top_k}-s{seed}" + (f"-r{replicate}" if replicate else "")
    cfg = TrainConfig(**{**base, **task_kw, **kw}, seq_len=seq_len, top_k=top_k, seed=seed, name=name)
    return with_design(cfg, {"experiment": experiment, "arm": arm, **task_design, "layout": "MQA",
                             "seq_len": seq_len, "top_k": top_k, "k_over_L": top_k / seq_len,
                             "replicate": replicate, **(design or {})})


def long_context_sparse(size: str) -> list[TrainConfig]:
    """Dense vs DSA (DeepSeek recipe inside one run) at long L, k from L/4 down to L/64, on the recall and
    needle tasks and on text; MQA. Full: L = 8K, 16K, 32K, 64K, 5 seeds. Small: L = 128, 256, k = L/4, L/16."""
    lens = (128, 256) if size == "small" else (8192, 16384, 32768, 65536)
    divs = (4, 16) if size == "small" else (4, 16, 64)
    out = []
    for task in LC_TASKS:
        for l in lens:
            for seed in _LC_SEEDS[size]:
                out.append(_lc(size, "lc_sparse", "dense", task, l, l // 16, seed, attention="dense"))
                for dv in divs:
                    out.append(_lc(size, "lc_sparse", "dsa", task, l, l // dv, seed, attention="dsa"))
    return out


# (dense checkpoint steps N0, continued steps N, indexer warm-up steps) per size
LC_RECIPE_STEPS = {"small": (20, 10, 5), "full": (1000, 500, 100)}


def recipe_arms(size: str, task: str, seq_len: int, top_k: int, seed: int, replicates: int = 1,
                steps: tuple[int, int, int] | None = None, experiment: str = "lc_recipe",
                batch_size: int | None = None) -> list[TrainConfig]:
    """DeepSeek's recipe with its control, one seed: ``dense_base`` (dense, global LM steps [0, N0),
    checkpointed), then from it (a) ``dense_continued`` (steps [N0, N0 + N)) and (b) ``dsa_from_dense``
    (indexer warm-up with the model frozen, then sparse steps [N0, N0 + N)), and (c) ``dsa_scratch`` (sparse
    with the indexer KL from step 0, steps [0, N0 + N)).

    What the arms share, so that they differ only in attention and in the indexer's own training: one LR
    schedule of N0 + N global steps (the base is given the whole length and stops at N0; the continued arms
    start at ``start_step`` N0 and keep the base's AdamW state), one batch stream read by global step (base
    and continued arms together read batches 0 .. N0 + N - 1, as the scratch arm does: the same LM tokens in
    the same order). Beyond them, (b)'s indexer alone sees W warm-up batches of the separate warm-up stream
    (not LM steps, the model frozen): DeepSeek's recipe. Base + (b) trains exactly as one DSA run of the
    deepseek recipe would (dense N0, warm-up W, sparse N), split at its checkpoint. ``replicates`` > 1 adds
    identical re-runs of (a) and (b) (design 'replicate' 1, 2, ...) for the noise floor."""
    n0, n, w = steps or LC_RECIPE_STEPS[size]
    common = dict(size=size, experiment=experiment, task=task, seq_len=seq_len, top_k=top_k, seed=seed,
                  schedule_steps=n0 + n)
    if batch_size is not None:
        common["batch_size"] = batch_size
    base = _lc(arm="dense_base", attention="dense", steps=n0, design={"save_checkpoint": True}, **common)
    src = {"init_from_arm": base.run_name()}
    out = [base]
    for rep in range(replicates):
        out.append(_lc(arm="dense_continued", attention="dense", start_step=n0, steps=n, replicate=rep, design=src,
                       **common))
        out.append(_lc(arm="dsa_from_dense", attention="dsa", recipe="deepseek", dense_steps=0, warmup_steps=w,
                       start_step=n0, steps=n, replicate=rep, design=src, **common))
    out.append(_lc(arm="dsa_scratch", attention="dsa", recipe="scratch", indexer_kl=True, steps=n0 + n, **common))
    return out


def long_context_recipe(size: str) -> list[TrainConfig]:
    """:func:`recipe_arms` on the recall task and text, MQA, k = L/16; full: L = 8K, k = 512, 5 seeds, seed 0
    re-run twice more for the noise floor; small: L = 128, k = 8, 2 seeds."""
    l = 128 if size == "small" else 8192
    out = []
    for task in ("recall", "text"):
        for seed in _LC_SEEDS[size]:
            out += recipe_arms(size, task, l, l // 16, seed, replicates=3 if seed == 0 else 1)
    return out


# The GPU pilot (scripts/gpu/gpu_long_context.sh, one H200, <= 8 minutes): L = 8K, k = 512 (1/16), MQA, the
# recipe's arms on recall and text, 5 seeds, seed 0's continued arms re-run twice (noise floor); 32K tokens per
# step (4 sequences of 8K) to fit the time.
LC_PILOT_STEPS = {"small": (4, 2, 1), "full": (200, 100, 20)}
LC_PILOT_BATCH = {"small": 2, "full": 4}


def long_context_pilot(size: str) -> list[TrainConfig]:
    """:func:`recipe_arms` at L = 8K, k = 512 (small: L = 128, k = 8) with the pilot's short schedule."""
    l = 128 if size == "small" else 8192
    out = []
    for seed in _LC_SEEDS["full"] if size == "full" else _LC_SEEDS["small"]:
        for task in ("recall", "text"):
            out += recipe_arms(size, task, l, l // 16, seed, replicates=3 if seed == 0 else 1,
                               steps=LC_PILOT_STEPS[size], experiment="lc_pilot", batch_size=LC_PILOT_BATCH[size])
    return out


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def shortened(configs: Sequence[TrainConfig], steps: int) -> list[TrainConfig]:
    """The configs scaled to LR schedules of ``steps`` global LM steps (quick runs: notebooks, CPU checks).

    Each run's start, end and LR warm-up scale by ``steps`` / its schedule length, rounded: runs of one
    schedule (the recipe's arms) still meet where one continues another and share one LR curve. A DSA run's
    dense and indexer warm-up phases keep their shares of its steps (at least one warm-up step if it had
    any); each run evaluates at its end. ValueError when a run would be left without a step."""
    check_int("steps", steps, 1)
    out = []
    for c in configs:
        length = c.schedule_length()
        # half-up, not Python's half-to-even: a run of >= length / steps steps then keeps at least one
        start, end = _half_up(c.start_step * steps / length), _half_up((c.start_step + c.steps) * steps / length)
        if end <= start:
            raise ValueError(f"steps ({steps}) leaves {c.run_name()} without a step (it runs {c.steps} of "
                             f"{length}); give at least {math.ceil(length / c.steps)}")
        n = end - start
        warm = min(c.warmup_steps, max(1, c.warmup_steps * n // c.steps)) if c.warmup_steps else 0
        out.append(replace(c, start_step=start, steps=n, dense_steps=c.dense_steps * n // c.steps,
                           warmup_steps=warm, schedule_steps=None if c.schedule_steps is None else steps,
                           lr_warmup_steps=_half_up(c.lr_warmup_steps * steps / length), eval_every=n))
    return out


EXPERIMENTS: dict[str, Callable[[str], list[TrainConfig]]] = {
    "exp4_reproduce": exp4_reproduce,
    "exp4_long": exp4_long,
    "exp5_sparsity": exp5_sparsity,
    "exp3_adaptive": exp3_adaptive,
    "ablation_indexer_heads": ablation_indexer_heads,
    "ablation_warmup": ablation_warmup,
    "ablation_kl": ablation_kl,
}
# Run by dsa.train.long_context (python -m dsa long-context), not by the sweep: their task and starting point
# live in the design (synthetic data, init_from), which a sweep's configuration key does not see.
LONG_CONTEXT_EXPERIMENTS: dict[str, Callable[[str], list[TrainConfig]]] = {
    "long_context_sparse": long_context_sparse,
    "long_context_recipe": long_context_recipe,
    "long_context_pilot": long_context_pilot,
}


def get_experiment(name: str, size: str = "small") -> list[TrainConfig]:
    """The configurations of experiment ``name`` at ``size`` ('small' for CPU, 'full' for GPU)."""
    known = {**EXPERIMENTS, **LONG_CONTEXT_EXPERIMENTS}
    if name not in known:
        raise ValueError(f"experiment must be one of {sorted(known)}, got {name!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return known[name](size)
