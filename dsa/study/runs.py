"""Training-run records for the notebooks: a fresh sweep of (a subset of) one of the study's experiments,
recorded GPU runs read from ``data/``, and tidy frames with a ``source`` column saying which is which.

Typical use in a notebook::

    fresh = fresh_sweep("exp4_reproduce", "small", notebook="02_sparse_vs_dense", seq_lens=[64], steps=150)
    recorded = recorded_runs("gpu/exp4_reproduce.jsonl")              # [] when the file does not exist
    df = pd.concat([runs_table(fresh, "fresh CPU"), runs_table(recorded, "H100 exp4")])
    curves = curves_table(fresh, "fresh CPU")                          # one row per evaluation

A fresh sweep writes its records under ``runs/notebooks/<notebook>/`` (git-ignored). By default the file is
emptied first, so every number comes from this execution; ``reuse=True`` resumes instead (dsa.train.sweep re-uses
every finished configuration and says so).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from dsa.provenance import REPO_ROOT

from .legacy import run_design, with_design
from .notebook_params import Rule, between, one_of, satisfies
from .stats import history_frame, runs_frame


# ------------------------------------------------------------------------------------------ parsing
def parse_list(text: str, kind: Callable[[str], Any] = int) -> list | None:
    """'64, 128' -> [64, 128] (converted by ``kind``); '' or whitespace -> None (meaning: no filter).
    Raises ValueError naming the bad item."""
    if not text or not text.strip():
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            out.append(kind(item))
        except ValueError as e:
            raise ValueError(f"{item!r} is not a valid {kind.__name__}") from e
    return out


def valid_list(text: str, kind: Callable[[str], Any] = int, allowed: Iterable | None = None,
               minimum: float | None = None) -> bool:
    """True when ``text`` parses with :func:`parse_list` (empty allowed), every item is in ``allowed`` (if
    given) and >= ``minimum`` (if given); for notebook parameter rules."""
    try:
        items = parse_list(text, kind)
    except ValueError:
        return False
    if items is None:
        return True
    if allowed is not None:
        allowed = list(allowed)
        if any(not any(abs(i - a) < 1e-9 for a in allowed) for i in items):
            return False
    return minimum is None or all(i >= minimum for i in items)


# --------------------------------------------------------------------------- notebook parameters
def fresh_run_rules(
    experiment: str,
    *,
    filters: Mapping[str, Rule] | None = None,
    extra: Mapping[str, Rule] | None = None,
    time_budget: bool = True,
) -> dict[str, Rule]:
    """The ``dsa.study.notebook_params.check_params`` rules of a notebook that trains fresh runs of ``experiment``
    and reads recorded ones, in the order they are checked:

    ``device`` (cpu, cuda or auto), ``fresh_size`` (small or full), then ``filters`` (rules on the notebook's
    own ``fresh_*`` filters), ``fresh_seeds`` (a comma-separated subset of the experiment's seeds at
    ``fresh_size``; a ``fresh_seeds`` rule in ``filters`` replaces it), ``fresh_steps`` >= 0,
    ``fresh_time_budget_s`` >= 0 (only with ``time_budget``), then ``extra`` (the notebook's other rules), and
    last ``confidence`` in [0.5, 1). ``fresh_size`` comes before every rule that reads it."""
    rules: dict[str, Rule] = {"device": one_of("cpu", "cuda", "auto"), "fresh_size": one_of("small", "full")}
    rules.update(filters or {})
    rules.setdefault("fresh_seeds", satisfies(
        lambda v, p: valid_list(v, int, experiment_levels(experiment, p["fresh_size"])["seeds"]),
        "must be a comma-separated subset of the experiment size's seeds (small: 0,1; full: 0,1,2)"))
    rules["fresh_steps"] = between(0, None)
    if time_budget:
        rules["fresh_time_budget_s"] = between(0, None)
    rules.update(extra or {})
    rules["confidence"] = satisfies(lambda v, p: 0.5 <= v < 1, "must be in [0.5, 1)")
    return rules


# ------------------------------------------------------------------------------------- fresh runs
@contextlib.contextmanager
def gc_frozen():
    """Move every object that exists now to the collector's permanent generation for the duration.

    ``dsa.train.trainer`` calls ``gc.collect()`` at each phase change (``dsa.train.distributed.release_wrappers``); in a
    notebook kernel holding pandas, plotly and matplotlib each call rescans that whole heap, which costs a
    good part of a small CPU run. Objects created inside the block are still collected."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def runs_dir(notebook: str) -> Path:
    """``$DSA_RUNS_DIR/<notebook>`` or ``<repo>/runs/notebooks/<notebook>`` (git-ignored)."""
    base = os.environ.get("DSA_RUNS_DIR")
    return (Path(base) if base else REPO_ROOT / "runs" / "notebooks") / notebook


def config_ratio(cfg: Any) -> float:
    """The designed k/L of a DSA configuration (a TrainConfig or a record's config dict; its design factors,
    ``dsa.study.legacy.run_design``); 1.0 for dense."""
    c = cfg if isinstance(cfg, dict) else asdict(cfg)
    if c.get("attention") == "dense":
        return 1.0
    return float(run_design(c)["ratio"])


def experiment_levels(experiment: str, size: str) -> dict[str, list]:
    """The sequence lengths, seeds, steps and (DSA) k/L ratios an experiment's configurations use at
    ``size``: {'seq_lens': [...], 'seeds': [...], 'ratios': [...], 'steps': [...]} (sorted, distinct).
    For parameter checks: a filter outside these levels would select nothing."""
    from dsa.train.experiments import get_experiment  # noqa: PLC0415

    cs = get_experiment(experiment, size)
    return {"seq_lens": sorted({c.seq_len for c in cs}), "seeds": sorted({c.seed for c in cs}),
            "ratios": sorted({config_ratio(c) for c in cs if c.attention == "dsa"}),
            "steps": sorted({c.steps for c in cs})}


def select_configs(
    configs: Sequence[Any],
    *,
    seq_lens: Iterable[int] | None = None,
    seeds: Iterable[int] | None = None,
    ratios: Iterable[float] | None = None,
    keep_dense: bool = True,
    steps: int | None = None,
    where: Callable[[Any], bool] | None = None,
) -> list:
    """The configurations of an experiment restricted to the given sequence lengths, seeds and (DSA only)
    designed k/L ratios (:func:`config_ratio`); ``keep_dense`` keeps dense runs whatever the
    ratio filter; ``steps`` (if given) re-derives each configuration for that many LM steps
    (``dsa.train.sweep.with_steps``); ``where`` is a further predicate. None means no filter."""
    from dsa.train.sweep import with_steps  # noqa: PLC0415 (imports the trainer)

    lens = None if seq_lens is None else set(seq_lens)
    sds = None if seeds is None else set(seeds)
    rts = None if ratios is None else [float(r) for r in ratios]
    out = []
    for c in configs:
        if lens is not None and c.seq_len not in lens:
            continue
        if sds is not None and c.seed not in sds:
            continue
        if rts is not None and not (keep_dense and c.attention == "dense"):
            r = config_ratio(c)
            if not any(abs(r - x) < 1e-9 for x in rts):
                continue
        if where is not None and not where(c):
            continue
        out.append(with_steps(c, steps) if steps else c)
    return out


def fresh_sweep(
    experiment: str,
    size: str = "small",
    *,
    notebook: str,
    device: str | None = None,
    reuse: bool = False,
    time_budget_s: float | None = None,
    progress: bool = False,
    **select: Any,
) -> list[dict]:
    """Run (a subset of) ``experiment`` at ``size`` through ``dsa.train.sweep.run_sweep`` into
    ``runs_dir(notebook)/<experiment>-<size>.jsonl`` and return its records.

    select: keyword filters of :func:`select_configs` (seq_lens, seeds, ratios, keep_dense,
    steps, where). reuse False (default) empties the results file first, so every record is from this call.
    device: 'cpu', 'cuda', ... (None: each configuration's own, 'auto').
    """
    from dsa.train.experiments import get_experiment  # noqa: PLC0415
    from dsa.train.sweep import run_sweep  # noqa: PLC0415

    configs = select_configs(get_experiment(experiment, size), **select)
    if not configs:
        raise ValueError(f"no configuration of {experiment} ({size}) matches the filters {select}")
    out = runs_dir(notebook) / f"{experiment}-{size}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not reuse:
        _empty_results(out)
    devices = [device] if device and device != "auto" else None
    with gc_frozen():
        return run_sweep(configs, out, devices, progress=progress, time_budget_s=time_budget_s)


def _empty_results(out: Path) -> None:
    """Remove the results file ``out`` with its shards and recorded failures (reuse=False: every run is
    trained now, and a configuration that failed before is tried again)."""
    from dsa.records import result_files  # noqa: PLC0415
    from dsa.train.sweep import failures_path  # noqa: PLC0415

    old = result_files(out) + result_files(failures_path(out))
    for p in old:
        p.unlink()
    if old:
        print(f"[runs] {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}: emptied "
              "(reuse=False): every run below is trained now")


def train_keeping_models(configs: Sequence[Any], device: str | None = None, progress: bool = False) -> list[dict]:
    """Train each configuration in this process (``dsa.train.trainer.train``, no JSON written) and return the
    records *with* their trained model under ``'model'`` (a sweep drops it). For analyses that need the
    model itself, e.g. the per-query k an adaptive policy chooses. progress: a tqdm bar over the runs."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from dsa.train.trainer import train  # noqa: PLC0415

    out = []
    with gc_frozen():
        for c in tqdm(configs, desc="training", unit="run", disable=not progress):
            kw = {"out": "", "progress": False}
            if device and device != "auto":
                kw["device"] = device
            out.append(train(replace(c, **kw)))
    return out


def validation_batches(cfg: Any, n_batches: int | None = None) -> list:
    """The fixed validation batches a run of ``cfg`` (a TrainConfig) is evaluated on: (x, y) pairs of
    (batch_size, seq_len) tokens from the corpus's validation split (``n_batches`` default: the config's)."""
    from dsa.text.batches import eval_batches  # noqa: PLC0415
    from dsa.text.corpus import load_corpus  # noqa: PLC0415

    corpus = load_corpus(cfg.data, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size)
    return eval_batches(corpus.val, cfg.seq_len, cfg.batch_size, n_batches or cfg.eval_batches)


# --------------------------------------------------------------------------------- recorded runs
def recorded_runs(pattern: str, *, root: str | Path | None = None) -> list[dict]:
    """Recorded run records under ``data/`` (or ``root``) matching the glob ``pattern``: JSON-lines files
    (one run per line, ``dsa.train.sweep``) and single-run JSON files (``dsa.train.trainer --out``) alike, each
    with its design factors (``config['design']``; ``dsa.study.legacy.with_design`` for older records). [] if none."""
    from dsa.records import load_jsonl_records, load_records  # noqa: PLC0415

    # the one place where records written before TrainConfig.design get their design factors
    return [with_design(r) for r in load_jsonl_records(pattern, root=root) + load_records(pattern, root=root)]


def _steps_text(records: Iterable[dict]) -> str:
    """'150' or '300/1000': the distinct LM step counts of the records, sorted."""
    return "/".join(str(s) for s in sorted({r["config"]["steps"] for r in records}))


def fresh_source_label(records: Iterable[dict], device_type: str, size: str) -> str:
    """'fresh run (cpu, small size, 150 steps)': the ``source`` label of runs trained in the notebook."""
    return f"fresh run ({device_type}, {size} size, {_steps_text(records)} steps)"


def recorded_source_label(records: Iterable[dict], what: str, device: str | None = None) -> str:
    """'recorded exp5 sweep (1000 steps)', or with ``device`` 'recorded exp4 sweep (H100, 1000 steps)': the
    ``source`` label of recorded runs."""
    return f"recorded {what} ({device + ', ' if device is not None else ''}{_steps_text(records)} steps)"


def run_sources(
    fresh: Sequence[dict] | None,
    recorded: Sequence[dict],
    *,
    device_type: str,
    size: str,
    fresh_provenance: str,
    recorded_what: str,
) -> list[tuple[str, Sequence[dict], str]]:
    """The sources a notebook shows side by side, fresh first: ``(label, records, provenance text)`` each.

    fresh: the runs trained in the notebook, or None when it trained none (an empty list still makes a
    source); labelled by :func:`fresh_source_label` (``device_type``, ``size``), described by
    ``fresh_provenance`` (``dsa.records.fresh_run_label``). recorded: runs read from ``data/``, a source only
    when there are some; labelled by :func:`recorded_source_label` (``recorded_what``), described by
    ``dsa.records.summarize_provenance``. The record lists are the objects given, not copies."""
    from dsa.records import summarize_provenance  # noqa: PLC0415

    sources: list[tuple[str, Sequence[dict], str]] = []
    if fresh is not None:
        sources.append((fresh_source_label(fresh, device_type, size), fresh, fresh_provenance))
    if recorded:
        sources.append((recorded_source_label(recorded, recorded_what), recorded,
                        summarize_provenance(r["provenance"] for r in recorded)))
    return sources


def coverage(records: Sequence[dict], experiment: str, size: str = "full") -> dict:
    """How much of an experiment a set of recorded runs covers, matched by ``dsa.train.sweep.config_key`` (the
    key a sweep stores with each record): {'expected', 'found', 'missing_seq_lens' (L with a missing
    configuration), 'text'} — e.g. '16 of 105 configurations of exp5_sparsity (full) recorded; incomplete
    at L = 64, 128, 256, 512, 1024'."""
    from dsa.train.experiments import get_experiment  # noqa: PLC0415
    from dsa.train.sweep import config_key  # noqa: PLC0415

    configs = get_experiment(experiment, size)
    have = {r.get("key") for r in records}
    missing = [c for c in configs if config_key(c) not in have]
    found = len(configs) - len(missing)
    lens = sorted({c.seq_len for c in missing})
    text = f"{found} of {len(configs)} configurations of {experiment} ({size}) recorded"
    if lens:
        text += f"; incomplete at L = {', '.join(map(str, lens))}"
    return {"expected": len(configs), "found": found, "missing_seq_lens": lens, "text": text}


# ----------------------------------------------------------------------------------------- frames
def arm_label(cfg: dict) -> str:
    """What distinguishes a run inside one experiment: 'dense', 'fixed k=25%', 'mass 0.8 (k≤96)',
    'entropy (k≤96)', with '(leaky)' for the seeds' variant and the recipe for causal ones."""
    if cfg.get("attention", "dense") == "dense":
        return "dense"
    pol = cfg.get("k_policy", "fixed")
    if pol == "fixed":
        return f"fixed k={config_ratio(cfg):.0%}"
    if pol == "mass":
        return f"mass {cfg.get('k_mass', 0.9):g} (k≤{cfg['top_k']})"
    return f"{pol} (k≤{cfg['top_k']})"


def runs_table(records: Iterable[dict], source: str) -> pd.DataFrame:
    """``dsa.study.stats.runs_frame`` plus ``source`` (the label given), ``arm`` (:func:`arm_label`),
    ``sparse_time_per_step_s`` (the sparse phase's steady time per step for DSA, the whole run's for dense:
    the deepseek recipe's overall figure mixes in its dense phase), ``wall_time_s`` and ``gpu_shared_by``
    (training processes that time-shared the run's GPU, from the record's ``timing``; NaN where unknown)."""
    records = list(records)
    df = runs_frame(records)
    df.insert(0, "source", source)
    df["arm"] = [arm_label(r.get("config") or {}) for r in records]
    sparse_t, wall, shared = [], [], []
    for r in records:
        shared.append((r.get("timing") or {}).get("workers_on_device"))
        fin = r.get("final") or {}
        by_phase = fin.get("time_per_step_by_phase_s") or {}
        sparse_t.append(by_phase.get("sparse") if (r.get("config") or {}).get("attention") == "dsa"
                        else fin.get("time_per_step_s"))
        wall.append(r.get("wall_time_s"))
    df["sparse_time_per_step_s"] = pd.to_numeric(pd.Series(sparse_t, index=df.index), errors="coerce")
    df["wall_time_s"] = pd.to_numeric(pd.Series(wall, index=df.index), errors="coerce")
    df["gpu_shared_by"] = pd.to_numeric(pd.Series(shared, index=df.index), errors="coerce")
    return df


def curves_table(records: Iterable[dict], source: str) -> pd.DataFrame:
    """``dsa.study.stats.history_frame`` (one row per evaluation) plus ``source`` and ``arm``."""
    records = list(records)
    parts = []
    for r in records:
        h = history_frame([r])
        if h.empty:
            continue
        h["arm"] = arm_label(r.get("config") or {})
        parts.append(h)
    if not parts:
        return pd.DataFrame(columns=["source", "arm", "lm_step", "val_loss"])
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "source", source)
    return out


# ------------------------------------------------------------------------------------- ablations
# The three ablations of DSA's indexer (dsa.train.experiments): which configuration field each one varies.
ABLATIONS: dict[str, dict[str, str]] = {
    "kl": {"experiment": "ablation_kl", "factor": "indexer_kl", "title": "indexer KL loss on / off"},
    "warmup": {"experiment": "ablation_warmup", "factor": "warmup_steps", "title": "dense warm-up length"},
    "heads": {"experiment": "ablation_indexer_heads", "factor": "indexer_heads", "title": "number of indexer heads"},
}


def _ablation(ablation: str) -> dict[str, str]:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {sorted(ABLATIONS)}, got {ablation!r}")
    return ABLATIONS[ablation]


def ablation_level(cfg: Any, ablation: str) -> int:
    """The level of ``ablation`` a configuration (dict or TrainConfig) stands at: KL 1 (on) / 0 (off), warm-up
    steps, indexer heads. Its design's ``level`` when the run was designed for this ablation; else (a run of
    another experiment that shares the configuration, :func:`share_records`, or one recorded without a design)
    the ablated field itself."""
    c = cfg if isinstance(cfg, dict) else asdict(cfg)
    design = c.get("design") or {}
    if design.get("ablation") == ablation:
        return int(design["level"])
    v = c.get(_ablation(ablation)["factor"])
    return int(bool(v)) if ablation == "kl" else int(v)


def ablation_arm(cfg: Any, ablation: str) -> str:
    """'KL on (warm-up 100)', 'KL off (indexer untrained)', 'warm-up 200', '4 heads'."""
    lv = ablation_level(cfg, ablation)
    if ablation == "kl":
        w = cfg.get("warmup_steps") if isinstance(cfg, dict) else cfg.warmup_steps
        return f"KL on (warm-up {w})" if lv else "KL off (indexer untrained)"
    if ablation == "warmup":
        return f"warm-up {lv}"
    return f"{lv} head" + ("" if lv == 1 else "s")


def ablation_table(records: Iterable[dict], source: str, ablation: str) -> pd.DataFrame:
    """:func:`runs_table` plus what an ablation needs: ``level`` (the ablated value, :func:`ablation_level`;
    the table is sorted by it, then seed), ``arm`` (:func:`ablation_arm`), the recipe fields
    ``indexer_kl``, ``warmup_steps``, ``dense_steps``, ``indexer_heads`` and ``origin`` (the file a recorded
    run was read from, with '(shared)' when it was borrowed by :func:`share_records`; '' for a fresh run)."""
    records = list(records)
    df = runs_table(records, source)
    cfgs = [r.get("config") or {} for r in records]
    for col in ("indexer_kl", "warmup_steps", "dense_steps", "indexer_heads"):
        df[col] = [c.get(col) for c in cfgs]
    df["level"] = [ablation_level(c, ablation) for c in cfgs]
    df["arm"] = [ablation_arm(c, ablation) for c in cfgs]
    df["origin"] = [Path(r["_path"]).name + (" (shared)" if r.get("_shared") else "") if r.get("_path") else ""
                    for r in records]
    return df.sort_values(["level", "seed"], kind="stable").reset_index(drop=True)


def share_records(own: Sequence[dict], pool: Iterable[dict], ablation: str, size: str = "full") -> list[dict]:
    """``own`` (an ablation's recorded runs) plus the runs of ``pool`` (other files) whose configuration
    belongs to this ablation too, matched by the key ``dsa.train.sweep`` stores with each record (e.g. the KL
    ablation's with-KL runs are exactly the warm-up-100 and 4-head configurations at the full size).
    Borrowed records are shallow copies marked ``_shared``; a key already in ``own`` is never borrowed."""
    from dsa.train.experiments import get_experiment  # noqa: PLC0415
    from dsa.train.sweep import config_key  # noqa: PLC0415

    keys = {config_key(c) for c in get_experiment(_ablation(ablation)["experiment"], size)}
    have = {r.get("key") for r in own}
    out = list(own)
    for r in pool:
        k = r.get("key")
        if k in keys and k not in have:
            out.append({**r, "_shared": True})
            have.add(k)
    return out


def ablation_coverage(records: Sequence[dict], ablation: str, size: str = "full") -> dict:
    """How much of an ablation the records cover, per arm (matched by sweep key, as :func:`coverage`):
    {'expected', 'found', 'arms' ({arm label: (seeds found, seeds expected)}), 'missing_arms' (labels of arms
    with a seed missing), 'complete_arms' (with every seed), 'text'} — e.g. '3 of 12 configurations of
    ablation_warmup (full) recorded; missing: warm-up 100 (seeds 0, 1, 2), ...'."""
    from dsa.train.experiments import get_experiment  # noqa: PLC0415
    from dsa.train.sweep import config_key  # noqa: PLC0415

    exp = _ablation(ablation)["experiment"]
    configs = get_experiment(exp, size)
    have = {r.get("key") for r in records}
    arms: dict[str, tuple[list[int], list[int]]] = {}
    for c in sorted(configs, key=lambda c: (ablation_level(c, ablation), c.seed)):
        found, expected = arms.setdefault(ablation_arm(c, ablation), ([], []))
        expected.append(c.seed)
        if config_key(c) in have:
            found.append(c.seed)
    n_found = sum(len(f) for f, _ in arms.values())
    missing = {a: sorted(set(e) - set(f)) for a, (f, e) in arms.items() if len(f) < len(e)}
    text = f"{n_found} of {len(configs)} configurations of {exp} ({size}) recorded"
    if missing:
        text += "; missing: " + ", ".join(f"{a} (seed{'s' if len(m) > 1 else ''} {', '.join(map(str, m))})"
                                          for a, m in missing.items())
    return {"expected": len(configs), "found": n_found,
            "arms": {a: (sorted(f), sorted(e)) for a, (f, e) in arms.items()},
            "missing_arms": list(missing), "complete_arms": [a for a in arms if a not in missing], "text": text}


def source_label(records: Sequence[dict], what: str) -> str:
    """'<what>: recorded on NVIDIA H100 80GB HBM3, commit d93bd41, 2026-11-23, torch 2.11.0 (20 runs)'."""
    from dsa.records import summarize_provenance  # noqa: PLC0415

    return f"{what}: {summarize_provenance(r.get('provenance') or {} for r in records) or 'no runs'}"


__all__ = [
    "ABLATIONS",
    "ablation_arm",
    "ablation_coverage",
    "ablation_level",
    "ablation_table",
    "arm_label",
    "config_ratio",
    "coverage",
    "curves_table",
    "experiment_levels",
    "fresh_run_rules",
    "fresh_source_label",
    "fresh_sweep",
    "gc_frozen",
    "parse_list",
    "recorded_runs",
    "recorded_source_label",
    "run_sources",
    "runs_dir",
    "runs_table",
    "select_configs",
    "share_records",
    "source_label",
    "train_keeping_models",
    "valid_list",
    "validation_batches",
]
