"""What every notebook's verdicts share: the Verdict record, the arms' labels (``dsa.train.design``, read back
from each run's design factors), the summary tables with their mean ± CI cells, and the paired timing
comparison. The verdicts themselves live in one module per notebook: ``exp4`` (02), ``exp5`` (03), ``exp3``
(04), ``ablations`` (06)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dsa.study.stats import CONFIDENCE, compare_variants, group_summary
from dsa.train.design import DEEPSEEK, DENSE, LEAKY, SCRATCH

CAUSAL = (DEEPSEEK, SCRATCH)
VARIANT_ORDER = (DENSE, LEAKY, SCRATCH, DEEPSEEK)
# "similar" means within 5% of dense: the seeds' own success criterion ("validation loss within 5% of
# classic"); a gain must also be that large to count as one.
EQUIV_TOL = 0.05
SUMMARY_METRICS = ("val_loss", "val_acc", "sparse_time_per_step_s", "val_loss_causal_eval", "val_acc_causal_eval")
GROUP = ("source", "device", "seq_len", "steps")  # a sweep may mix GPUs: every table keeps them apart


@dataclass(frozen=True)
class Verdict:
    source: str
    claim: str
    seeds_said: str
    verdict: str  # supported | partly supported | refuted | not reproduced | inconclusive | no data
    evidence: str


# ------------------------------------------------------------------------------------------ tables
def summary_table(df: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS, by: Sequence[str] = GROUP,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean and t confidence interval over seeds of each metric per (by..., variant): long format with
    columns by + variant, metric, n, mean, ci_low, ci_high, half_width, note. Metrics a group lacks
    entirely (e.g. the causal-eval loss of non-leaky runs) are left out."""
    parts = []
    for m in metrics:
        if m not in df.columns:
            continue
        sub = df[np.isfinite(pd.to_numeric(df[m], errors="coerce"))]
        if sub.empty:
            continue
        s = group_summary(sub, [*by, "variant"], value=m, confidence=confidence)
        s.insert(len(by) + 1, "metric", m)
        parts.append(s)
    if not parts:
        return pd.DataFrame(columns=[*by, "variant", "metric", "n", "mean", "ci_low", "ci_high", "half_width"])
    out = pd.concat(parts, ignore_index=True)
    out["_order"] = out["variant"].map({v: i for i, v in enumerate(VARIANT_ORDER)}).fillna(len(VARIANT_ORDER))
    return out.sort_values([*by, "_order", "metric"]).drop(columns="_order").reset_index(drop=True)


# Physical bounds of the metrics: an interval is never shown beyond them (a t interval over 2-3 noisy seeds
# can reach below zero for a time, or above 100% for an accuracy).
METRIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "val_loss": (0.0, None), "val_loss_causal_eval": (0.0, None), "val_acc": (0.0, 1.0),
    "val_acc_causal_eval": (0.0, 1.0), "recall": (0.0, 1.0), "mean_k": (0.0, None),
    "sparse_time_per_step_s": (0.0, None), "time_per_step_s": (0.0, None),
}


def metric_bounds(metric: str) -> tuple[float | None, float | None]:
    """(lower, upper) physical bound of a metric (None: unbounded); times, counts, losses >= 0, shares in [0, 1]."""
    if metric in METRIC_BOUNDS:
        return METRIC_BOUNDS[metric]
    if "time" in metric or metric.endswith("_s") or metric.endswith("_ms"):
        return (0.0, None)
    if "acc" in metric or "recall" in metric:
        return (0.0, 1.0)
    return (None, None)


def format_mean_ci(mean: float, half_width: float, n: int, digits: int = 3, scale: float = 1.0,
                   bounds: tuple[float | None, float | None] = (None, None)) -> str:
    """'4.254 ± 0.040 (n=3)'; 'x (n=1, no CI)' when the interval is undefined; 'n/a' without a mean.
    bounds: the metric's physical (lower, upper) bound; an interval reaching past one is shown clipped as
    'x [lo, hi] (n=2, CI clipped at 0)' instead of a symmetric '±' that would cross it."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    m = f"{mean * scale:.{digits}f}"
    if half_width is None or not math.isfinite(half_width):
        return f"{m} (n={n}, no CI)"
    lo, hi = mean - half_width, mean + half_width
    blo, bhi = bounds
    clipped = []
    if blo is not None and lo < blo:
        lo = blo
        clipped.append(f"{blo * scale:g}")
    if bhi is not None and hi > bhi:
        hi = bhi
        clipped.append(f"{bhi * scale:g}")
    if clipped:
        return (f"{m} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}] (n={n}, CI clipped at "
                f"{' and '.join(clipped)})")
    return f"{m} ± {half_width * scale:.{digits}f} (n={n})"


def format_summary(summary: pd.DataFrame, by: Sequence[str] = GROUP,
                   formats: dict[str, tuple[int, float, str]] | None = None,
                   na: dict[str, str] | None = None) -> pd.DataFrame:
    """:func:`summary_table` as one row per (by..., variant) and one string column per metric,
    'mean ± CI half-width (n=...)' (clipped at the metric's physical bounds, :func:`metric_bounds`); a metric
    a row lacks shows 'n/a', or 'n/a (why)' with ``na``: metric -> why. formats: metric -> (digits, scale, column
    title)."""
    formats = formats or {
        "val_loss": (3, 1.0, "val loss (nats/token)"),
        "val_acc": (1, 100.0, "val accuracy (%)"),
        "sparse_time_per_step_s": (1, 1e3, "time per step (ms)"),
        "val_loss_causal_eval": (3, 1.0, "val loss, causal guard on at eval"),
        "val_acc_causal_eval": (1, 100.0, "val accuracy (%), causal guard on at eval"),
    }
    if summary.empty:
        return pd.DataFrame()
    s = summary.copy()
    s["text"] = [format_mean_ci(r["mean"], r["half_width"], int(r["n"]), *formats.get(r["metric"], (3, 1.0, ""))[:2],
                                bounds=metric_bounds(r["metric"]))
                 for _, r in s.iterrows()]
    wide = s.pivot_table(index=[*by, "variant"], columns="metric", values="text", aggfunc="first", sort=False)
    cols = [m for m in formats if m in wide.columns] + [m for m in wide.columns if m not in formats]
    wide = wide[cols].fillna({m: f"n/a ({why})" for m, why in (na or {}).items() if m in cols}).fillna("n/a")
    wide = wide.rename(columns={m: formats[m][2] for m in cols if m in formats})
    wide.columns.name = None
    return wide.reset_index()



def _ci_text(lo: float, hi: float, confidence: float, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no CI (one seed)"
    return f"{confidence:.0%} CI [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{unit}"


def _mean(g: pd.DataFrame, variant: str, metric: str) -> float:
    sub = g.loc[g.variant == variant, metric] if metric in g.columns else pd.Series(dtype=float)
    sub = pd.to_numeric(sub, errors="coerce").dropna()
    return float(sub.mean()) if len(sub) else float("nan")


def _time_cmp(base: pd.DataFrame, other: pd.DataFrame, confidence: float) -> dict:
    """Time per step (sparse phase) of ``other`` vs ``base``, paired by seed: {ratio (base / other: above 1 =
    ``other`` faster), clear (the CI of the difference excludes 0; True when there is one seed per side and
    so no CI), base_s, other_s, n}."""
    col = "sparse_time_per_step_s"
    a = base.groupby("seed")[col].mean().dropna()
    b = other.groupby("seed")[col].mean().dropna()
    r = compare_variants(pd.concat([a.rename(col).reset_index().assign(arm="a"),
                                    b.rename(col).reset_index().assign(arm="b")]).assign(_all=0),
                         "a", by="_all", value=col, variant_col="arm", confidence=confidence).iloc[0]
    ci_ok = math.isfinite(r.ci_low) and math.isfinite(r.ci_high)
    clear = (not (r.ci_low <= 0 <= r.ci_high)) if ci_ok else r.n_pairs < 2 and min(len(a), len(b)) < 2
    return {"ratio": r.mean_a / r.mean_b, "clear": bool(clear), "base_s": r.mean_a, "other_s": r.mean_b,
            "n": int(r.n_pairs)}


def _shared_gpu(df: pd.DataFrame) -> int:
    """The most training processes that time-shared a GPU in ``df``'s runs (``gpu_shared_by``); 1 if unknown."""
    n = pd.to_numeric(df["gpu_shared_by"], errors="coerce").max() if "gpu_shared_by" in df.columns else float("nan")
    return int(n) if math.isfinite(n) and n > 1 else 1


def _shared_note(df: pd.DataFrame) -> str:
    """' (timed while up to N training processes shared the GPU: not a speed measurement)' or ''."""
    n = _shared_gpu(df)
    return f" (timed while up to {n} training processes shared the GPU: not a speed measurement)" if n > 1 else ""


NOISY = "the timings are too noisy to decide: a paired CI of the time difference includes 0"
