"""The one reader of results recorded before a field existed: what they lack is derived here, at load time,
and nowhere else.

Training runs. ``TrainConfig.design`` (the run's experiment, arm, designed k/L ratio and k rule, ablation and
level; ``dsa.train.experiments``) was added after the GPU sweeps under ``data/gpu/`` were recorded. For a
record without it, :func:`run_design` derives the factors from the configured fields:

- ``arm``: ``dsa.train.design.arm_label`` of attention, recipe, leak_future and k_policy;
- ``ratio`` (DSA runs): top_k / seq_len snapped to the nearest ratio an experiment designs
  (:data:`DESIGNED_RATIOS`) when it lies within the rounding of k = ratio * L (less than 1/L away; e.g. exp5's
  0.33 * 64 gave k = 21, 21/64 = 0.328), else the raw k/L;
- ``ablation`` / ``level`` are not derived: which ablation a recorded run served is not in the record (the
  study's ablation tables read the ablated field itself, ``dsa.study.runs.ablation_level``).

Benchmarks. ``dsa.bench.kernels`` now writes ``dsa.provenance.provenance()`` (``torch_version``,
``triton_version``, ...) with its timing context under ``provenance['bench']``, raw timings per row and the k
rule as designed (``row['k_rule']``: 'L/8' or 'k=2048'). :func:`bench_record` turns a file written before that
(provenance with ``torch``/``triton``/``sparse_path``/``timer`` and rows without a k rule) into that schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsa.train.design import SPARSITY_RATIOS, arm_label, k_rule_text

# Every k/L ratio an experiment of dsa.train.experiments designs (exp4: L/2 and L/8; exp3: 25/50/75%;
# ablations: L/4; exp5: SPARSITY_RATIOS).
DESIGNED_RATIOS = tuple(sorted({*SPARSITY_RATIOS, 0.125, 0.25, 0.5, 0.75}))


def designed_ratio(top_k: int, seq_len: int) -> float:
    """The designed k/L a recorded (top_k, seq_len) was built from: the nearest of :data:`DESIGNED_RATIOS`
    within 1/L, else top_k / seq_len."""
    raw = top_k / seq_len
    best = min(DESIGNED_RATIOS, key=lambda r: abs(r - raw))
    return float(best) if abs(best - raw) < 1.0 / seq_len else raw


def run_design(config: Mapping[str, Any]) -> dict:
    """The design factors of a run configuration (a record's ``config`` dict): its own ``design`` when it has
    one, else derived as the module docstring says."""
    if config.get("design"):
        return dict(config["design"])
    att = config.get("attention", "dense")
    design: dict[str, Any] = {"arm": arm_label(att, config.get("recipe"), bool(config.get("leak_future", False)),
                                               config.get("k_policy", "fixed"))}
    top_k, seq_len = config.get("top_k"), config.get("seq_len")
    if att == "dsa" and top_k and seq_len:
        ratio = designed_ratio(int(top_k), int(seq_len))
        design.update(ratio=ratio, k_rule=k_rule_text(ratio))
    return design


def with_design(record: dict) -> dict:
    """``record`` with ``config['design']`` filled in (:func:`run_design`); the record itself when it already
    has one, else a shallow copy with a new config dict."""
    cfg = record.get("config")
    if not isinstance(cfg, dict) or cfg.get("design"):
        return record
    return {**record, "config": {**cfg, "design": run_design(cfg)}}


# ------------------------------------------------------------------------------------------- benchmarks
_OLD_PROVENANCE = {"torch": "torch_version", "triton": "triton_version", "python": "python_version",
                   "cuda": "cuda_version"}
_BENCH_CONTEXT = ("sparse_path", "timer")


def bench_k_rule(seq_len: int, top_k: int) -> str:
    """The k rule of a benchmark row recorded without one: 'k=L/8' when k = L/8 (the CLI's ``--top-k 0``), else
    the fixed k ('k=2048'); the CLI's default fixed k that equals L/8 (L = 16384) reads 'k=2048=L/8'."""
    if top_k == seq_len // 8:
        return "k=L/8" if top_k != 2048 else "k=2048=L/8"
    return f"k={top_k}"


def bench_record(res: dict) -> dict:
    """A benchmark JSON (``dsa.bench.kernels``) in the current schema: provenance keys as
    ``dsa.provenance.provenance`` names them, the timing context under ``provenance['bench']``, each row with
    its ``k_rule``. A file already in that schema is returned unchanged (as a copy)."""
    prov = dict(res.get("provenance") or {})
    for old, new in _OLD_PROVENANCE.items():
        if old in prov and new not in prov:
            prov[new] = prov.pop(old)
    bench = dict(prov.get("bench") or {})
    for key in _BENCH_CONTEXT:
        if key in prov:
            bench.setdefault(key, prov.pop(key))
    prov["bench"] = bench
    prov.setdefault("git_dirty", None)
    rows = []
    for row in res.get("rows") or []:
        row = dict(row)
        if "k_rule" not in row and "L" in row and "k" in row:
            row["k_rule"] = bench_k_rule(int(row["L"]), int(row["k"]))
        rows.append(row)
    return {**res, "provenance": prov, "rows": rows}


__all__ = ["DESIGNED_RATIOS", "bench_k_rule", "bench_record", "designed_ratio", "run_design", "with_design"]
