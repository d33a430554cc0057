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
# # 06 · Ablations of the indexer: its KL loss, the warm-up length, the number of heads
#
# The seed write-ups listed three ablations of DSA's lightning indexer as the obvious next step and never
# ran any of them. They matter because the indexer is the part of DSA that decides which $k$ past tokens
# each query may attend to, and the top-k choice is not differentiable: **the LM loss sends the indexer no
# gradient at all**. It learns only from a loss of its own, or not at all.
#
# DeepSeek-V3.2 trains it in two stages (`dsa.train.trainer`, recipe `deepseek`), after a dense phase that stands
# in for the dense checkpoint DeepSeek starts from:
#
# 1. **dense warm-up** — the main model frozen, only the indexer trained, by
#    $\mathrm{KL}\big(p_t \,\|\, \mathrm{softmax}(I_{t,:})\big)$ where $p_t$ is the main attention of query
#    $t$ summed over heads and L1-normalised (`dsa.ops.indexer_loss`); these steps are extra, not LM steps;
# 2. **sparse training** — everything trained, the LM through sparse attention over the top-$k$ set $S_t$,
#    the indexer by the same KL restricted to $S_t$ (its input detached from the LM graph).
#
# The three ablations (`dsa.train.experiments`), each at the study's full size on a GPU (L = 512, k = 128, i.e.
# 25% of the tokens, 1000 LM steps, seeds 0-2) and at a tiny CPU size here:
#
# | ablation | arms | question |
# | --- | --- | --- |
# | **KL loss** (`ablation_kl`) | KL on (the recipe: warm-up + sparse KL) vs KL off | Does training the indexer matter? "KL off" leaves it at its random initialisation — which is what the seeds' setup amounted to (their indexer never received a gradient). The KL-off arm has no warm-up either: a warm-up *is* KL training. |
# | **warm-up length** (`ablation_warmup`) | 0, 100, 200, 500 indexer-only steps (KL always on in the sparse phase) | Does the indexer need a head start before sparse training, or does the sparse-phase KL catch up? |
# | **indexer heads** $H_I$ (`ablation_indexer_heads`) | 1, 2, 4, 8, 16 | $I_{t,s} = \sum_j w_{t,j}\,\mathrm{ReLU}(q_{t,j}\cdot k_s)$: more heads score more flexibly, at a cost linear in $H_I$ (the indexer is an $O(L^2 H_I d_I)$ computation). Do they buy better selection? |
#
# Metrics, the same on every table and figure:
#
# * **validation loss** (nats/token) — lower is better;
# * **accuracy** (next-token, %) — higher is better;
# * **indexer recall** — the share of the dense attention mass (head-summed) that falls on the selected
#   top-$k$ set, averaged over the queries that must drop tokens ($t + 1 > k$) and over layers, on the first
#   validation batch (1 = the selection keeps all of it); higher is better. A selection drawn at random
#   keeps $k/(t+1)$ of a query's mass in expectation, whatever the attention: its average
#   (`dsa.study.analysis.random_recall`) is drawn as a dashed line on the recall panels;
# * **time per step** (ms, the sparse phase's steady time per training step) — lower is better. The GPU
#   sweeps ran several trainings side by side on one GPU (`scripts/gpu/run_campaign.sh`), so their times are
#   noisy and inflated for every arm.
#
# Every statement below is computed from the data when the notebook runs: mean ± t confidence interval
# over seeds per arm, and each arm against the reference arm **paired by seed** (same initialisation and
# data order). A recorded sweep may be incomplete: the notebook shows what is there and says what is
# missing, and gives a verdict only where at least two arms have at least two seeds.

# %%
import sys
from pathlib import Path

try:
    import dsa  # noqa: F401
except ImportError:  # opened from notebooks/ without the package installed: use the repository copy
    sys.path.insert(0, str(Path.cwd().parent))

from dsa.study.notebook_params import satisfies, snapshot_namespace
from dsa.study.runs import ABLATIONS, fresh_run_rules, parse_list


def _relative_glob(v, p):
    return not v.startswith(("/", "~")) and ".." not in v.replace("\\", "/").split("/")

from dsa.study.setup import setup_notebook

_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
device: str = "cpu"  # device of the fresh runs: "cpu", "cuda" or "auto"
run_fresh: bool = True  # train fresh ablation sweeps in this notebook
fresh_size: str = "small"  # size of the fresh sweeps (dsa.train.experiments): "small" (CPU, L 128) or "full" (GPU, L 512)
fresh_ablations: str = "kl,warmup,heads"  # comma-separated subset of kl,warmup,heads to train fresh (empty: all)
fresh_seeds: str = "0,1"  # comma-separated subset of the size's seeds (small: 0,1; full: 0,1,2; empty: all)
fresh_steps: int = 20  # LM steps per fresh run (0: the experiment's own)
fresh_time_budget_s: float = 0.0  # start no new fresh run after this many seconds, over all sweeps (0: no limit)
reuse_runs: bool = False  # resume the fresh sweeps from runs/notebooks/ instead of training every run again
recorded_kl: str = "gpu/ablation_kl.jsonl"  # glob under data/: the recorded KL ablation (empty: none)
recorded_warmup: str = "gpu/ablation_warmup.jsonl"  # glob under data/: the recorded warm-up ablation (empty: none)
recorded_heads: str = "gpu/ablation_indexer_heads.jsonl"  # glob under data/: the recorded heads ablation (empty: none)
share_recorded: bool = True  # count a recorded run in every ablation whose configuration it is (same sweep key)
confidence: float = 0.95  # confidence level of every interval
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "06_ablations",
    rules=fresh_run_rules("ablation_kl", filters={
        "fresh_ablations": satisfies(lambda v, p: set(parse_list(v, str) or []) <= set(ABLATIONS),
                                     f"must be a comma-separated subset of {','.join(ABLATIONS)} (or empty for all)"),
    }, extra={
        "recorded_kl": satisfies(_relative_glob, "must be a glob relative to data/ (no leading / or ..), or empty"),
        "recorded_warmup": satisfies(_relative_glob, "must be a glob relative to data/ (no leading / or ..), or empty"),
        "recorded_heads": satisfies(_relative_glob, "must be a glob relative to data/ (no leading / or ..), or empty"),
    }),
)
P, DEV, FRESH_LABEL, maybe_save = nb.params, nb.device, nb.fresh_label, nb.save

# %%
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import seaborn as sns
from IPython.display import Markdown, display
from plotly.subplots import make_subplots

from dsa.study import verdicts as V
from dsa.study.analysis import random_recall
from dsa.study.figures import clipped_errors
from dsa.study.tables import readable
from dsa.study.scope import kl_recall_check
from dsa.study.runs import ablation_coverage, ablation_table, fresh_sweep, recorded_runs, run_sources, share_records

RECORDED_GLOB = {"kl": P.recorded_kl, "warmup": P.recorded_warmup, "heads": P.recorded_heads}
FRESH_ABLATIONS = parse_list(P.fresh_ablations, str) or list(ABLATIONS)

# %% [markdown]
# ## 1 · The runs: fresh sweeps, and the recorded GPU sweeps as far as they go
#
# The fresh sweeps (`dsa.study.runs.fresh_sweep`, i.e. `dsa.train.sweep`) train the selected ablations at
# `fresh_size`; at the CPU size the model is tiny (d_model 64, 2 layers, L = 128, k = 32) and trains for
# `fresh_steps` steps, with warm-up arms of 0, 5 and 10 steps and 1, 2 or 4 indexer heads: enough to
# exercise every code path, not to separate the arms.
#
# With `share_recorded`, a recorded run counts in every ablation whose configuration it is: the KL
# ablation's with-KL runs (the recipe's default, warm-up 100 and 4 indexer heads) are, field for field,
# the warm-up-100 arm of the warm-up ablation and the 4-head arm of the heads ablation (matched by the key
# `dsa.train.sweep` stores with every run). They are marked *shared* in the tables.

# %%
t_start = time.monotonic()
fresh = {}
if P.run_fresh:
    for ab in FRESH_ABLATIONS:
        left = None
        if P.fresh_time_budget_s:
            left = P.fresh_time_budget_s - (time.monotonic() - t_start)
            if left <= 0:
                print(f"fresh_time_budget_s spent: no fresh {ab} sweep")
                continue
        fresh[ab] = fresh_sweep(ABLATIONS[ab]["experiment"], P.fresh_size, notebook="06_ablations", device=P.device,
                                progress=True,
                                reuse=P.reuse_runs, time_budget_s=left, seeds=parse_list(P.fresh_seeds),
                                steps=P.fresh_steps or None)
    print(f"fresh runs: {sum(map(len, fresh.values()))} in {time.monotonic() - t_start:.0f} s — {FRESH_LABEL}")
else:
    print("run_fresh is off: every number below comes from recorded data.")

own = {ab: recorded_runs(g) if g.strip() else [] for ab, g in RECORDED_GLOB.items()}
recorded = {ab: share_records(own[ab], [r for o in ABLATIONS if o != ab for r in own[o]], ab)
            if P.share_recorded else own[ab] for ab in ABLATIONS}

DATA = {}  # ablation -> {"df": runs of every source, "sources": [(label, provenance text)]}
cov_rows = []
for ab, spec in ABLATIONS.items():
    recs = recorded[ab]
    ab_sources = run_sources(fresh.get(ab) or None, recs, device_type=DEV.type, size=P.fresh_size,
                             fresh_provenance=FRESH_LABEL, recorded_what="GPU sweep")
    parts = [ablation_table(runs, label, ab) for label, runs, _ in ab_sources]
    DATA[ab] = {"df": pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(),
                "sources": [(label, prov) for label, _, prov in ab_sources]}
    cov = ablation_coverage(recs, ab)
    DATA[ab]["coverage"] = cov
    n_shared = sum(bool(r.get("_shared")) for r in recs)
    cov_rows.append({"ablation": spec["title"],
                     "recorded file": f"data/{RECORDED_GLOB[ab]}" if RECORDED_GLOB[ab].strip() else "(none)",
                     "runs in it": len(own[ab]), "shared from the other files": n_shared,
                     "configurations covered": f"{cov['found']} of {cov['expected']}",
                     "complete arms (every seed)": ", ".join(cov["complete_arms"]) or "none",
                     "arms missing a seed": ", ".join(cov["missing_arms"]) or "none"})
COVERAGE = pd.DataFrame(cov_rows)
display(Markdown("**Coverage of the recorded GPU sweeps** (full size, 3 seeds per arm; a missing file counts as "
                 "nothing recorded)"))
display(COVERAGE)
for ab in ABLATIONS:
    for label, prov in DATA[ab]["sources"]:
        n = int((DATA[ab]["df"].source == label).sum())
        print(f"{ABLATIONS[ab]['title']} — {label}: {n} runs — {prov}")

# %% [markdown]
# The helpers of the three sections below: a table of mean ± CI per arm, each arm against the reference
# arm (KL off, no warm-up, one head) paired by seed, a figure, and the verdict
# (`dsa.study.verdicts.ablation_verdicts`).

# %%
FORMATS = {"val_loss": (3, 1.0, "val loss (nats/token)"), "val_acc": (1, 100.0, "val accuracy (%)"),
           "recall": (3, 1.0, "indexer recall (dense mass kept)"),
           "sparse_time_per_step_s": (1, 1e3, "time per step (ms)")}
PANELS = [("val_loss", 1.0, "validation loss (nats/token)", "lower is better"),
          ("recall", 1.0, "indexer recall (fraction of dense mass)", "higher is better"),
          ("sparse_time_per_step_s", 1e3, "time per step, sparse phase (ms)", "lower is better")]
UNITS = {"val_loss": "nats/token", "recall": "fraction of dense mass", "sparse_time_per_step_s": "ms"}
XLABEL = {"kl": "indexer training", "warmup": "warm-up length (indexer-only steps)", "heads": "indexer heads H_I"}
BY = ("source", "device", "steps")


def no_data(ab):
    exp, glob = ABLATIONS[ab]["experiment"], RECORDED_GLOB[ab]
    where = (f"nothing matches `data/{glob}`" if glob.strip() else
             f"no recorded file was given (`recorded_{ab}` is empty)")
    display(Markdown(f"**No data for the {ABLATIONS[ab]['title']} ablation**: it was not run fresh and {where}. "
                     f"On a GPU: `python -m dsa.train.sweep {exp} --size full --out data/gpu/{exp}.jsonl` (resumable)."))


def show_tables(ab):
    df = DATA[ab]["df"]
    if df.empty:
        return no_data(ab)
    order = {a: lv for a, lv in zip(df.arm, df.level)}
    s = V.summary_table(df.assign(variant=df.arm), metrics=tuple(FORMATS), by=BY, confidence=P.confidence)
    t = V.format_summary(s, by=BY, formats=FORMATS)
    origin = df.groupby(["source", "arm"]).origin.agg(lambda o: ", ".join(sorted({x for x in o if x})))
    t["recorded in"] = [origin.get((r.source, r.variant), "") for r in t.itertuples()]
    t = t.assign(_o=t.variant.map(order)).sort_values(["source", "_o"]).drop(columns="_o")
    display(Markdown(f"**Mean ± {P.confidence:.0%} CI over seeds, per arm**"))
    display(t.rename(columns={"variant": "arm"}).reset_index(drop=True))
    c = V.ablation_contrasts(df, metrics=("val_loss", "recall", "val_acc"), confidence=P.confidence)
    if c.empty:
        display(Markdown("No paired comparison: no source has two arms."))
        return
    names = {m: FORMATS[m][2] for m in FORMATS}
    c = c.assign(metric=c.value.map(names),
                 difference=[f"{d:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else " (no CI)")
                             for d, lo, hi in zip(c.mean_diff, c.ci_low, c.ci_high)])
    display(Markdown(f"**Each arm minus the reference arm, paired by seed** (mean difference and {P.confidence:.0%} "
                     "CI; p: paired t-test, p_adj: Bonferroni over the table)"))
    display(c[["source", "metric", "variant", "baseline", "n_pairs", "mean_b", "mean_a", "difference", "p", "p_adj"]]
            .rename(columns={"variant": "arm", "baseline": "reference", "mean_b": "arm mean",
                             "mean_a": "reference mean"})
            .pipe(readable, 4, na="n/a (too few runs, or no spread between them)"))


def wrap(arm):
    """An arm's name on two lines (tick labels of neighbouring panels must not run into each other)."""
    return arm.replace(" (", "<br>(")


def plot_ablation(ab):
    df = DATA[ab]["df"]
    if df.empty:
        return
    srcs = DATA[ab]["sources"]
    arms = list(dict.fromkeys(df.sort_values("level").arm))
    summ = V.summary_table(df.assign(variant=df.arm), metrics=[m for m, *_ in PANELS], by=("source",),
                           confidence=P.confidence)
    # the random-selection recall of each source's (L, k), when a source has one
    floor = {label: random_recall(int(g.seq_len.iloc[0]), int(g.top_k.iloc[0]))
             for label, g in df.groupby("source") if g[["seq_len", "top_k"]].drop_duplicates().shape[0] == 1}
    # static: one row per source, one column per metric; dots = seeds, black = mean ± CI
    fig, axes = plt.subplots(len(srcs), len(PANELS), figsize=(14, 3.6 * len(srcs)), squeeze=False)
    for i, (label, prov) in enumerate(srcs):
        d = df[df.source == label]
        for j, (m, scale, ylabel, better) in enumerate(PANELS):
            ax = axes[i, j]
            vals = d.assign(y=d[m] * scale, seed=d.seed.astype(str)).dropna(subset=["y"])
            here = [a for a in arms if a in set(d.arm)]
            if vals.empty:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            else:
                sns.stripplot(vals, x="arm", y="y", hue="seed", order=here, ax=ax, size=6, alpha=0.7, jitter=0.08,
                              legend=(j == 0))  # the seeds at each arm, its mean ± CI just left of them
                st = summ[(summ.source == label) & (summ.metric == m)].set_index("variant").reindex(here)
                minus, plus = clipped_errors(st["mean"], st.half_width, V.metric_bounds(m))
                ax.errorbar(np.arange(len(here)) - 0.25, st["mean"] * scale, yerr=[minus * scale, plus * scale],
                            fmt="D", color="black", capsize=4, ms=5, label=f"mean ± {P.confidence:.0%} CI")
                if m == "recall" and label in floor:
                    ax.axhline(floor[label], color="0.5", ls="--", lw=1)
                    ax.annotate("random selection", (0.01, floor[label]), xycoords=("axes fraction", "data"),
                                fontsize=7, color="0.4", va="bottom")
            ax.set_xlim(-0.6, len(here) - 0.4)
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set(xlabel=XLABEL[ab] if i == len(srcs) - 1 else "", ylabel=ylabel,
                   title=(f"{label}\n" if j == 0 else "\n") + f"{ylabel.split(' (')[0]} ({better})")
            ax.tick_params(axis="x", labelsize=8, rotation=10)
        if axes[i, 0].get_legend():
            axes[i, 0].legend(fontsize=7, title="seed", title_fontsize=7)
    fig.suptitle(f"Ablation: {ABLATIONS[ab]['title']}", fontsize=11)
    fig.tight_layout()
    maybe_save(fig, f"06_ablation_{ab}", " | ".join(p for _, p in srcs))
    plt.show()
    # interactive: the same panels; hover a point for its seed and the file it was read from
    pf = make_subplots(rows=len(srcs), cols=len(PANELS), vertical_spacing=0.22 if len(srcs) > 1 else 0.1,
                       horizontal_spacing=0.09,
                       subplot_titles=[f"{'fresh' if l.startswith('fresh') else 'recorded'}: {y.split(' (')[0]} ({b})"
                                       for l, _ in srcs for _, _, y, b in PANELS])
    for i, (label, prov) in enumerate(srcs):
        d = df[df.source == label]
        here = [a for a in arms if a in set(d.arm)]
        for j, (m, scale, ylabel, better) in enumerate(PANELS):
            vals = d.dropna(subset=[m])
            pf.add_trace(go.Scatter(x=vals.arm.map(wrap), y=vals[m] * scale, mode="markers", marker=dict(size=7, opacity=0.6),
                                    name="runs (one per seed)", legendgroup="runs", showlegend=(i == 0 and j == 0),
                                    customdata=np.stack([vals.seed, vals.origin], axis=-1) if len(vals) else None,
                                    hovertemplate="%{x}<br>seed %{customdata[0]}<br>%{y:.4f}<br>%{customdata[1]}"
                                                  "<extra></extra>"), row=i + 1, col=j + 1)
            st = summ[(summ.source == label) & (summ.metric == m)].set_index("variant").reindex(here)
            st = st.dropna(subset=["mean"])
            pf.add_trace(go.Scatter(x=[wrap(a) for a in st.index], y=st["mean"] * scale, mode="markers+lines",
                                    line=dict(color="black", width=1),
                                    marker=dict(symbol="diamond", size=9, color="black"),
                                    error_y=dict(array=clipped_errors(st["mean"], st.half_width, V.metric_bounds(m))[1] * scale,
                                                 arrayminus=clipped_errors(st["mean"], st.half_width,
                                                                           V.metric_bounds(m))[0] * scale),
                                    name=f"mean ± {P.confidence:.0%} CI", legendgroup="mean",
                                    showlegend=(i == 0 and j == 0)), row=i + 1, col=j + 1)
            if m == "recall" and label in floor:
                pf.add_hline(y=floor[label], line_dash="dash", line_width=1, line_color="gray", row=i + 1, col=j + 1,
                             annotation_text="random selection", annotation_font_size=9)
            pf.update_yaxes(title_text=UNITS[m], row=i + 1, col=j + 1, title_font_size=10, title_standoff=4)
            pf.update_xaxes(type="category", categoryorder="array", categoryarray=[wrap(a) for a in here], row=i + 1, col=j + 1,
                            title_text=XLABEL[ab] if i == len(srcs) - 1 else None, title_font_size=10)
    pf.update_annotations(font_size=10)
    subtitle = "<br>".join(line for l, p in srcs for line in textwrap.wrap(f"{l}: {p}", 150))
    n_lines = subtitle.count("<br>") + 1
    pf.update_layout(height=400 * len(srcs) + 120 + 18 * n_lines, width=1100,
                     title=dict(text=f"Ablation: {ABLATIONS[ab]['title']}<br><sup>{subtitle}</sup>", y=1, pad=dict(t=14),
                                yanchor="top", yref="container"),
                     margin=dict(t=95 + 18 * n_lines, b=110), legend=dict(orientation="h", y=-0.25 / len(srcs), x=0,
                                                                          yanchor="top"))
    pf.show()


def verdicts_of(ab):
    df = DATA[ab]["df"]
    if df.empty:
        return pd.DataFrame(columns=["source", "claim", "seeds_said", "verdict", "evidence", "ablation"])
    return V.ablation_verdicts(df, ab, confidence=P.confidence).assign(ablation=ABLATIONS[ab]["title"])


def show_verdict(ab):
    ver = verdicts_of(ab)
    if ver.empty:
        return display(Markdown(f"No verdict on the {ABLATIONS[ab]['title']} ablation: no data (see above)."))
    lines = [f"**{ver.claim.iloc[0]}**"]
    lines += [f"* *{r.source}*: **{r.verdict.upper()}** — {r.evidence}" for r in ver.itertuples()]
    cov = DATA[ab]["coverage"]
    if cov["missing_arms"]:
        lines.append(f"\nThe recorded GPU sweep is incomplete: {cov['text']}.")
    display(Markdown("\n".join(lines)))


# %% [markdown]
# ## 2 · With or without the indexer's KL loss
#
# The reference arm is **KL off**: the indexer keeps its random initialisation and picks $k$ tokens by
# random projections — the seeds' situation. If training the indexer matters, the KL-on arm has a
# **higher recall** (its top-$k$ holds more of the attention mass dense attention would have used) and a
# **lower loss**. An untrained indexer's recall is expected near the dashed random-selection line, not
# at $k/L$: a query at position $t$ chooses $k$ of its $t + 1$ past tokens, not of all $L$.

# %%
show_tables("kl")
for label, _ in DATA["kl"]["sources"]:
    if label.startswith("fresh"):
        display(Markdown(f"*{label}*: " + kl_recall_check(DATA["kl"]["df"][DATA["kl"]["df"].source == label])))

# %% [markdown]
# Per arm, each dot is one seed's run; the black diamond is the mean with its confidence interval.
# Loss and time: lower is better; recall: higher is better. Compare arms within a row only: the rows are
# different model sizes and step counts.

# %%
plot_ablation("kl")

# %%
show_verdict("kl")

# %% [markdown]
# ## 3 · How long a dense warm-up?
#
# Every arm trains the indexer by the KL in the sparse phase; they differ in how many indexer-only
# warm-up steps come first (0 = the indexer starts sparse training at its random initialisation and
# learns only from the KL on the set it selects itself). Warm-up steps are not LM steps: every arm makes
# the same LM updates, and the warm-up costs extra time before training (not shown in the time per
# step). If the head start matters, the loss falls and the recall rises with the warm-up length.

# %%
show_tables("warmup")

# %%
plot_ablation("warmup")

# %%
show_verdict("warmup")

# %% [markdown]
# ## 4 · How many indexer heads?
#
# The reference arm is one head. More heads give the indexer more ways to score a token (each head's
# ReLU score is weighted per query), at a cost linear in $H_I$ in the indexer's $O(L^2)$ scoring. Better
# looks like: recall up and loss down as $H_I$ grows, with a time per step that grows slowly. The trend
# is fitted against $\log_2 H_I$ (per doubling).

# %%
show_tables("heads")

# %%
plot_ablation("heads")

# %%
show_verdict("heads")

# %% [markdown]
# ## 5 · Verdicts, and what is still missing
#
# One row per ablation and data set. *supported*: the loss moves the hypothesised way with a confidence
# interval excluding 0 (paired by seed); *partly supported*: only the recall does; *refuted*: the loss
# moves the other way; *inconclusive*: nothing beyond noise; *not enough data*: fewer than two arms with
# two seeds or more. The fresh CPU runs are a check of the machinery (a tiny model, a few dozen steps);
# the recorded GPU sweeps are the evidence.

# %%
parts = [v for v in (verdicts_of(ab) for ab in ABLATIONS) if len(v)]
VERDICTS = (pd.concat(parts, ignore_index=True) if parts else
            pd.DataFrame(columns=["ablation", "source", "claim", "seeds_said", "verdict", "evidence"]))
display(VERDICTS[["ablation", "source", "claim", "verdict"]] if len(VERDICTS) else
        Markdown("No verdict at all: nothing was run fresh and no recorded data was found."))
lines = []
for ab, spec in ABLATIONS.items():
    cov = DATA[ab]["coverage"]
    rec = VERDICTS[(VERDICTS.ablation == spec["title"]) & VERDICTS.source.str.startswith("recorded")]
    said = rec.verdict.iloc[0] if len(rec) else "no recorded data"
    lines.append(f"* **{spec['title']}** — recorded: **{said}**; {cov['text']}."
                 + ("" if not cov["missing_arms"] else
                    f" To complete it on a GPU: `python -m dsa.train.sweep {spec['experiment']} --size full "
                    f"--out data/gpu/{spec['experiment']}.jsonl` (re-uses the finished runs)."))
display(Markdown("\n".join(lines)))
