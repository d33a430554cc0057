"""What the independent recomputation of the recorded sweeps found (issue 17, item 5), each number computed
from the records under ``data/gpu/``, never typed in:

* :func:`devices_by` - which GPU ran which part of a sweep (exp5 at L = 64: an H100 and an H200);
* :func:`exp5_family` - every k/L ratio against dense at every L, paired by seed: the whole Bonferroni family
  (30 tests), with the number of seeds in which the arm is worse than dense;
* :func:`outliers` - runs far from what their arm and seed predict (residuals of ``loss ~ arm + seed`` per L);
* :func:`heads_analyses` - the indexer-heads ablation's loss trend by two analyses side by side;
* :func:`parity_equivalence` - dense vs each DSA arm by equivalence tests with a stated margin (TOST);
* :func:`keys_per_query` / :func:`equal_compute` - exp3's arms with their keys per query, and each adaptive arm
  against the fixed-k loss interpolated at the same keys per query;
* :func:`replicate_noise` - the noise floor from configurations recorded more than once;
* :func:`provenance_gaps` - records with an unknown dirty flag or a short commit hash.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .equivalence import MARGINS, blocked_slope, noise_floor, tost_paired, verdict_text
from .stats import compare_variants


def devices_by(df: pd.DataFrame, by: str = "seq_len") -> pd.DataFrame:
    """Runs per (``by``, device): one row per ``by`` level with the devices and their run counts."""
    rows = []
    for lv, g in df.groupby(by):
        counts = g.device.value_counts()
        rows.append({by: lv, "runs": len(g), "devices": ", ".join(f"{d} ({n})" for d, n in counts.items()),
                     "mixed": len(counts) > 1})
    return pd.DataFrame(rows)


def _with_ratio_arm(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    d["ratio_arm"] = np.where(d.variant == "dense", "dense", "k/L=" + d.ratio.map(lambda r: f"{r:g}"))
    return d


def exp5_family(df: pd.DataFrame, value: str = "val_loss", alpha: float = 0.05) -> pd.DataFrame:
    """Every ratio against dense at every L, paired by seed (``dsa.study.stats.compare_variants``), Bonferroni
    over all of them; plus ``family`` (the number of tests), ``seeds_worse`` (seeds in which the arm's loss
    is above dense's) and ``n_seeds``."""
    d = _with_ratio_arm(df)
    out = compare_variants(d, "dense", by="seq_len", value=value, variant_col="ratio_arm", alpha=alpha)
    worse = []
    for _, r in out.iterrows():
        g = d[d.seq_len == r.seq_len]
        a = g[g.ratio_arm == "dense"].groupby("seed")[value].mean()
        b = g[g.ratio_arm == r.variant].groupby("seed")[value].mean()
        common = a.index.intersection(b.index)
        worse.append((int((b[common] > a[common]).sum()), len(common)))
    out["seeds_worse"], out["n_seeds"] = [w for w, _ in worse], [n for _, n in worse]
    out["family"] = len(out)
    return out


def outliers(df: pd.DataFrame, arm: str, value: str = "val_loss", by: str = "seq_len", top: int = 3) -> pd.DataFrame:
    """The ``top`` runs with the largest standardised residual of the OLS fit ``value ~ C(arm) + C(seed)`` within
    each level of ``by`` (what their arm and their seed predict), largest first over all levels."""
    import statsmodels.formula.api as smf  # noqa: PLC0415

    rows = []
    for lv, g in df.groupby(by):
        g = g.dropna(subset=[value]).copy()
        if g[arm].nunique() < 2 or g.seed.nunique() < 2:
            continue
        g["_a"], g["_s"], g["_y"] = g[arm].astype(str), g.seed.astype(str), g[value].astype(float)
        fit = smf.ols("_y ~ C(_a) + C(_s)", data=g).fit()
        z = fit.resid / math.sqrt(fit.scale) if fit.scale > 0 else fit.resid * 0
        for i in g.index:
            rows.append({by: lv, "arm": g.at[i, arm], "top_k": g.at[i, "top_k"], "seed": g.at[i, "seed"],
                         value: g.at[i, value], "predicted": float(fit.fittedvalues[i]),
                         "residual": float(fit.resid[i]), "z": float(z[i])})
    out = pd.DataFrame(rows)
    return (out.reindex(out.z.abs().sort_values(ascending=False).index).head(top).reset_index(drop=True)
            if len(out) else out)


def heads_analyses(df: pd.DataFrame, value: str = "val_loss") -> pd.DataFrame:
    """The fitted change of ``value`` from the fewest to the most indexer heads (``level``), against log2(heads):
    (1) per-seed least-squares slopes, their mean and t CI over seeds (what notebook 06 reports);
    (2) one OLS fit with one intercept per seed (seed-blocked, residual df from every run)."""
    from scipy import stats as sps  # noqa: PLC0415

    d = df.dropna(subset=[value]).copy()
    d["log2_heads"] = np.log2(d.level.astype(float))
    span = float(d.log2_heads.max() - d.log2_heads.min())
    slopes = [np.polyfit(g.log2_heads, g[value].astype(float), 1)[0] * span
              for _, g in d.groupby("seed") if g.log2_heads.nunique() >= 2]
    n = len(slopes)
    m, se = float(np.mean(slopes)), float(np.std(slopes, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    t = sps.t.ppf(0.975, n - 1) if n > 1 else math.nan
    b = blocked_slope(d, "log2_heads", value, span=span)
    return pd.DataFrame([
        {"analysis": "per-seed slopes, t CI over seeds", "change": m, "ci_low": m - t * se, "ci_high": m + t * se,
         "df": n - 1},
        {"analysis": "seed-blocked OLS (value ~ log2 heads + seed)", "change": b["change"], "ci_low": b["ci_low"],
         "ci_high": b["ci_high"], "df": b["df"]},
    ])


def parity_equivalence(df: pd.DataFrame, arm: str, baseline: str = "dense", by: Sequence[str] = ("seq_len",),
                       value: str = "val_loss", margin: float | None = None,
                       noise: float | None = None) -> pd.DataFrame:
    """Each arm against ``baseline`` within each level of ``by``, paired by seed, by TOST with ``margin``
    (default MARGINS[value]); one row per (by, arm) with the verdict sentence (resolution and noise floor)."""
    margin = MARGINS.get(value, MARGINS["loss"]) if margin is None else margin
    rows = []
    for key, g in df.groupby(list(by)):
        key = key if isinstance(key, tuple) else (key,)
        base = g[g[arm] == baseline].groupby("seed")[value].mean()
        if base.empty:
            continue
        for lv, ga in g[g[arm] != baseline].groupby(arm):
            res = tost_paired(base, ga.groupby("seed")[value].mean(), margin)
            rows.append({**dict(zip(by, key)), "arm": lv, **res, "noise_floor": noise,
                         "verdict_text": verdict_text(res, noise=noise)})
    return pd.DataFrame(rows)


def keys_per_query(records: Iterable[dict]) -> pd.DataFrame:
    """Per exp3 run: its arm, seed, loss and the keys each query attended to (``final.mean_k``; dense: the
    causal mean (L + 1) / 2; a fixed k: the recorded mean, which counts the first queries' shorter past)."""
    from .runs import arm_label  # noqa: PLC0415

    rows = []
    for r in records:
        c, f = r.get("config") or {}, r.get("final") or {}
        length = c.get("seq_len")
        k = f.get("mean_k") if c.get("attention") == "dsa" else (length + 1) / 2
        rows.append({"arm": arm_label(c), "policy": c.get("k_policy", "fixed") if c.get("attention") == "dsa"
                     else "dense", "top_k": c.get("top_k"), "seed": r.get("seed", c.get("seed")),
                     "seq_len": length, "keys_per_query": k, "val_loss": f.get("val_loss")})
    return pd.DataFrame(rows)


def equal_compute(kpq: pd.DataFrame) -> pd.DataFrame:
    """Each adaptive arm against the fixed-k arms at its own keys per query: per seed, the fixed arms' loss
    interpolated linearly in keys per query (within their range), then paired over seeds."""
    fixed = kpq[kpq.policy == "fixed"]
    rows = []
    for armname, g in kpq[~kpq.policy.isin(["fixed", "dense"])].groupby("arm"):
        diffs = {}
        for _, r in g.iterrows():
            f = fixed[fixed.seed == r.seed].sort_values("keys_per_query")
            if len(f) >= 2 and f.keys_per_query.min() <= r.keys_per_query <= f.keys_per_query.max():
                diffs[r.seed] = r.val_loss - float(np.interp(r.keys_per_query, f.keys_per_query, f.val_loss))
        res = tost_paired(dict.fromkeys(diffs, 0.0), diffs, MARGINS["val_loss"])
        rows.append({"arm": armname, "keys_per_query": float(g.keys_per_query.mean()),
                     "fixed_k_range": f"{fixed.keys_per_query.min():.0f}-{fixed.keys_per_query.max():.0f}",
                     "n_seeds": len(diffs), "diff_vs_fixed_at_equal_keys": res["diff"], "verdict": res["verdict"],
                     "verdict_text": verdict_text(res)})
    return pd.DataFrame(rows)


# Config fields that name, place or display a run without changing what it computes.
_NOT_IDENTITY = ("name", "out", "progress", "device", "impl", "precision", "eval_every")


def config_identity(record: dict) -> str:
    """The record's configuration (seed included) without the fields that do not change what it computes."""
    import json  # noqa: PLC0415

    c = {k: v for k, v in (record.get("config") or {}).items() if k not in _NOT_IDENTITY}
    return json.dumps(c, sort_keys=True, default=str)


def replicate_noise(records: Iterable[dict], value: str = "val_loss") -> dict:
    """:func:`dsa.study.equivalence.noise_floor` over records of one configuration and seed recorded more than
    once (:func:`config_identity`; e.g. the same DSA arm in exp3 and in the KL ablation), with the groups listed."""
    rows = [{"identity": config_identity(r), "name": r.get("name"), value: (r.get("final") or {}).get(value)}
            for r in records]
    df = pd.DataFrame(rows, columns=["identity", "name", value])
    res = noise_floor(df, ["identity"], value)
    groups = [f"{g.name.iloc[0]}: {len(g)} runs, range {g[value].max() - g[value].min():.4f}"
              for _, g in df.groupby("identity") if len(g) >= 2]
    return {**res, "groups": groups}


def provenance_gaps(records: Iterable[dict]) -> dict:
    """Counts of records whose provenance has an unknown ``git_dirty`` or a commit shorter than 40 hex digits."""
    provs = [r.get("provenance") or {} for r in records]
    return {"records": len(provs), "dirty_unknown": sum(p.get("git_dirty") is None for p in provs),
            "short_hash": sum(len(str(p.get("git_commit") or "")) < 40 for p in provs)}


__all__ = ["devices_by", "equal_compute", "exp5_family", "heads_analyses", "keys_per_query", "outliers",
           "parity_equivalence", "provenance_gaps", "replicate_noise", "config_identity"]
