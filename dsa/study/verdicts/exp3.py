"""Notebook 04's verdicts: the seeds' exp3 targets for an adaptive per-query k against fixed sparsity."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pandas as pd

from dsa.study.stats import CONFIDENCE, compare_variants

from .common import EQUIV_TOL, NOISY, Verdict, _ci_text, _shared_gpu, _time_cmp

EXP3_CLAIMS = {
    "quality": ("Adaptive k reaches a better final loss than fixed sparsity",
                "5-15% better final performance than fixed sparsity (a target, never measured)"),
    "speed": ("Adaptive k trains faster than fixed sparsity", "10-30% faster training than fixed sparsity (a target)"),
}


def _arm_kind(df: pd.DataFrame) -> pd.Series:
    return np.where(df.attention == "dense", "dense", np.where(df.k_policy == "fixed", "fixed", "adaptive"))


def exp3_verdicts(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE, tol: float = EQUIV_TOL,
                  speed_tol: float = 0.10) -> pd.DataFrame:
    """The seeds' exp3 targets on one data set (``df``: a runs_table of exp3-like runs, column ``arm``).

    quality: each adaptive arm against the best fixed-k arm (lowest mean loss), paired by seed; supported
    when some adaptive arm is more than ``tol`` (5%) better with a CI excluding 0.
    speed: each adaptive arm's time per step (sparse phase) against the fixed arm with the same k cap
    (``top_k``), i.e. what it replaces; supported when some adaptive arm is at least ``speed_tol`` (10%)
    faster. Rows: source, claim, seeds_said, verdict, evidence.
    """
    d = df.assign(kind=_arm_kind(df))
    fixed, adaptive = d[d.kind == "fixed"], d[d.kind == "adaptive"]
    rows = []
    claim, said = EXP3_CLAIMS["quality"]
    if fixed.empty or adaptive.empty:
        rows.append(Verdict(source, claim, said, "no data", "needs fixed-k and adaptive-k runs"))
        rows.append(Verdict(source, *EXP3_CLAIMS["speed"], "no data", "needs fixed-k and adaptive-k runs"))
        return pd.DataFrame([asdict(r) for r in rows])
    best_fixed = fixed.groupby("arm").val_loss.mean().idxmin()
    parts, better = [], False
    base = fixed[fixed.arm == best_fixed]
    for arm, g in adaptive.groupby("arm", sort=True):
        c = compare_variants(pd.concat([base, g]).assign(_all=0), best_fixed, by="_all", variant_col="arm",
                             confidence=confidence)
        r = c.iloc[0]
        rel = r.mean_diff / r.mean_a
        if rel < -tol and math.isfinite(r.ci_high) and r.ci_high < 0:
            better = True
        parts.append(f"{arm}: {r.mean_b:.3f} vs {best_fixed} {r.mean_a:.3f} ({rel:+.1%}, "
                     f"{_ci_text(r.ci_low, r.ci_high, confidence)})")
    evidence = f"the best fixed arm is {best_fixed}. " + "; ".join(parts)
    rows.append(Verdict(source, claim, said, "supported" if better else "not supported",
                        evidence if better else "no adaptive arm beats the best fixed k by 5%: " + evidence))
    claim, said = EXP3_CLAIMS["speed"]
    col = "sparse_time_per_step_s"
    parts, comps = [], []
    several = d.device.nunique() > 1
    for (dev, arm), g in adaptive.groupby(["device", "arm"], sort=True):  # times of one GPU only
        same = fixed[(fixed.top_k == g.top_k.iloc[0]) & (fixed.device == dev)]
        if same.empty or not np.isfinite(g[col]).any() or not np.isfinite(same[col]).any():
            continue
        c = _time_cmp(same, g, confidence)
        comps.append(c)
        parts.append(f"{arm}" + (f" ({dev})" if several else "") + f": {1e3 * c['other_s']:.1f} ms/step vs "
                     f"{same.arm.iloc[0]} {1e3 * c['base_s']:.1f} ms ({c['ratio']:.2f}x"
                     + ("" if c["clear"] else ", within noise") + ")")
    devs = " / ".join(sorted(str(x) for x in d.device.dropna().unique()))
    if not comps:
        rows.append(Verdict(source, claim, said, "no data", "no timed fixed arm with the adaptive arms' k cap"))
    elif _shared_gpu(d) > 1:
        rows.append(Verdict(source, claim, said, "inconclusive", f"not a speed measurement: timed while up to "
                            f"{_shared_gpu(d)} training processes shared the GPU. " + "; ".join(parts)))
    elif any(c["ratio"] >= 1 + speed_tol and c["clear"] for c in comps):
        rows.append(Verdict(source, claim, said, "supported", "; ".join(parts)))
    elif not any(c["clear"] for c in comps) or any(c["ratio"] >= 1 + speed_tol for c in comps):
        rows.append(Verdict(source, claim, said, "inconclusive", f"{NOISY} ({devs}). " + "; ".join(parts)))
    else:
        rows.append(Verdict(source, claim, said, "not supported", f"no adaptive arm is {speed_tol:.0%} faster than the "
                            f"fixed arm it replaces on {devs}: " + "; ".join(parts)))
    return pd.DataFrame([asdict(r) for r in rows])
