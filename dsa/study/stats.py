"""Statistics over training runs: tidy tables, means with t-based confidence intervals, one-way ANOVA per
sequence length, Tukey HSD, Cohen's d, Bonferroni correction, the optimal sparsity ratio per length and
paired dense-vs-sparse comparisons over seeds.

Everything is computed with scipy / statsmodels; this module only arranges inputs and outputs. Small
samples never crash: a group of one run gets a NaN interval and a ``note`` saying why, a test that cannot
be run (fewer than two groups, a group without replicates, zero variance everywhere) gets NaN statistics
and a note.

Typical use::

    df = runs_frame(records)                                  # one row per run
    summary = group_summary(df, ["seq_len", "ratio"])          # mean, 95% CI per cell
    anova = anova_by(df, by="seq_len", factor="ratio")         # F, p, Bonferroni-adjusted p per L
    tukey = tukey_by(df, by="seq_len", factor="ratio")         # all pairs, with Cohen's d
    best = optimal_by(df, by="seq_len", factor="ratio")        # lowest mean loss per L and its ties
    cmp = paired_comparison(dense_losses, sparse_losses)       # dicts / Series keyed by seed
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .legacy import run_design

CONFIDENCE = 0.95
ALPHA = 0.05

NOTE_N1 = "n=1: no spread can be estimated, so the confidence interval is undefined (NaN)"
NOTE_N0 = "n=0: no finite values"
NOTE_ZERO_VAR = "zero variance: every value identical, the interval collapses to the mean"

FRAME_COLUMNS = (
    "name", "variant", "attention", "recipe", "leak", "seq_len", "top_k", "ratio", "k_policy", "k_mass", "seed",
    "data_seed", "steps", "val_loss", "val_acc", "val_ppl", "recall", "time_per_step_s", "tokens_per_s",
    "peak_mem", "peak_mem_kind", "val_loss_causal_eval", "val_acc_causal_eval", "device", "commit", "date",
)


# ------------------------------------------------------------------------------------------ the frame
def run_row(record: Mapping[str, Any]) -> dict:
    """One tidy row from a run record (dsa.train.trainer.train or dsa.train.sweep): config, final metrics, provenance.

    ``variant`` (the arm) and ``ratio`` (the designed k/L of a DSA run: 0.33 for exp5's k = round(0.33 * 64) =
    21, not 21/64) are read from the run's design factors (``config['design']``, ``dsa.train.experiments``;
    ``dsa.study.legacy.run_design`` for records written before it); dense runs attend to every past token:
    top_k = seq_len, ratio = 1.0.
    """
    cfg = dict(record.get("config") or {})
    fin = dict(record.get("final") or {})
    prov = dict(record.get("provenance") or {})
    design = run_design(cfg)
    att = cfg.get("attention", "dense")
    seq_len = cfg.get("seq_len")
    leak = bool(cfg.get("leak_future", False))
    if att == "dense":
        top_k, ratio = seq_len, 1.0
    else:
        top_k = cfg.get("top_k")
        ratio = design.get("ratio", float("nan"))
    mem, mem_kind = fin.get("peak_mem_mb"), "gpu_allocated_mb"
    if mem is None:
        mem, mem_kind = fin.get("peak_rss_mb"), "cpu_rss_mb"
    commit = prov.get("git_commit")
    row = {
        "name": record.get("name"),
        "variant": design["arm"],
        "attention": att,
        "recipe": cfg.get("recipe") if att == "dsa" else "dense",
        "leak": leak,
        "seq_len": seq_len,
        "top_k": top_k,
        "ratio": ratio,
        "k_policy": cfg.get("k_policy", "fixed") if att == "dsa" else "dense",
        "k_mass": cfg.get("k_mass"),
        "seed": cfg.get("seed", record.get("seed")),
        "data_seed": cfg.get("data_seed", record.get("data_seed")),
        "steps": cfg.get("steps"),
        "val_loss": fin.get("val_loss"),
        "val_acc": fin.get("val_acc"),
        "val_ppl": fin.get("val_ppl"),
        "recall": fin.get("recall"),
        "time_per_step_s": fin.get("time_per_step_s"),
        "tokens_per_s": fin.get("tokens_per_s"),
        "peak_mem": mem,
        "peak_mem_kind": mem_kind if mem is not None else None,
        "val_loss_causal_eval": fin.get("val_loss_causal_eval"),
        "val_acc_causal_eval": fin.get("val_acc_causal_eval"),
        "device": prov.get("device"),
        "commit": (str(commit)[:7] + ("+dirty" if prov.get("git_dirty") else "")) if commit else None,
        "date": str(prov.get("date", ""))[:10] or None,
    }
    return row


def runs_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records -> a tidy DataFrame, one row per run, columns :data:`FRAME_COLUMNS` (missing metrics NaN)."""
    rows = [run_row(r) for r in records]
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    for c in ("val_loss", "val_acc", "val_ppl", "recall", "time_per_step_s", "tokens_per_s", "peak_mem",
              "val_loss_causal_eval", "val_acc_causal_eval", "ratio", "k_mass"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def history_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Training curves: one row per evaluation of each run (the run's identifying columns repeated)."""
    keep = ("name", "variant", "attention", "recipe", "leak", "seq_len", "top_k", "ratio", "k_policy", "seed",
            "device", "commit")
    rows = []
    for r in records:
        ident = {k: v for k, v in run_row(r).items() if k in keep}
        for h in r.get("history") or []:
            rows.append({**ident, **{k: v for k, v in h.items() if not isinstance(v, (dict, list))}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ means and intervals
def _clean(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return a[np.isfinite(a)]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> dict:
    """Mean and t-based confidence interval: mean ± t_{(1+c)/2, n-1} · s/√n (scipy.stats.t.interval).

    Returns {n, mean, sd, sem, ci_low, ci_high, half_width, note}; n counts finite values. n=1 gives
    sd/sem/interval NaN with a note; zero variance gives a zero-width interval with a note.
    """
    a = _clean(values)
    n = len(a)
    out = {"n": n, "mean": float("nan"), "sd": float("nan"), "sem": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "half_width": float("nan"), "note": ""}
    if n == 0:
        out["note"] = NOTE_N0
        return out
    out["mean"] = float(a.mean())
    if n == 1:
        out["note"] = NOTE_N1
        return out
    sd = float(a.std(ddof=1))
    sem = float(sps.sem(a))
    out.update(sd=sd, sem=sem)
    if sem == 0:
        out.update(ci_low=out["mean"], ci_high=out["mean"], half_width=0.0, note=NOTE_ZERO_VAR)
        return out
    lo, hi = sps.t.interval(confidence, n - 1, loc=out["mean"], scale=sem)
    out.update(ci_low=float(lo), ci_high=float(hi), half_width=float(hi - out["mean"]))
    return out


def group_summary(df: pd.DataFrame, by: str | list[str], value: str = "val_loss",
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per group: the columns of ``by`` and mean_ci's fields for ``value``."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **mean_ci(g[value], confidence)})
    cols = by + ["n", "mean", "sd", "sem", "ci_low", "ci_high", "half_width", "note"]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------- effects
def cohens_d(a: Iterable[float], b: Iterable[float]) -> float:
    """Cohen's d = (mean(a) - mean(b)) / pooled SD, pooled SD = √(((n_a-1)s_a² + (n_b-1)s_b²)/(n_a+n_b-2)).

    NaN when the pooled SD is undefined (n_a + n_b < 3) or zero with equal means; ±inf when it is zero and
    the means differ.
    """
    a, b = _clean(a), _clean(b)
    na, nb = len(a), len(b)
    if na < 1 or nb < 1 or na + nb < 3:
        return float("nan")
    va = a.var(ddof=1) if na > 1 else 0.0
    vb = b.var(ddof=1) if nb > 1 else 0.0
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    diff = float(a.mean() - b.mean())
    if pooled == 0:
        return float("nan") if diff == 0 else math.copysign(math.inf, diff)
    return diff / pooled


def effect_size_label(d: float) -> str:
    """Cohen's conventional labels: negligible < 0.2 <= small < 0.5 <= medium < 0.8 <= large."""
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "undefined"
    d = abs(d)
    return "negligible" if d < 0.2 else "small" if d < 0.5 else "medium" if d < 0.8 else "large"


def adjust_pvalues(pvalues: Iterable[float], method: str = "bonferroni",
                   alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels multipletests over the finite p-values (NaN ones are left NaN / not rejected).

    Returns (reject, p_adjusted) arrays aligned with the input.
    """
    from statsmodels.stats.multitest import multipletests  # noqa: PLC0415

    p = np.asarray(list(pvalues), dtype=float)
    reject = np.zeros(len(p), dtype=bool)
    adj = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        r, a, _, _ = multipletests(p[ok], alpha=alpha, method=method)
        reject[ok], adj[ok] = r, a
    return reject, adj


# -------------------------------------------------------------------------------------------- ANOVA
def _groups(df: pd.DataFrame, factor: str, value: str) -> dict[Any, np.ndarray]:
    return {lvl: _clean(g[value]) for lvl, g in df.groupby(factor, sort=True)}


def one_way_anova(groups: Mapping[Any, Iterable[float]]) -> dict:
    """scipy.stats.f_oneway over the groups with at least one finite value.

    Returns {k (groups), N (values), F, p, note}; F and p are NaN (with a note) when fewer than two groups,
    no replicate at all (N == k), or zero variance everywhere.
    """
    gs = {k: _clean(v) for k, v in groups.items()}
    gs = {k: v for k, v in gs.items() if len(v)}
    k, n = len(gs), sum(len(v) for v in gs.values())
    out = {"k": k, "N": n, "F": float("nan"), "p": float("nan"), "note": ""}
    if k < 2:
        out["note"] = "fewer than two groups: no ANOVA"
        return out
    if n <= k:
        out["note"] = "one run per group: no within-group variance, no ANOVA (run more seeds)"
        return out
    within = sum(((v - v.mean()) ** 2).sum() for v in gs.values())
    if within == 0:
        out["note"] = "zero within-group variance: F undefined"
        return out
    res = sps.f_oneway(*gs.values())
    out.update(F=float(res.statistic), p=float(res.pvalue))
    return out


def anova_by(df: pd.DataFrame, by: str = "seq_len", factor: str = "ratio", value: str = "val_loss",
             alpha: float = ALPHA, correction: str = "bonferroni") -> pd.DataFrame:
    """One-way ANOVA of ``value`` across the levels of ``factor`` within each level of ``by`` (e.g. across
    sparsity ratios at each L), with the p-values corrected for the number of ANOVAs (Bonferroni)."""
    rows = [{by: lvl, **one_way_anova(_groups(g, factor, value))} for lvl, g in df.groupby(by, sort=True)]
    out = pd.DataFrame(rows, columns=[by, "k", "N", "F", "p", "note"])
    rej, adj = adjust_pvalues(out["p"], correction, alpha)
    out["p_adj"] = adj
    out["significant"] = rej
    out["correction"] = f"{correction} over {int(np.isfinite(out['p']).sum())} tests"
    return out


# --------------------------------------------------------------------------------------- Tukey HSD
def tukey(groups: Mapping[Any, Iterable[float]], alpha: float = ALPHA) -> pd.DataFrame:
    """Tukey HSD over all pairs (statsmodels pairwise_tukeyhsd), plus Cohen's d per pair.

    Columns: group1, group2, meandiff (mean2 - mean1), p_adj, lower, upper, reject, cohens_d (group2 vs
    group1), note. Empty rows with a note when the test cannot be run (as in :func:`one_way_anova`).
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd  # noqa: PLC0415

    cols = ["group1", "group2", "meandiff", "p_adj", "lower", "upper", "reject", "cohens_d", "note"]
    gs = {k: _clean(v) for k, v in groups.items()}
    gs = {k: v for k, v in gs.items() if len(v)}
    check = one_way_anova(gs)
    levels = list(gs)
    if check["note"]:
        rows = [{"group1": a, "group2": b, "meandiff": float(gs[b].mean() - gs[a].mean()), "p_adj": float("nan"),
                 "lower": float("nan"), "upper": float("nan"), "reject": False,
                 "cohens_d": cohens_d(gs[b], gs[a]), "note": check["note"]}
                for i, a in enumerate(levels) for b in levels[i + 1:]]
        return pd.DataFrame(rows, columns=cols)
    values = np.concatenate([gs[k] for k in levels])
    labels = np.concatenate([[str(k)] * len(gs[k]) for k in levels])
    res = pairwise_tukeyhsd(values, labels, alpha=alpha)
    back = {str(k): k for k in levels}
    names = [back[str(u)] for u in res.groupsunique]
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]  # statsmodels' order
    rows = []
    for n, (i, j) in enumerate(pairs):
        a, b = names[i], names[j]
        rows.append({"group1": a, "group2": b, "meandiff": float(res.meandiffs[n]), "p_adj": float(res.pvalues[n]),
                     "lower": float(res.confint[n][0]), "upper": float(res.confint[n][1]),
                     "reject": bool(res.reject[n]), "cohens_d": cohens_d(gs[b], gs[a]), "note": ""})
    return pd.DataFrame(rows, columns=cols)


def tukey_by(df: pd.DataFrame, by: str = "seq_len", factor: str = "ratio", value: str = "val_loss",
             alpha: float = ALPHA) -> pd.DataFrame:
    """:func:`tukey` within each level of ``by``; a ``by`` column is prepended."""
    parts = []
    for lvl, g in df.groupby(by, sort=True):
        t = tukey(_groups(g, factor, value), alpha)
        t.insert(0, by, lvl)
        parts.append(t)
    if not parts:
        return pd.DataFrame(columns=[by, "group1", "group2", "meandiff", "p_adj", "lower", "upper", "reject",
                                     "cohens_d", "note"])
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------- pairwise t-tests
def pairwise_ttests(df: pd.DataFrame, by: str = "seq_len", factor: str = "ratio", value: str = "val_loss",
                    alpha: float = ALPHA, correction: str = "bonferroni") -> pd.DataFrame:
    """Welch t-tests (scipy.stats.ttest_ind, equal_var=False) for every pair of ``factor`` levels within each
    level of ``by``, with Cohen's d, Bonferroni-corrected over ALL the tests in the table."""
    rows = []
    for lvl, g in df.groupby(by, sort=True):
        gs = _groups(g, factor, value)
        levels = list(gs)
        for i, a in enumerate(levels):
            for b in levels[i + 1:]:
                x, y = gs[a], gs[b]
                t = p = float("nan")
                note = ""
                if len(x) < 2 or len(y) < 2:
                    note = "a group has fewer than 2 runs: no t-test"
                elif x.var(ddof=1) == 0 and y.var(ddof=1) == 0:
                    note = "zero variance in both groups: no t-test"
                else:
                    res = sps.ttest_ind(y, x, equal_var=False)
                    t, p = float(res.statistic), float(res.pvalue)
                rows.append({by: lvl, "group1": a, "group2": b, "mean1": float(x.mean()) if len(x) else np.nan,
                             "mean2": float(y.mean()) if len(y) else np.nan, "t": t, "p": p,
                             "cohens_d": cohens_d(y, x), "note": note})
    out = pd.DataFrame(rows, columns=[by, "group1", "group2", "mean1", "mean2", "t", "p", "cohens_d", "note"])
    rej, adj = adjust_pvalues(out["p"], correction, alpha)
    out["p_adj"] = adj
    out["significant"] = rej
    return out


# -------------------------------------------------------------------------------- optimal ratio
def optimal_level(groups: Mapping[Any, Iterable[float]], alpha: float = ALPHA,
                  confidence: float = CONFIDENCE) -> dict:
    """The level with the lowest mean, its mean and CI, and the levels NOT significantly different from it
    by Tukey HSD (``ties``, the best level included). Without a usable Tukey test every level is a tie."""
    gs = {k: _clean(v) for k, v in groups.items()}
    gs = {k: v for k, v in gs.items() if len(v)}
    if not gs:
        return {"best": None, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0,
                "ties": [], "note": NOTE_N0}
    best = min(gs, key=lambda k: gs[k].mean())
    ci = mean_ci(gs[best], confidence)
    t = tukey(gs, alpha)
    note = ci["note"]
    if len(gs) == 1:
        ties = [best]
    elif t["note"].astype(bool).any():
        ties = sorted(gs)
        note = "; ".join(x for x in (note, str(t["note"].iloc[0]) + " (all levels counted as ties)") if x)
    else:
        ties = [best]
        for _, r in t.iterrows():
            other = r["group2"] if r["group1"] == best else r["group1"] if r["group2"] == best else None
            if other is not None and not r["reject"]:
                ties.append(other)
        ties = sorted(ties)
    return {"best": best, "mean": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": ci["n"],
            "ties": ties, "note": note}


def optimal_by(df: pd.DataFrame, by: str = "seq_len", factor: str = "ratio", value: str = "val_loss",
               alpha: float = ALPHA, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`optimal_level` per level of ``by`` (e.g. the optimal sparsity ratio per sequence length)."""
    rows = [{by: lvl, **optimal_level(_groups(g, factor, value), alpha, confidence)}
            for lvl, g in df.groupby(by, sort=True)]
    out = pd.DataFrame(rows, columns=[by, "best", "mean", "ci_low", "ci_high", "n", "ties", "note"])
    return out.rename(columns={"best": f"best_{factor}", "ties": f"{factor}s_not_worse"})


# -------------------------------------------------------------------------- paired dense vs sparse
def _as_series(x: Mapping | pd.Series | Sequence[float]) -> pd.Series:
    if isinstance(x, pd.Series):
        s = x
    elif isinstance(x, Mapping):
        s = pd.Series(dict(x))
    else:
        s = pd.Series(list(x))
    s = pd.to_numeric(s, errors="coerce").astype(float)
    return s[np.isfinite(s.values)]


def paired_comparison(a: Mapping | pd.Series | Sequence[float], b: Mapping | pd.Series | Sequence[float],
                      confidence: float = CONFIDENCE) -> dict:
    """Compare ``b`` against ``a`` (e.g. a = dense losses, b = sparse losses), each keyed by seed.

    When the two share seeds (the same init and data order per seed), the pairs on the common seeds are
    tested with a paired t-test (scipy.stats.ttest_rel); the difference b - a has its mean and t CI over the
    pairs. Otherwise (no common seed) Welch's t-test (scipy.stats.ttest_ind, equal_var=False) with its CI.
    Returns {test, n_pairs, n_a, n_b, mean_a, mean_b, mean_diff, ci_low, ci_high, t, p, cohens_d,
    rel_diff (mean_diff / mean_a), note}.
    """
    sa, sb = _as_series(a), _as_series(b)
    common = sorted(set(sa.index) & set(sb.index), key=str)
    out = {"test": None, "n_pairs": len(common), "n_a": len(sa), "n_b": len(sb),
           "mean_a": float(sa.mean()) if len(sa) else float("nan"),
           "mean_b": float(sb.mean()) if len(sb) else float("nan"), "mean_diff": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "t": float("nan"), "p": float("nan"),
           "cohens_d": cohens_d(sb.values, sa.values), "rel_diff": float("nan"), "note": ""}
    if not len(sa) or not len(sb):
        out["note"] = "one side has no finite values"
        return out
    if common:
        x, y = sa.loc[common].values, sb.loc[common].values
        d = y - x
        ci = mean_ci(d, confidence)
        out.update(test="paired t-test (scipy.stats.ttest_rel) over common seeds", mean_a=float(x.mean()),
                   mean_b=float(y.mean()), mean_diff=ci["mean"], ci_low=ci["ci_low"], ci_high=ci["ci_high"],
                   cohens_d=cohens_d(y, x), note=ci["note"])
        if len(common) >= 2 and ci["sd"] > 0:
            r = sps.ttest_rel(y, x)
            out.update(t=float(r.statistic), p=float(r.pvalue))
        elif len(common) >= 2:
            out["note"] = "identical differences for every seed: t undefined"
        dropped = (len(sa) - len(common)) + (len(sb) - len(common))
        if dropped:
            out["note"] = "; ".join(x for x in (out["note"], f"{dropped} unpaired run(s) left out") if x)
    else:
        out["test"] = "Welch t-test (scipy.stats.ttest_ind, equal_var=False): no common seeds"
        out["mean_diff"] = out["mean_b"] - out["mean_a"]
        if len(sa) >= 2 and len(sb) >= 2 and (sa.var() > 0 or sb.var() > 0):
            r = sps.ttest_ind(sb.values, sa.values, equal_var=False)
            lo, hi = r.confidence_interval(confidence)
            out.update(t=float(r.statistic), p=float(r.pvalue), ci_low=float(lo), ci_high=float(hi))
        else:
            out["note"] = "fewer than 2 runs on a side (or no variance): no test, CI NaN"
    out["rel_diff"] = out["mean_diff"] / out["mean_a"] if out["mean_a"] else float("nan")
    return out


def compare_variants(df: pd.DataFrame, baseline: str, by: str | list[str] = "seq_len", value: str = "val_loss",
                     variant_col: str = "variant", confidence: float = CONFIDENCE, alpha: float = ALPHA,
                     correction: str = "bonferroni") -> pd.DataFrame:
    """:func:`paired_comparison` of every other variant against ``baseline`` within each level of ``by``,
    paired by seed; p-values Bonferroni-corrected over the table. One row per (by, variant)."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        base = g[g[variant_col] == baseline]
        if base.empty:
            continue
        a = base.groupby("seed")[value].mean()
        for v, gv in g[g[variant_col] != baseline].groupby(variant_col, sort=True):
            res = paired_comparison(a, gv.groupby("seed")[value].mean(), confidence)
            rows.append({**dict(zip(by, key)), "baseline": baseline, "variant": v, "value": value, **res})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    rej, adj = adjust_pvalues(out["p"], correction, alpha)
    out["p_adj"] = adj
    out["significant"] = rej
    return out


__all__ = [
    "ALPHA", "CONFIDENCE", "FRAME_COLUMNS", "adjust_pvalues", "anova_by", "cohens_d", "compare_variants",
    "effect_size_label", "group_summary", "history_frame", "mean_ci", "one_way_anova", "optimal_by",
    "optimal_level", "paired_comparison", "pairwise_ttests", "run_row", "runs_frame", "tukey",
    "tukey_by",
]
