"""Statistics that can say "equal": equivalence tests with a margin stated before the runs, seed-blocked
fits, the noise floor of identical re-runs, binomial intervals for exact-match accuracy.

A non-significant difference is not evidence of equality; an equivalence test is. With a margin m fixed in
advance (e.g. 0.02 nats/token, 1 point of accuracy), two one-sided tests (TOST) reject both "the difference is
<= -m" and ">= m" at level alpha exactly when the (1 - 2 alpha) confidence interval of the difference lies
inside (-m, m). Every result here also states its **resolution**: the largest |difference| its (1 - 2 alpha)
interval leaves possible, i.e. "no difference larger than X" (the smallest margin this data could confirm).

Verdicts (``verdict`` field):

* ``equivalent``: the (1 - 2 alpha) interval lies inside (-m, m) (with ``note`` when the (1 - alpha) interval
  also excludes 0: a real difference smaller than the margin);
* ``different``: the (1 - alpha) interval excludes 0 and the difference is not shown to be within the margin;
* ``inconclusive``: neither: "cannot conclude equivalence at +-m; no difference larger than X".

    tost_paired(dense_by_seed, dsa_by_seed, margin=0.02)        # paired by seed
    blocked_contrasts(df, "arm", "val_loss", "dense", margin=0.02)   # OLS value ~ arm + seed, TOST per arm
    noise_floor(df, ["arm", "seq_len", "seed"], "val_loss")      # identical configurations re-run
    binomial_ci(correct, n)                                      # Wilson interval of an accuracy
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

ALPHA = 0.05
VERDICTS = ("equivalent", "different", "inconclusive")
# Margins stated before the long-context runs (issue 17): what "equal" means for each metric.
MARGINS = {"val_loss": 0.02, "loss": 0.02, "accuracy": 0.01, "hit_rate": 0.02}


def _series(x: Mapping | pd.Series | Sequence[float]) -> pd.Series:
    s = x if isinstance(x, pd.Series) else pd.Series(dict(x)) if isinstance(x, Mapping) else pd.Series(list(x))
    s = pd.to_numeric(s, errors="coerce").astype(float)
    return s[np.isfinite(s.values)]


def _check_margin(margin: float, alpha: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a positive finite number, got {margin!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")


def tost_from_estimate(diff: float, se: float, df: float, margin: float, alpha: float = ALPHA) -> dict:
    """TOST and intervals for an estimated difference with standard error ``se`` on ``df`` degrees of freedom.

    Returns {diff, se, df, margin, alpha, p_tost, ci90_low/high (the 1 - 2 alpha interval), ci95_low/high
    (the 1 - alpha interval), p_diff (two-sided, difference from 0), resolution, verdict, note}."""
    _check_margin(margin, alpha)
    out = {"diff": float(diff), "se": float(se), "df": float(df), "margin": float(margin), "alpha": alpha,
           "p_tost": math.nan, "ci90_low": math.nan, "ci90_high": math.nan, "ci95_low": math.nan,
           "ci95_high": math.nan, "p_diff": math.nan, "resolution": math.nan, "verdict": "inconclusive", "note": ""}
    if not (df >= 1 and math.isfinite(se) and math.isfinite(diff)):
        out["note"] = "fewer than 2 replicates: no interval, equivalence cannot be tested"
        return out
    if se == 0:
        inside = abs(diff) < margin
        out.update(p_tost=0.0 if inside else 1.0, ci90_low=diff, ci90_high=diff, ci95_low=diff, ci95_high=diff,
                   resolution=abs(diff), verdict="equivalent" if inside else "different",
                   note="zero spread: the intervals collapse to the estimate")
        return out
    t1, t2 = sps.t.ppf(1 - alpha, df), sps.t.ppf(1 - alpha / 2, df)
    p_low = sps.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_high = sps.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    lo90, hi90 = diff - t1 * se, diff + t1 * se
    lo95, hi95 = diff - t2 * se, diff + t2 * se
    out.update(p_tost=float(max(p_low, p_high)), ci90_low=lo90, ci90_high=hi90, ci95_low=lo95, ci95_high=hi95,
               p_diff=float(2 * sps.t.sf(abs(diff) / se, df)), resolution=float(max(abs(lo90), abs(hi90))))
    if out["p_tost"] < alpha:
        out["verdict"] = "equivalent"
        if lo95 > 0 or hi95 < 0:
            out["note"] = "a difference exists but it is smaller than the margin"
    elif lo95 > 0 or hi95 < 0:
        out["verdict"] = "different"
    return out


def tost_paired(a: Mapping | pd.Series | Sequence[float], b: Mapping | pd.Series | Sequence[float], margin: float,
                alpha: float = ALPHA) -> dict:
    """TOST of b - a paired on their common keys (seeds); :func:`tost_from_estimate` plus n_pairs, mean_a, mean_b.
    Sequences pair by position."""
    sa, sb = _series(a), _series(b)
    common = [k for k in sa.index if k in set(sb.index)]
    d = sb.loc[common].values - sa.loc[common].values
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    out = tost_from_estimate(float(d.mean()) if n else math.nan, se, n - 1, margin, alpha)
    out.update(n_pairs=n, mean_a=float(sa.loc[common].mean()) if n else math.nan,
               mean_b=float(sb.loc[common].mean()) if n else math.nan, test="paired TOST (t on per-seed differences)")
    return out


def tost_proportions(correct_a: int, n_a: int, correct_b: int, n_b: int, margin: float,
                     alpha: float = ALPHA) -> dict:
    """TOST of accuracy_b - accuracy_a from two binomial counts (normal approximation, unpooled SE)."""
    for name, v in (("correct_a", correct_a), ("n_a", n_a), ("correct_b", correct_b), ("n_b", n_b)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if correct_a > n_a or correct_b > n_b or not n_a or not n_b:
        raise ValueError(f"counts must satisfy 0 <= correct <= n, n > 0: got {correct_a}/{n_a}, {correct_b}/{n_b}")
    pa, pb = correct_a / n_a, correct_b / n_b
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    out = tost_from_estimate(pb - pa, se, math.inf if se > 0 else 1, margin, alpha)
    out.update(acc_a=pa, acc_b=pb, test="TOST on two proportions (normal approximation)")
    return out


def binomial_ci(successes: int, n: int, confidence: float = 0.95, method: str = "wilson") -> tuple[float, float]:
    """(low, high) of a proportion: ``method`` 'wilson' or 'beta' (Clopper-Pearson), by statsmodels."""
    from statsmodels.stats.proportion import proportion_confint  # noqa: PLC0415

    if method not in ("wilson", "beta"):
        raise ValueError(f"method must be 'wilson' or 'beta', got {method!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    lo, hi = proportion_confint(int(successes), int(n), alpha=1 - confidence, method=method)
    return float(lo), float(hi)


# ------------------------------------------------------------------------ seed-blocked linear models
def _ols(df: pd.DataFrame, formula: str):
    import statsmodels.formula.api as smf  # noqa: PLC0415

    return smf.ols(formula, data=df).fit()


def blocked_contrasts(df: pd.DataFrame, factor: str, value: str, baseline: Any, margin: float,
                      seed: str = "seed", alpha: float = ALPHA) -> pd.DataFrame:
    """Every level of ``factor`` against ``baseline`` in the OLS fit ``value ~ C(factor) + C(seed)`` (seeds shared
    by the levels: each seed is a block), with a TOST per contrast on the fit's residual degrees of freedom.

    Returns one row per level: {level, n, diff, se, df, ci90/95, p_tost, p_diff, resolution, verdict, note}
    plus the factor's seed-blocked F-test p (``p_factor_blocked``) and the one-way (seed ignored) p
    (``p_factor_oneway``): the two analyses side by side."""
    d = df[[factor, value, seed]].dropna().copy()
    if baseline not in set(d[factor]):
        raise ValueError(f"baseline {baseline!r} is not a level of {factor!r}: {sorted(set(d[factor]), key=str)}")
    d["_f"], d["_s"] = d[factor].astype(str), d[seed].astype(str)
    d["_y"] = d[value].astype(float)
    levels = [lv for lv in pd.unique(d[factor]) if lv != baseline]
    fit = _ols(d, f"_y ~ C(_f, Treatment(reference={str(baseline)!r})) + C(_s)") if d["_s"].nunique() > 1 \
        else _ols(d, f"_y ~ C(_f, Treatment(reference={str(baseline)!r}))")
    p_blocked, p_oneway = _factor_p(d, fit), _oneway_p(d)
    rows = []
    for lv in levels:
        term = f"C(_f, Treatment(reference={str(baseline)!r}))[T.{lv}]"
        est, se = float(fit.params.get(term, math.nan)), float(fit.bse.get(term, math.nan))
        res = tost_from_estimate(est, se, fit.df_resid, margin, alpha)
        rows.append({"level": lv, "baseline": baseline, "n": int((d[factor] == lv).sum()), **res,
                     "p_factor_blocked": p_blocked, "p_factor_oneway": p_oneway})
    return pd.DataFrame(rows)


def _factor_p(d: pd.DataFrame, fit) -> float:
    import statsmodels.api as sm  # noqa: PLC0415

    if fit.df_resid < 1 or d["_f"].nunique() < 2:
        return math.nan
    table = sm.stats.anova_lm(fit, typ=2)
    row = [i for i in table.index if i.startswith("C(_f")]
    return float(table.loc[row[0], "PR(>F)"]) if row else math.nan


def _oneway_p(d: pd.DataFrame) -> float:
    groups = [g["_y"].values for _, g in d.groupby("_f")]
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return math.nan
    return float(sps.f_oneway(*groups).pvalue)


def blocked_slope(df: pd.DataFrame, x: str, value: str, seed: str = "seed", confidence: float = 0.95,
                  span: float | None = None) -> dict:
    """Slope of ``value`` on ``x`` with one intercept per seed (OLS ``value ~ x + C(seed)``), scaled by ``span``
    (the fitted change across the range of x; default max(x) - min(x)). Returns {change, ci_low, ci_high, p, df}."""
    d = df[[x, value, seed]].dropna().astype({x: float, value: float}).copy()
    d["_s"] = d[seed].astype(str)
    d = d.rename(columns={x: "_x", value: "_y"})
    if d["_x"].nunique() < 2:
        raise ValueError(f"{x!r} needs at least two distinct values for a slope")
    fit = _ols(d, "_y ~ _x + C(_s)" if d["_s"].nunique() > 1 else "_y ~ _x")
    span = float(d["_x"].max() - d["_x"].min()) if span is None else span
    lo, hi = fit.conf_int(alpha=1 - confidence).loc["_x"]
    return {"change": float(fit.params["_x"]) * span, "ci_low": float(lo) * span, "ci_high": float(hi) * span,
            "p": float(fit.pvalues["_x"]), "df": float(fit.df_resid), "span": span,
            "model": f"{value} ~ {x} + C({seed}) (OLS, one intercept per seed)"}


# ------------------------------------------------------------------------------------ noise floor
def noise_floor(df: pd.DataFrame, keys: Sequence[str], value: str) -> dict:
    """The spread of identical re-runs: rows sharing every column of ``keys`` (config and seed) are replicates.

    Returns {n_groups (with >= 2 replicates), n_runs, pooled_sd (the SD of one run around its configuration's
    mean, pooled over groups), sd_diff (of the difference of two runs: pooled_sd * sqrt 2), max_abs_diff (largest
    range within a group)}; NaN values and n_groups = 0 when nothing was re-run."""
    d = df[list(keys) + [value]].dropna(subset=[value])
    groups = [g[value].astype(float).values for _, g in d.groupby(list(keys), dropna=False) if len(g) >= 2]
    if not groups:
        return {"n_groups": 0, "n_runs": 0, "pooled_sd": math.nan, "sd_diff": math.nan, "max_abs_diff": math.nan}
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    sd = math.sqrt(ss / dof)
    return {"n_groups": len(groups), "n_runs": int(sum(len(g) for g in groups)), "pooled_sd": sd,
            "sd_diff": sd * math.sqrt(2), "max_abs_diff": float(max(g.max() - g.min() for g in groups))}


# ------------------------------------------------------------------------------------------ words
def verdict_text(res: Mapping[str, Any], unit: str = "nats/token", scale: float = 1.0, digits: int = 3,
                 noise: float | None = None) -> str:
    """One sentence: the verdict with its margin, its resolution and (when given) the noise floor beside it."""
    f = lambda v: f"{v * scale:+.{digits}f}"  # noqa: E731
    m, r = res["margin"] * scale, res["resolution"]
    tail = f"; noise floor (SD of one re-run's difference) {noise * scale:.{digits}f} {unit}" \
        if noise is not None and math.isfinite(noise) else ""
    if not math.isfinite(r):
        return f"cannot test equivalence at ±{m:.{digits}f} {unit}: {res.get('note') or 'no interval'}{tail}"
    ci = (f"difference {f(res['diff'])} {unit}, {100 * (1 - 2 * res['alpha']):.0f}% CI "
          f"[{f(res['ci90_low'])}, {f(res['ci90_high'])}]")
    text = {"equivalent": f"equivalent within ±{m:.{digits}f} {unit}",
            "different": f"different (the {100 * (1 - res['alpha']):.0f}% CI excludes 0)",
            "inconclusive": f"cannot conclude equivalence at ±{m:.{digits}f} {unit}"}[res["verdict"]]
    return f"{text}: no difference larger than {r * scale:.{digits}f} {unit} ({ci}){tail}"


__all__ = ["ALPHA", "MARGINS", "VERDICTS", "binomial_ci", "blocked_contrasts", "blocked_slope", "noise_floor",
           "tost_from_estimate", "tost_paired", "tost_proportions", "verdict_text"]
