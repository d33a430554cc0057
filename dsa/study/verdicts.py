"""Verdicts on the seed write-ups' exp4 claims, computed from run tables (``dsa.study.runs.runs_table``).

The seeds compared dense attention with a top-k sparse attention whose mask had no causal guard
(``leak_future=True`` here) and reported, at L = 64, 128, 256 with k = L/2:

- validation loss "48-71% better", up to "302% better" at L=256, by their formula (dense - sparse) / sparse;
- accuracy "5-11x better";
- training "1.4-1.7x faster per step" (and, elsewhere, "validation loss within 5% of classic").

Each claim is checked per data set (``source``) against the dense runs of the same L and seed: the seeds'
leaky variant, and causal DSA trained from scratch (``DSA scratch``) and by DeepSeek's recipe
(``DSA deepseek``). Every number in a verdict's evidence is formatted from the table, never typed in.

    table = summary_table(df)                # mean and 95% CI per (source, L, steps, variant) and metric
    verdicts = exp4_verdicts(df)             # one row per (source, claim)

Further down: the exp5 and exp3 hypotheses, and the three ablations of the indexer (KL loss on/off, warm-up
length, number of indexer heads; ``ablation_verdicts`` on a ``dsa.study.runs.ablation_table``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .stats import CONFIDENCE, compare_variants, group_summary, mean_ci, paired_comparison

DENSE = "dense"
LEAKY = "DSA scratch (leaky)"
CAUSAL = ("DSA deepseek", "DSA scratch")
VARIANT_ORDER = (DENSE, LEAKY, "DSA scratch", "DSA deepseek")
# "similar" means within 5% of dense: the seeds' own success criterion ("validation loss within 5% of
# classic"); a gain must also be that large to count as one.
EQUIV_TOL = 0.05
CLAIMED_SPEEDUP = (1.4, 1.7)
SUMMARY_METRICS = ("val_loss", "val_acc", "sparse_time_per_step_s", "val_loss_causal_eval", "val_acc_causal_eval")
GROUP = ("source", "device", "seq_len", "steps")  # a sweep may mix GPUs: every table keeps them apart

CLAIMS = {
    "loss": ("Sparse attention reaches a far lower validation loss than dense",
             "48-71% lower loss; '302% better' at L=256 by (dense - sparse) / sparse"),
    "accuracy": ("Sparse attention's next-token accuracy is far higher than dense",
                 "5-11x better accuracy (e.g. 68.4% vs 7.6% at L=256)"),
    "speed": ("Sparse attention trains faster per step than dense",
              "1.4-1.7x faster per step"),
    "parity": ("Causal sparse attention matches dense quality",
               "validation loss within 5% of classic (the seeds' own success criterion)"),
}


@dataclass(frozen=True)
class Verdict:
    source: str
    claim: str
    seeds_said: str
    verdict: str  # supported | partly supported | refuted | not reproduced | inconclusive | no data
    evidence: str


def seeds_percent_better(dense_loss: float, sparse_loss: float) -> float:
    """The seeds' improvement figure: (dense - sparse) / sparse (1.0 = '100% better'). A loss 4x smaller
    is '300% better'; the usual relative reduction (dense - sparse) / dense would be 75%."""
    return (dense_loss - sparse_loss) / sparse_loss


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


def leak_table(df: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Per (by...): mean val loss of dense, of the leaky variant, of the same leaky models evaluated with
    the causal guard switched on, and of the causal variants, plus the seeds' '% better' of the leaky run.
    Groups without both dense and leaky runs are left out."""
    rows = []
    for key, g in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        dense, leaky = g[g.variant == DENSE], g[g.variant == LEAKY]
        if dense.empty or leaky.empty:
            continue
        row = dict(zip(by, key))
        row["dense"] = float(dense.val_loss.mean())
        row["leaky"] = float(leaky.val_loss.mean())
        row["leaky, causal guard on at eval"] = float(leaky.val_loss_causal_eval.mean())
        for v in CAUSAL:
            sub = g[g.variant == v]
            row[v] = float(sub.val_loss.mean()) if len(sub) else float("nan")
        row["seeds' '% better' (leaky)"] = seeds_percent_better(row["dense"], row["leaky"])
        row["n seeds"] = int(leaky.seed.nunique())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ verdicts
def _ci_text(lo: float, hi: float, confidence: float, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no CI (one seed)"
    return f"{confidence:.0%} CI [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{unit}"


def _mean(g: pd.DataFrame, variant: str, metric: str) -> float:
    sub = g.loc[g.variant == variant, metric] if metric in g.columns else pd.Series(dtype=float)
    sub = pd.to_numeric(sub, errors="coerce").dropna()
    return float(sub.mean()) if len(sub) else float("nan")


def _causal_rows(df: pd.DataFrame, metric: str, confidence: float) -> pd.DataFrame:
    """compare_variants of the causal variants against dense, per L, paired by seed."""
    sub = df[df.variant.isin((DENSE, *CAUSAL))]
    if sub.empty or not (sub.variant == DENSE).any():
        return pd.DataFrame()
    cmp = compare_variants(sub, DENSE, by="seq_len", value=metric, confidence=confidence)
    return cmp if cmp.empty else cmp[cmp.variant.isin(CAUSAL)]


def _lens(df: pd.DataFrame) -> list[int]:
    return sorted(int(x) for x in df.seq_len.dropna().unique())


def loss_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE, tol: float = EQUIV_TOL) -> Verdict:
    """The seeds' loss claim on one data set (``df``: the runs of one source)."""
    claim, said = CLAIMS["loss"]
    if not (df.variant == DENSE).any() or df.variant.isin((LEAKY, *CAUSAL)).sum() == 0:
        return Verdict(source, claim, said, "no data", "needs dense and sparse runs")
    parts, leak_gain, guard_worse = [], [], []
    cmp = _causal_rows(df, "val_loss", confidence)
    causal_better = False
    for l in _lens(df):
        g = df[df.seq_len == l]
        d = _mean(g, DENSE, "val_loss")
        if not math.isfinite(d):
            continue
        bits = [f"L={l}: dense {d:.3f}"]
        lk, ce = _mean(g, LEAKY, "val_loss"), _mean(g, LEAKY, "val_loss_causal_eval")
        if math.isfinite(lk):
            leak_gain.append(lk < d * (1 - tol))
            bits.append(f"leaky {lk:.3f} (\"{seeds_percent_better(d, lk):.0%} better\" by the seeds' formula)")
            if math.isfinite(ce):
                guard_worse.append(ce > d)
                bits.append(f"the same leaky models with the causal guard on at eval {ce:.3f}")
        for _, r in cmp[cmp.seq_len == l].iterrows() if not cmp.empty else []:
            rel = r["mean_diff"] / d
            if rel < -tol and math.isfinite(r["ci_high"]) and r["ci_high"] < 0:
                causal_better = True
            bits.append(f"{r['variant']} {r['mean_b']:.3f} (diff {r['mean_diff']:+.3f}, "
                        f"{_ci_text(r['ci_low'], r['ci_high'], confidence)})")
        parts.append(", ".join(bits))
    evidence = "; ".join(parts)
    if causal_better:
        verdict = "supported"
        evidence = "causal DSA's loss is lower than dense by more than 5% with a CI excluding 0. " + evidence
    elif leak_gain and all(leak_gain):
        verdict = "refuted"
        why = "the large 'gain' appears only in the seeds' leaky variant, whose queries see future tokens"
        if guard_worse and all(guard_worse):
            why += "; switching the causal guard on at evaluation makes the same models worse than dense"
        evidence = why + ". Causal DSA is not better than dense. " + evidence
    elif any(leak_gain):
        verdict = "not reproduced"
        evidence = "the leaky variant beats dense by more than 5% only at some L (too little training here?). " + evidence
    elif df.variant.eq(LEAKY).any():
        verdict = "not reproduced"
        evidence = ("at this size not even the leaky variant beats dense by 5% (it needs more training to learn "
                    "to copy the future tokens it sees); causal DSA is not better either. " + evidence)
    else:
        verdict = "refuted"
        evidence = "causal DSA does not beat dense. " + evidence
    return Verdict(source, claim, said, verdict, evidence)


def accuracy_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE,
                     tol: float = EQUIV_TOL) -> Verdict:
    """The seeds' accuracy claim (next-token accuracy, as a ratio to dense) on one data set."""
    claim, said = CLAIMS["accuracy"]
    if not (df.variant == DENSE).any() or df.variant.isin((LEAKY, *CAUSAL)).sum() == 0:
        return Verdict(source, claim, said, "no data", "needs dense and sparse runs")
    parts, leak_gain, causal_better = [], [], False
    cmp = _causal_rows(df, "val_acc", confidence)
    for l in _lens(df):
        g = df[df.seq_len == l]
        d = _mean(g, DENSE, "val_acc")
        if not math.isfinite(d) or d <= 0:
            continue
        bits = [f"L={l}: dense {d:.1%}"]
        lk, ce = _mean(g, LEAKY, "val_acc"), _mean(g, LEAKY, "val_acc_causal_eval")
        if math.isfinite(lk):
            leak_gain.append(lk > d * (1 + tol))
            bits.append(f"leaky {lk:.1%} ({lk / d:.2f}x dense)")
            if math.isfinite(ce):
                bits.append(f"leaky with the causal guard on at eval {ce:.1%}")
        for _, r in cmp[cmp.seq_len == l].iterrows() if not cmp.empty else []:
            if r["mean_diff"] / d > tol and math.isfinite(r["ci_low"]) and r["ci_low"] > 0:
                causal_better = True
            bits.append(f"{r['variant']} {r['mean_b']:.1%} ({r['mean_b'] / d:.2f}x dense, "
                        f"{_ci_text(r['ci_low'], r['ci_high'], confidence, 1, 100, ' pts')})")
        parts.append(", ".join(bits))
    evidence = "; ".join(parts)
    if causal_better:
        verdict = "supported"
    elif leak_gain and all(leak_gain):
        verdict = "refuted"
        evidence = ("only the leaky variant is far more accurate (it predicts tokens it can see); causal DSA's "
                    "accuracy is dense's. " + evidence)
    elif df.variant.eq(LEAKY).any():
        verdict = "not reproduced"
        evidence = "no variant is clearly more accurate than dense at this size. " + evidence
    else:
        verdict = "refuted"
        evidence = "causal DSA is not more accurate than dense. " + evidence
    return Verdict(source, claim, said, verdict, evidence)


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


def speed_verdict(df: pd.DataFrame, source: str, device: str = "", claimed: tuple[float, float] = CLAIMED_SPEEDUP,
                  confidence: float = CONFIDENCE) -> Verdict:
    """The seeds' speed claim: dense time per step / causal DSA time per step (sparse phase), per L and
    device (times from different GPUs are never compared), paired by seed. Decided on the comparisons whose
    paired CI of the time difference excludes 0; 'inconclusive' when none does or they disagree, or when
    the runs shared their GPU with other training processes (``gpu_shared_by`` > 1)."""
    claim, said = CLAIMS["speed"]
    col = "sparse_time_per_step_s"
    comps, parts = [], []
    devs = df.device.fillna("?")
    several = devs.nunique() > 1
    for l in _lens(df):
        for dev in sorted(devs[df.seq_len == l].unique()):
            g = df[(df.seq_len == l) & (devs == dev) & np.isfinite(pd.to_numeric(df[col], errors="coerce"))]
            dense = g[g.variant == DENSE]
            if dense.empty:
                continue
            bits = [f"L={l}" + (f" ({dev})" if several else "") + f": dense {dense[col].mean() * 1e3:.1f} ms/step"]
            for v in CAUSAL:
                sub = g[g.variant == v]
                if sub.empty:
                    continue
                c = _time_cmp(dense, sub, confidence)
                comps.append(c)
                r = c["ratio"]
                bits.append(f"{v} {c['other_s'] * 1e3:.1f} ms ({r:.2f}x" + (f", i.e. {1 / r:.1f}x slower" if r < 1 else "")
                            + ("" if c["clear"] else ", within noise") + ")")
            parts.append(", ".join(bits))
    if not comps:
        return Verdict(source, claim, said, "no data", "needs timed dense and causal DSA runs")
    shared = _shared_gpu(df[df.variant.isin([DENSE, *CAUSAL])])
    if shared > 1:
        # time-sliced with other training processes: a step's time includes waiting for them
        return Verdict(source, claim, said, "inconclusive",
                       f"not a speed measurement: these runs were timed while up to {shared} training "
                       "processes time-shared one GPU, so a step's time includes waiting for the others "
                       "(notebook 05's step profile times dense and DSA steps alone, in one process). "
                       + "; ".join(parts))
    # decided on the comparisons whose paired CI excludes 0; the others are reported as "within noise"
    clear = [c["ratio"] for c in comps if c["clear"]]
    ratios = [c["ratio"] for c in comps]
    where = f" on {device}" if device else ""
    evidence = "; ".join(parts)
    noisy_note = ("" if len(clear) == len(comps) else
                  f" ({len(comps) - len(clear)} of {len(comps)} comparisons within noise, not counted)")
    if not clear or (min(clear) < 1 <= max(clear)):
        verdict = "inconclusive"
        evidence = f"{NOISY} ({device or 'this device'}). " + evidence
    elif max(clear) < 1:
        verdict = "refuted"
        evidence = (f"causal DSA is slower per step than dense{where} wherever the difference is beyond noise"
                    f"{noisy_note}: {min(clear):.2f}x to {max(clear):.2f}x dense's speed. At these short L the "
                    "indexer, top-k and gather cost more than the attention they save. " + evidence)
    elif min(ratios) >= claimed[0] and len(clear) == len(comps):
        verdict = "supported"
    elif max(clear) >= claimed[0]:
        verdict = "partly supported"
    else:
        verdict = "refuted"
        evidence = f"DSA is at most {max(ratios):.2f}x as fast as dense{where}, short of {claimed[0]}x. " + evidence
    return Verdict(source, claim, said, verdict, evidence)


def parity_verdict(df: pd.DataFrame, source: str, confidence: float = CONFIDENCE, tol: float = EQUIV_TOL) -> Verdict:
    """Causal DSA within ``tol`` (relative) of dense's validation loss at every L."""
    claim, said = CLAIMS["parity"]
    cmp = _causal_rows(df, "val_loss", confidence)
    if cmp.empty:
        return Verdict(source, claim, said, "no data", "needs dense and causal DSA runs with common seeds")
    rel = cmp["mean_diff"] / cmp["mean_a"]
    parts = [f"L={int(r.seq_len)} {r.variant}: {r.mean_b:.3f} vs dense {r.mean_a:.3f} ({x:+.1%}, "
             f"{_ci_text(r.ci_low, r.ci_high, confidence)})" for (_, r), x in zip(cmp.iterrows(), rel)]
    evidence = "; ".join(parts)
    if (rel.abs() <= tol).all():
        verdict = "supported"
        evidence = f"every causal DSA run is within {tol:.0%} of dense ({rel.min():+.1%} to {rel.max():+.1%}). " + evidence
    elif (rel <= tol).all():
        verdict = "supported"
        evidence = "causal DSA is no worse than dense by more than 5% (better in places). " + evidence
    else:
        verdict = "partly supported" if (rel.abs() <= tol).any() else "refuted"
        evidence = f"causal DSA is worse than dense by up to {rel.max():+.1%}. " + evidence
    return Verdict(source, claim, said, verdict, evidence)


def exp4_verdicts(df: pd.DataFrame, confidence: float = CONFIDENCE, tol: float = EQUIV_TOL) -> pd.DataFrame:
    """Every claim's verdict for every source in ``df`` (a runs_table of exp4-like runs); runs with
    different step counts within one source are judged separately (source label gets ', N steps')."""
    rows = []
    for (source, steps), g in df.groupby(["source", "steps"], sort=False):
        label = source if df[df.source == source].steps.nunique() == 1 else f"{source}, {steps} steps"
        devices = sorted(str(x) for x in g.device.dropna().unique())
        dev = " / ".join(devices)
        for v in (loss_verdict(g, label, confidence, tol), accuracy_verdict(g, label, confidence, tol),
                  speed_verdict(g, label, dev, confidence=confidence), parity_verdict(g, label, confidence, tol)):
            rows.append(asdict(v))
    return pd.DataFrame(rows, columns=["source", "claim", "seeds_said", "verdict", "evidence"])


# ------------------------------------------------------------------------------------------- exp5
def exp5_verdict(df: pd.DataFrame, alpha: float = 0.05, confidence: float = CONFIDENCE) -> dict:
    """The seeds' exp5 hypothesis ("the optimal sparsity ratio k/L decreases as L grows") on a sweep over
    ratio x L x seeds (``df``: a runs_table with ``ratio``; dense runs have ratio 1.0 and serve as the
    reference, not as a ratio).

    Returns {'verdict', 'summary' (one sentence), 'per_len' (list of one line per L), 'optimal', 'anova',
    'vs_dense'} where the three frames come from dsa.study.stats (optimal_by, anova_by over the DSA ratios with
    Bonferroni over the L, compare_variants of each ratio against dense paired by seed).
    verdict: 'supported' (ANOVA significant at >= 2 L and the best ratio strictly decreasing with L),
    'not supported' (no L where the ratios differ beyond noise, or a best ratio that does not decrease),
    'no data'.
    """
    from .stats import anova_by, optimal_by  # noqa: PLC0415

    sparse = df[df.attention == "dsa"]
    out = {"verdict": "no data", "summary": "", "per_len": [], "optimal": pd.DataFrame(), "anova": pd.DataFrame(),
           "vs_dense": pd.DataFrame()}
    if sparse.empty or sparse.ratio.nunique() < 2:
        out["summary"] = "needs DSA runs at two or more ratios"
        return out
    opt = optimal_by(sparse, by="seq_len", factor="ratio", alpha=alpha, confidence=confidence)
    an = anova_by(sparse, by="seq_len", factor="ratio", alpha=alpha)
    d = df.assign(arm=np.where(df.attention == "dense", DENSE, "k/L=" + df.ratio.map(lambda r: f"{r:g}")))
    vs = compare_variants(d, DENSE, by="seq_len", variant_col="arm", confidence=confidence, alpha=alpha)
    out.update(optimal=opt, anova=an, vs_dense=vs)
    lines = []
    for _, o in opt.iterrows():
        l = int(o.seq_len)
        a = an[an.seq_len == o.seq_len].iloc[0]
        ties = o["ratios_not_worse"]
        n_lv = sparse[sparse.seq_len == o.seq_len].ratio.nunique()
        test = (f"ANOVA F={a.F:.2f}, p={a.p:.3g}, Bonferroni p={a.p_adj:.3g}" if math.isfinite(a.F)
                else f"no ANOVA ({a.note})")
        ci = (f"[{o.ci_low:.3f}, {o.ci_high:.3f}]" if math.isfinite(o.ci_low) else "(no CI)")
        tie_txt = ("every ratio is within noise of it (Tukey HSD)" if len(ties) >= n_lv else
                   f"not significantly worse (Tukey HSD): {', '.join(f'{t:g}' for t in ties)}")
        line = f"L={l}: best k/L={o.best_ratio:g}, loss {o['mean']:.3f} {ci}; {tie_txt}; {test}"
        if not vs.empty:
            sub = vs[(vs.seq_len == o.seq_len)]
            better = sub[sub.significant & (sub.mean_diff < 0)].variant.tolist()
            worse = sub[sub.significant & (sub.mean_diff > 0)].variant.tolist()
            line += (f"; vs dense (paired, Bonferroni): better {', '.join(better) or 'none'}, "
                     f"worse {', '.join(worse) or 'none'}")
        lines.append(line)
    out["per_len"] = lines
    sig = an[an.significant]
    best = opt.set_index("seq_len")["best_ratio"]
    decreasing = len(best) >= 2 and all(b2 < b1 for b1, b2 in zip(best.values[:-1], best.values[1:]))
    if len(sig) >= 2 and decreasing:
        out["verdict"] = "supported"
        out["summary"] = "the ratios differ significantly and the best ratio falls as L grows"
    elif sig.empty:
        out["verdict"] = "not supported"
        out["summary"] = (f"at no L do the ratios differ beyond noise (ANOVA, Bonferroni over {len(an)} lengths, "
                          f"alpha {alpha:g}): there is no optimal ratio to trend")
    else:
        out["verdict"] = "not supported"
        out["summary"] = ("the best ratio does not decrease with L ("
                          + ", ".join(f"L={int(l)}: {b:g}" for l, b in best.items()) + ")")
    return out


# ------------------------------------------------------------------------------------------- exp3
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


# -------------------------------------------------------------------------------------- ablations
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


__all__ = [
    "ABLATION_CLAIMS",
    "ABLATION_VERDICTS",
    "NOT_ENOUGH",
    "CAUSAL",
    "CLAIMS",
    "DENSE",
    "EQUIV_TOL",
    "LEAKY",
    "VARIANT_ORDER",
    "Verdict",
    "ablation_contrasts",
    "ablation_verdicts",
    "accuracy_verdict",
    "EXP3_CLAIMS",
    "exp3_verdicts",
    "exp4_verdicts",
    "exp5_verdict",
    "format_mean_ci",
    "format_summary",
    "indexer_heads_verdict",
    "kl_ablation_verdict",
    "leak_table",
    "loss_verdict",
    "parity_verdict",
    "seeds_percent_better",
    "speed_verdict",
    "summary_table",
    "trend_verdict",
    "warmup_verdict",
]
