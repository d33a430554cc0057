"""Notebook 06's verdicts: the three ablations of the indexer (KL loss on / off, warm-up length, number of
indexer heads), on a ``dsa.study.runs.ablation_table``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd

from dsa.study.stats import CONFIDENCE, compare_variants, mean_ci, paired_comparison

from .common import Verdict, _ci_text, _shared_note, _time_cmp

# The seeds' write-ups listed these ablations as future work and never ran them. Each verdict is computed
# from an ablation table (dsa.study.runs.ablation_table: columns level, arm, seed, val_loss, val_acc, recall,
# sparse_time_per_step_s, device) of ONE data set, paired by seed.
ABLATION_CLAIMS = {
    "kl": ("Training the indexer by its KL loss makes DSA better",
           "ablation promised, never run; the seeds' indexer was never trained (what 'KL off' amounts to)"),
    "warmup": ("A longer dense warm-up of the indexer lowers the final loss",
               "ablation promised (warm-up length), never run"),
    "heads": ("More indexer heads select better and lower the loss (at a cost in time)",
              "ablation promised (number of indexer heads), never run"),
}
NOT_ENOUGH = "not enough data"
MIN_SEEDS = 2  # an arm counts with at least this many seeds (a CI needs two)


def _per_seed(df: pd.DataFrame, level: float, metric: str) -> pd.Series:
    sub = df[df.level == level]
    v = pd.to_numeric(sub[metric], errors="coerce") if metric in sub.columns else pd.Series(dtype=float)
    return v.groupby(sub.seed).mean().dropna()


def _paired(df: pd.DataFrame, base: float, other: float, metric: str, confidence: float) -> dict:
    """paired_comparison of ``metric`` at level ``other`` against level ``base`` (mean_diff = other - base)."""
    return paired_comparison(_per_seed(df, base, metric), _per_seed(df, other, metric), confidence)


def _arm_name(df: pd.DataFrame, level: float) -> str:
    names = df.loc[df.level == level, "arm"]
    return str(names.iloc[0]) if len(names) else str(level)


def _single_device(df: pd.DataFrame) -> bool:
    return df.device.fillna("?").nunique() == 1


def _seeds_text(df: pd.DataFrame) -> str:
    have = df.dropna(subset=["val_loss"]).groupby("level").seed.nunique()
    return ", ".join(f"{_arm_name(df, lv)}: {n} seed{'s' if n != 1 else ''}" for lv, n in have.items()) or "no runs"


def kl_ablation_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE) -> Verdict:
    """With the indexer's KL loss (level 1) vs without (level 0), paired by seed: differences (with - without)
    of validation loss, indexer recall, accuracy and time per step (sparse phase; only when one device
    timed every run), each with its t CI over the seed pairs.

    verdict: 'supported' (the loss CI lies below 0), 'refuted' (above 0), 'partly supported' (loss within
    noise but recall clearly higher with KL: the indexer learns to select, the LM does not show it yet),
    'inconclusive', or 'not enough data' (an arm missing, or fewer than 2 seeds run in both arms)."""
    claim, said = ABLATION_CLAIMS["kl"]
    on, off = _per_seed(df, 1, "val_loss"), _per_seed(df, 0, "val_loss")
    common = sorted(set(on.index) & set(off.index))
    if on.empty or off.empty or len(common) < MIN_SEEDS:
        return Verdict(source, claim, said, NOT_ENOUGH,
                       f"needs both arms with at least {MIN_SEEDS} common seeds; have {_seeds_text(df)}")
    loss = _paired(df, 0, 1, "val_loss", confidence)
    rec = _paired(df, 0, 1, "recall", confidence)
    acc = _paired(df, 0, 1, "val_acc", confidence)
    parts = [f"val loss {loss['mean_b']:.3f} with KL vs {loss['mean_a']:.3f} without: {loss['mean_diff']:+.3f} "
             f"nats/token ({loss['rel_diff']:+.1%}), {_ci_text(loss['ci_low'], loss['ci_high'], confidence)}"]
    rec_ok = rec["n_pairs"] > 0 and math.isfinite(rec["mean_diff"])
    if rec_ok:
        parts.append(f"indexer recall {rec['mean_b']:.3f} vs {rec['mean_a']:.3f}: {rec['mean_diff']:+.3f} "
                     f"({_ci_text(rec['ci_low'], rec['ci_high'], confidence)})")
    else:
        parts.append("indexer recall not recorded")
    if acc["n_pairs"] and math.isfinite(acc["mean_diff"]):
        parts.append(f"accuracy {acc['mean_b']:.1%} vs {acc['mean_a']:.1%} "
                     f"({_ci_text(acc['ci_low'], acc['ci_high'], confidence, 1, 100, ' pts')})")
    col = "sparse_time_per_step_s"
    if _single_device(df) and len(_per_seed(df, 1, col)) and len(_per_seed(df, 0, col)):
        c = _time_cmp(df[df.level == 0], df[df.level == 1], confidence)
        parts.append(f"time per step (sparse phase) {1e3 * c['other_s']:.1f} ms with KL vs {1e3 * c['base_s']:.1f} ms "
                     f"without ({1 / c['ratio']:.2f}x the time" + ("" if c["clear"] else ", within noise") + ")"
                     + _shared_note(df))
    parts.append(f"{loss['n_pairs']} seeds paired")
    evidence = "; ".join(parts)
    lo, hi = loss["ci_low"], loss["ci_high"]
    if _below_zero(lo, hi):
        verdict = "supported"
        evidence = "the indexer trained by its KL loss gives a lower loss, with a CI excluding 0. " + evidence
    elif _above_zero(lo, hi):
        verdict = "refuted"
        evidence = "the loss is higher with the KL loss, with a CI excluding 0. " + evidence
    elif rec_ok and _above_zero(rec["ci_low"], rec["ci_high"]):
        verdict = "partly supported"
        evidence = ("the trained indexer keeps clearly more of the dense attention mass, but the loss difference "
                    "is within noise. " + evidence)
    else:
        verdict = "inconclusive"
        evidence = "no difference beyond noise between the arms. " + evidence
    return Verdict(source, claim, said, verdict, evidence)


def _below_zero(lo: float, hi: float, tol: float = 1e-9) -> bool:
    """A CI entirely below 0 (by more than rounding: identical runs must not read as an effect)."""
    return math.isfinite(lo) and math.isfinite(hi) and hi < -tol


def _above_zero(lo: float, hi: float, tol: float = 1e-9) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and lo > tol


def _seed_slopes(df: pd.DataFrame, metric: str, x_of: dict) -> pd.Series:
    """Per seed, the least-squares slope of ``metric`` against x (x_of: level -> x) over that seed's arms
    (seeds with fewer than two arms are left out)."""
    out = {}
    for seed, g in df.groupby("seed"):
        v = pd.to_numeric(g[metric], errors="coerce") if metric in g.columns else pd.Series(dtype=float)
        ok = np.isfinite(v.values)
        x = g.level.map(x_of).values[ok]
        if len(np.unique(x)) >= 2:
            out[seed] = float(np.polyfit(x, v.values[ok], 1)[0])
    return pd.Series(out, dtype=float)


def trend_verdict(df: pd.DataFrame, source: str, claim: str, seeds_said: str, *, log2: bool = False,
                  what: str = "level", confidence: float = CONFIDENCE) -> Verdict:
    """Does a larger value of the ablated field (``level``) lower the loss? Judged on the arms with at least
    2 seeds (at least 2 such arms needed, else 'not enough data'):

    - trend: per seed, the least-squares slope of the val loss against the level (``log2``: against
      log2(level), i.e. per doubling), then the mean slope over seeds with its t CI; reported as the fitted
      change across the range of levels (nats/token);
    - the best and the worst arm (lowest / highest mean loss), paired by seed; whether the arm means are
      monotone in the level; the same trend for the indexer recall; the time per step per arm (one device).

    verdict: 'supported' (the loss trend's CI lies below 0), 'refuted' (above 0: larger is worse),
    'partly supported' (loss trend within noise, recall trend clearly up), 'inconclusive'."""
    counts = df.dropna(subset=["val_loss"]).groupby("level").seed.nunique()
    arms = sorted(counts[counts >= MIN_SEEDS].index)
    if len(arms) < 2:
        return Verdict(source, claim, seeds_said, NOT_ENOUGH,
                       f"needs at least 2 arms with at least {MIN_SEEDS} seeds each; have {_seeds_text(df)}")
    d = df[df.level.isin(arms)]
    x_of = {lv: (math.log2(lv) if log2 else float(lv)) for lv in arms}
    span = x_of[arms[-1]] - x_of[arms[0]]
    slopes = _seed_slopes(d, "val_loss", x_of)
    if len(slopes) < MIN_SEEDS:
        return Verdict(source, claim, seeds_said, NOT_ENOUGH,
                       f"needs at least {MIN_SEEDS} seeds run at two or more arms; have {_seeds_text(df)}")
    ci = mean_ci(slopes.values * span, confidence)
    means = d.groupby("level").val_loss.mean()
    best, worst = float(means.idxmin()), float(means.idxmax())
    bw = _paired(d, best, worst, "val_loss", confidence)
    steps = np.diff(means.values)
    mono = " monotonically" if len(steps) > 1 else ""
    shape = (f"falls{mono}" if (steps < 0).all() else f"rises{mono}" if (steps > 0).all() else "is not monotone")
    rng = f"{_arm_name(d, arms[0])} to {_arm_name(d, arms[-1])}"
    parts = ["mean val loss per arm: " + ", ".join(f"{_arm_name(d, lv)} {m:.3f}" for lv, m in means.items())
             + f" (the loss {shape} in the {what})",
             "linear trend per seed" + (" (in log2 of the level)" if log2 else "")
             + f": fitted change from {rng} {ci['mean']:+.4f} nats/token, "
             + _ci_text(ci["ci_low"], ci["ci_high"], confidence, 4)]
    if len(arms) > 2:  # with two arms this is the trend again
        parts.append(f"best arm {_arm_name(d, best)}, worst {_arm_name(d, worst)}: worst - best "
                     f"{bw['mean_diff']:+.4f} nats/token ({_ci_text(bw['ci_low'], bw['ci_high'], confidence, 4)})")
    rslopes = _seed_slopes(d, "recall", x_of)
    rci = mean_ci(rslopes.values * span, confidence) if len(rslopes) else None
    if rci is not None and rci["n"]:
        rmeans = d.groupby("level").recall.mean()
        parts.append("indexer recall per arm: " + ", ".join(f"{_arm_name(d, lv)} {m:.3f}" for lv, m in rmeans.items())
                     + f"; fitted change {rci['mean']:+.3f} ({_ci_text(rci['ci_low'], rci['ci_high'], confidence)})")
    col = "sparse_time_per_step_s"
    if _single_device(d) and col in d.columns and d[col].notna().any():
        tmeans = d.groupby("level")[col].mean()
        parts.append("time per step (sparse phase): " + ", ".join(f"{_arm_name(d, lv)} {1e3 * t:.1f} ms"
                                                                  for lv, t in tmeans.items() if math.isfinite(t))
                     + _shared_note(d))
    parts.append(f"{len(slopes)} seeds, {len(arms)} arms" + (f" (arms with fewer than {MIN_SEEDS} seeds left out: "
                 + ", ".join(_arm_name(df, lv) for lv in counts.index if lv not in arms) + ")"
                 if len(arms) < len(counts) else ""))
    evidence = "; ".join(parts)
    lo, hi = ci["ci_low"], ci["ci_high"]
    if _below_zero(lo, hi):
        verdict, lead = "supported", f"the loss falls as the {what} grows, with a CI excluding 0. "
    elif _above_zero(lo, hi):
        verdict, lead = "refuted", f"the loss rises as the {what} grows, with a CI excluding 0. "
    elif rci is not None and _above_zero(rci["ci_low"], rci["ci_high"]):
        verdict, lead = "partly supported", (f"the indexer recall rises with the {what}, but the loss trend is "
                                             "within noise. ")
    else:
        verdict, lead = "inconclusive", f"no trend of the loss in the {what} beyond noise. "
    return Verdict(source, claim, seeds_said, verdict, lead + evidence)


def warmup_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE) -> Verdict:
    """:func:`trend_verdict` for the warm-up ablation (level = warm-up steps, linear)."""
    return trend_verdict(df, source, *ABLATION_CLAIMS["warmup"], what="warm-up length", confidence=confidence)


def indexer_heads_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE) -> Verdict:
    """:func:`trend_verdict` for the indexer-heads ablation (level = heads, trend per doubling)."""
    return trend_verdict(df, source, *ABLATION_CLAIMS["heads"], log2=True, what="number of indexer heads",
                         confidence=confidence)


ABLATION_VERDICTS = {"kl": kl_ablation_verdict, "warmup": warmup_verdict, "heads": indexer_heads_verdict}


def ablation_verdicts(df: pd.DataFrame, ablation: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The ablation's verdict for every source in ``df`` (an ablation_table, several sources stacked):
    rows source, claim, seeds_said, verdict, evidence."""
    if ablation not in ABLATION_VERDICTS:
        raise ValueError(f"ablation must be one of {sorted(ABLATION_VERDICTS)}, got {ablation!r}")
    rows = [asdict(ABLATION_VERDICTS[ablation](g, str(src), confidence=confidence))
            for src, g in df.groupby("source", sort=False)]
    return pd.DataFrame(rows, columns=["source", "claim", "seeds_said", "verdict", "evidence"])


def ablation_contrasts(df: pd.DataFrame, metrics: Sequence[str] = ("val_loss", "recall", "val_acc"),
                       confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each arm against the reference arm (the lowest level: KL off, no warm-up, one head) per source and
    metric, paired by seed (dsa.study.stats.compare_variants; mean_diff = arm - reference; Bonferroni over the
    table). Empty when no source has two arms."""
    parts = []
    for src, g in df.groupby("source", sort=False):
        if g.level.nunique() < 2:
            continue
        base = _arm_name(g, g.level.min())
        for m in metrics:
            if m not in g.columns or not np.isfinite(pd.to_numeric(g[m], errors="coerce")).any():
                continue
            c = compare_variants(g.assign(_src=src), base, by="_src", value=m, variant_col="arm",
                                 confidence=confidence)
            if not c.empty:
                parts.append(c.rename(columns={"_src": "source"}))
    if not parts:
        return pd.DataFrame(columns=["source", "baseline", "variant", "value", "n_pairs", "mean_a", "mean_b",
                                     "mean_diff", "ci_low", "ci_high", "p"])
    out = pd.concat(parts, ignore_index=True)
    order = {a: lv for a, lv in zip(df.arm, df.level)}
    out["_o"] = out.variant.map(order)
    return out.sort_values(["source", "value", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
