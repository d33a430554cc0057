# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · How sparse? The seeds' exp5: k/L ratio × sequence length × seeds
#
# The seeds' exp5 asked for the **optimal sparsity ratio** $k/L$ per sequence length and hypothesised
# that it *falls* as $L$ grows (short sequences need most of their context, long ones suffer from
# "attention dilution"). They designed it with 3 runs per configuration, one-way ANOVA per $L$, Tukey's
# HSD, Cohen's d and a Bonferroni correction — and never ran it ("Results will be populated after running
# the experiment").
#
# Here it runs as designed (`dsa.train.experiments.exp5_sparsity`): causal DSA with DeepSeek's recipe at
# $k/L \in \{0.25, 0.33, 0.5, 0.67, 0.75, 0.9\}$, seeds 0-2, and a dense model at each $L$ as the
# reference ($k/L = 1$). All statistics come from `dsa.study.stats` (scipy / statsmodels).
#
# The CPU (`small`) run is a tiny version — a small model, a few dozen steps — that exercises the whole
# analysis; at that size the differences between ratios are noise, and the notebook says so rather than
# ranking noise. The recorded GPU sweep (`data/gpu/exp5_sparsity.jsonl`, 500 steps, L up to 1024) is
# shown when it exists.

# %%
import sys
from pathlib import Path

try:
    import dsa  # noqa: F401
except ImportError:  # opened from notebooks/ without the package installed: use the repository copy
    sys.path.insert(0, str(Path.cwd().parent))

from dsa.train.experiments import SPARSITY_RATIOS
from dsa.study.notebook_params import satisfies, snapshot_namespace
from dsa.study.runs import experiment_levels, fresh_run_rules, valid_list
from dsa.study.setup import setup_notebook

_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
device: str = "cpu"  # device of the fresh runs: "cpu", "cuda" or "auto"
run_fresh: bool = True  # train a fresh exp5 sweep in this notebook
fresh_size: str = "small"  # experiment size of the fresh sweep (dsa.train.experiments): "small" (CPU) or "full" (GPU)
fresh_seq_lens: str = "64,128"  # comma-separated subset of the size's sequence lengths (empty: all)
fresh_ratios: str = "0.25,0.5,0.9"  # comma-separated subset of the ratios 0.25,0.33,0.5,0.67,0.75,0.9 (empty: all)
fresh_seeds: str = "0,1,2"  # comma-separated subset of the seeds 0,1,2 (empty: all)
fresh_steps: int = 20  # LM steps per fresh run (0: the experiment's own)
fresh_time_budget_s: float = 0.0  # start no new fresh run after this many seconds (0: no limit)
reuse_runs: bool = False  # resume the fresh sweep from runs/notebooks/ instead of training every run again
recorded: str = "gpu/exp5_sparsity.jsonl"  # glob under data/: the recorded GPU sweep, when it was run
alpha: float = 0.05  # significance level (family-wise, Bonferroni / Tukey)
confidence: float = 0.95  # confidence level of every interval
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "03_sparsity_sweep",
    rules=fresh_run_rules("exp5_sparsity", filters={
        "fresh_seq_lens": satisfies(
            lambda v, p: valid_list(v, int, experiment_levels("exp5_sparsity", p["fresh_size"])["seq_lens"]),
            "must be a comma-separated subset of the size's sequence lengths (small: 64,128; full: 64 to 1024)"),
        "fresh_ratios": satisfies(lambda v, p: valid_list(v, float, SPARSITY_RATIOS),
                                  f"must be a comma-separated subset of {','.join(map(str, SPARSITY_RATIOS))}"),
        "fresh_seeds": satisfies(lambda v, p: valid_list(v, int, (0, 1, 2)),
                                 "must be a comma-separated subset of 0,1,2"),
    }, extra={
        "alpha": satisfies(lambda v, p: 0 < v < 0.5, "must be in (0, 0.5)"),
    }),
)
P, DEV, FRESH_LABEL, maybe_save = nb.params, nb.device, nb.fresh_label, nb.save

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.express as px
import seaborn as sns
from IPython.display import Markdown, display

from dsa.study import stats as S
from dsa.study import verdicts as V
from dsa.study.figures import heatmap_pair_figure
from dsa.study.tables import readable
from dsa.study.runs import coverage, fresh_sweep, parse_list, recorded_runs, run_sources, runs_table


# %% [markdown]
# ## 1 · The runs: a fresh sweep, and the recorded GPU sweep if there is one

# %%
fresh = None
if P.run_fresh:
    fresh = fresh_sweep("exp5_sparsity", P.fresh_size, notebook="03_sparsity_sweep", device=P.device, progress=True,
                        reuse=P.reuse_runs, time_budget_s=P.fresh_time_budget_s or None,
                        seq_lens=parse_list(P.fresh_seq_lens), seeds=parse_list(P.fresh_seeds),
                        ratios=parse_list(P.fresh_ratios, float),
                        steps=P.fresh_steps or None)
recorded = recorded_runs(P.recorded)
sources = run_sources(fresh, recorded, device_type=DEV.type, size=P.fresh_size, fresh_provenance=FRESH_LABEL,
                      recorded_what="exp5 sweep")  # (label, records, provenance text)
if recorded:
    print(f"recorded: {len(recorded)} runs from data/{P.recorded}; {coverage(recorded, 'exp5_sparsity')['text']}")
else:
    display(Markdown(f"**The GPU sweep has not been run yet**: no recorded data matches `data/{P.recorded}`. "
                     "Everything below comes from the fresh run. (On a GPU: `python -m dsa.train.sweep exp5_sparsity "
                     "--size full --out data/gpu/exp5_sparsity.jsonl`.)"))
if not sources:
    raise RuntimeError("nothing to analyse: run_fresh is off and there is no recorded sweep")
for label, recs, prov in sources:
    print(f"{label}: {len(recs)} runs — {prov}")
df = pd.concat([runs_table(recs, label) for label, recs, _ in sources], ignore_index=True)
df["k/L"] = np.where(df.attention == "dense", "dense", df.ratio.map(lambda r: f"{r:g}"))
# one cell per (source, L, k/L): how many runs (seeds) and which k; "not run" where the sweep has none
cells = df.groupby(["source", "seq_len", "k/L"], sort=False).agg(runs=("seed", "size"), k=("top_k", "first"))
cells["cell"] = cells.runs.astype(str) + " runs, k=" + cells.k.astype(int).astype(str)
cells.cell.unstack("k/L").reindex(columns=[c for c in [*map("{:g}".format, SPARSITY_RATIOS), "dense"]
                                           if c in set(df["k/L"])]).fillna("not run")

# %% [markdown]
# ## 2 · Loss over (L, k/L): mean ± CI over seeds
#
# Each cell: the final validation loss averaged over seeds (lower is better), with a t interval. The
# heatmap's right-hand panel subtracts the dense model's loss at the same L: below 0 (blue) the sparse
# model is better than dense, above 0 (red) worse.

# %%
def cell_table(d):
    g = S.group_summary(d, ["seq_len", "k/L"], value="val_loss", confidence=P.confidence)
    dense = g[g["k/L"] == "dense"].set_index("seq_len")["mean"]
    g["minus_dense"] = g["mean"] - g.seq_len.map(dense)
    return g


ORDER = [f"{r:g}" for r in SPARSITY_RATIOS] + ["dense"]
for label, recs, prov in sources:
    g = cell_table(df[df.source == label])
    cols = [c for c in ORDER if c in set(g["k/L"])]
    mean = g.pivot(index="seq_len", columns="k/L", values="mean")[cols]
    diff = g.pivot(index="seq_len", columns="k/L", values="minus_dense")[cols]
    fig = heatmap_pair_figure(mean, diff, title=label)
    maybe_save(fig, "03_sparsity_heatmap" + ("" if label.startswith("fresh") else "_recorded"), prov)
    plt.show()
    text = g.assign(cell=[V.format_mean_ci(m, h, n, bounds=V.metric_bounds("val_loss"))
                          for m, h, n in zip(g["mean"], g.half_width, g.n)])
    display(text.pivot(index="seq_len", columns="k/L", values="cell")[cols].fillna("n/a (not run)"))

# %% [markdown]
# The same numbers, interactive: hover for the mean, the interval and the number of seeds; the line plot
# shows the loss against $k/L$ per $L$ with its confidence interval.

# %%
for label, recs, prov in sources:
    g = cell_table(df[df.source == label])
    cols = [c for c in ORDER if c in set(g["k/L"])]
    piv = g.pivot(index="seq_len", columns="k/L", values="minus_dense")[cols]
    fig = px.imshow(piv, text_auto=".3f", color_continuous_scale="RdBu_r", color_continuous_midpoint=0,
                    aspect="auto", labels={"x": "k/L", "y": "L (tokens)", "color": "loss − dense"},
                    title=f"{label}: loss minus dense (below 0 is better than dense)<br><sup>{prov}</sup>")
    fig.update_yaxes(type="category")
    fig.show()
    sp = g[g["k/L"] != "dense"].assign(ratio=lambda d: d["k/L"].astype(float))
    sp["err_hi"] = sp.ci_high - sp["mean"]
    sp["err_lo"] = sp["mean"] - sp.ci_low
    dn = g[g["k/L"] == "dense"]
    fig = px.line(sp, x="ratio", y="mean", color=sp.seq_len.astype(str), error_y="err_hi", error_y_minus="err_lo",
                  markers=True, labels={"ratio": "k/L (fraction of past tokens kept)",
                                        "mean": "validation loss (nats/token)", "color": "L"},
                  title=f"{label}: loss vs k/L, {P.confidence:.0%} CI (dashed: dense at that L; lower is better)")
    for _, r in dn.iterrows():
        fig.add_hline(y=r["mean"], line_dash="dash", line_width=1, annotation_text=f"dense L={int(r.seq_len)}")
    fig.show()

# %% [markdown]
# ## 3 · Statistics per sequence length
#
# * **One-way ANOVA** across the DSA ratios at each $L$ (`dsa.study.stats.anova_by`; `scipy.stats.f_oneway`),
#   the p-values **Bonferroni**-corrected for the number of lengths tested;
# * **Tukey HSD** for every pair of ratios (`dsa.study.stats.tukey_by`; statsmodels), with **Cohen's d**
#   (pooled SD; |d| < 0.2 negligible, < 0.5 small, < 0.8 medium, else large);
# * each ratio against **dense**, paired by seed, Bonferroni over the table (`dsa.study.stats.compare_variants`);
# * the **optimal ratio** per $L$: the lowest mean loss, its CI, and the ratios Tukey cannot tell apart
#   from it (`dsa.study.stats.optimal_by`).

# %%
results = {}
for label, recs, prov in sources:
    d = df[df.source == label]
    results[label] = V.exp5_verdict(d, alpha=P.alpha, confidence=P.confidence)
    sparse = d[d.attention == "dsa"]
    tk = S.tukey_by(sparse, by="seq_len", factor="ratio", alpha=P.alpha)
    tk["effect"] = tk.cohens_d.map(S.effect_size_label)
    display(Markdown(f"### {label}\n{prov}\n\n**ANOVA per L** (Bonferroni over the lengths)"))
    display(readable(results[label]["anova"], 4, na="n/a (too few runs, or no spread between them)"))
    display(Markdown("**Tukey HSD, every pair of ratios** (meandiff = loss(group2) − loss(group1); "
                     "Cohen's d of group2 vs group1)"))
    display(readable(tk, 4, na="n/a (too few runs, or no spread between them)"))
    display(Markdown("**Each ratio vs dense**, paired by seed (mean_diff = ratio − dense; Bonferroni over the table)"))
    vs = results[label]["vs_dense"]
    if len(vs):
        display(readable(vs[["seq_len", "variant", "n_pairs", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p",
                    "p_adj", "significant", "cohens_d", "note"]], 4, na="n/a (too few runs, or no spread between them)"))
    display(Markdown("**Optimal ratio per L** (lowest mean loss; `ratios_not_worse`: not significantly worse by Tukey)"))
    display(readable(results[label]["optimal"], 4, na="n/a (too few runs, or no spread between them)"))

# %% [markdown]
# ### Cost: time per step against k/L
#
# Fewer keys per query should cost less — if the selection and the gather are cheap enough. The time per
# step of the sparse phase (DSA) and of dense training (dashed), per $L$. On a shared CPU the timings are
# noisy; the recorded GPU sweep is the one to read.

# %%
for label, recs, prov in sources:
    d = df[df.source == label].assign(ms=lambda x: 1e3 * x.sparse_time_per_step_s)
    t = S.group_summary(d, ["device", "seq_len", "k/L"], value="ms", confidence=P.confidence)  # one GPU per panel
    sp = t[t["k/L"] != "dense"].assign(ratio=lambda x: x["k/L"].astype(float))
    fig = px.line(sp, x="ratio", y="mean", color=sp.seq_len.astype(str), markers=True, facet_col="device",
                  error_y=sp.ci_high - sp["mean"], error_y_minus=sp["mean"] - sp.ci_low,
                  labels={"ratio": "k/L (fraction of past tokens kept)", "mean": "time per step (ms)", "color": "L"},
                  title=f"{label}: time per training step (lower is better)<br><sup>{prov}</sup>")
    devices = list(dict.fromkeys(sp.device))
    for _, r in t[t["k/L"] == "dense"].iterrows():
        if r.device in devices:
            fig.add_hline(y=r["mean"], line_dash="dash", line_width=1, annotation_text=f"dense L={int(r.seq_len)}",
                          col=devices.index(r.device) + 1, row=1)
    fig.show()

# %% [markdown]
# ## 4 · Verdict on the seeds' hypothesis
#
# *"The optimal sparsity ratio should decrease as sequence length increases."* It is **supported** only if
# the ratios differ significantly at two or more lengths and the best ratio falls with $L$; otherwise
# there is no optimum to trend, or it does not fall.

# %%
lines = []
for label, recs, prov in sources:
    r = results[label]
    lines.append(f"**{label}** ({prov}): **{r['verdict'].upper()}** — {r['summary']}.")
    lines += [f"* {x}" for x in r["per_len"]]
    lines.append("")
if not recorded:
    lines.append("The GPU sweep, the one with enough training to separate the ratios, has not been recorded yet: "
                 "the fresh CPU run above is a check of the machinery, not evidence about the ratios.")
elif coverage(recorded, "exp5_sparsity")["missing_seq_lens"]:
    lines.append(f"The recorded GPU sweep is incomplete ({coverage(recorded, 'exp5_sparsity')['text']}): its verdict "
                 "covers only the lengths and seeds recorded so far.")
display(Markdown("\n".join(lines)))
