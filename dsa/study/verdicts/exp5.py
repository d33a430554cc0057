"""Notebook 03's verdict: the seeds' exp5 hypothesis, the optimal sparsity ratio k/L falls as L grows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dsa.study.stats import CONFIDENCE, compare_variants

from .common import DENSE


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
    from dsa.study.stats import anova_by, optimal_by  # noqa: PLC0415

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
