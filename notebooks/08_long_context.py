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
# # 08 · Long context: where selection has to matter
#
# Every earlier sweep kept k/L ≥ 1/8 (k = L/2 keeps 75% of the causal pairs) on text a small model barely
# reads far into, and called "no significant difference" equality. This notebook is the study built to
# answer the question properly (issue 17):
#
# 1. **Truly sparse, long context**: the MQA layout (one K/V head; where DSA can pay), L = 8K-64K, k from
#    L/4 down to L/64 (`dsa.train.experiments.long_context_sparse`).
# 2. **Tasks where far tokens matter**: multi-query associative recall and needle retrieval, the relevant
#    token at distances from k/4 to far beyond k, scored by exact match (Wilson intervals) and by the
#    indexer's **hit rate** on the known relevant positions; text longer than the window, loss per position
#    bucket (t < k, k ≤ t < 4k, t ≥ 4k). A **far-context check**: dense with the relevant tokens (or the
#    context beyond k) removed. If dense does not use the far tokens, the task does not test selection.
# 3. **DeepSeek's recipe with its control** (`long_context_recipe`): a dense checkpoint; from it (a) dense
#    continued for N steps, (b) indexer warm-up (model frozen, KL to dense attention) then N sparse steps;
#    (c) DSA from scratch for the same total steps; one batch stream for all and one LR schedule over the
#    global step (the continued arms resume the dense base's step and optimiser state).
# 4. **Statistics that can say "equal"** (`dsa.study.equivalence`): two one-sided tests with margins stated
#    here, before any long-context run (±0.02 nats/token, ±1 point of exact match); every verdict states its
#    resolution ("no difference larger than X") and the noise floor of identical re-runs beside it.
#
# Section 7 recomputes what the review of the earlier sweeps found, from their records.

# %%
import sys
from pathlib import Path

try:
    import dsa  # noqa: F401
except ImportError:  # opened from notebooks/ without the package installed: use the repository copy
    sys.path.insert(0, str(Path.cwd().parent))

from dsa.study.notebook_params import between, one_of, satisfies, snapshot_namespace
from dsa.study.runs import valid_list
from dsa.study.setup import setup_notebook

_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
device: str = "cpu"  # device of the fresh runs: "cpu", "cuda" or "auto"
run_fresh: bool = True  # train a tiny slice of the long-context experiments here (clearly labelled: not evidence)
fresh_size: str = "small"  # experiment size (dsa.train.experiments): "small" (CPU) or "full" (GPU)
fresh_seq_len: int = 128  # L of the fresh runs (one of the size's lengths: small 128, 256; full 8192 ...)
fresh_tasks: str = "recall,text"  # comma-separated: recall, needle, text
fresh_seeds: str = "0,1"  # comma-separated seeds of the fresh runs
fresh_steps: int = 8  # global LM steps of each fresh run's LR schedule (0: the experiment's own); the recipe's arms split them
fresh_recipe: bool = True  # also the recipe's arms (the continued arms continue the dense base: TrainConfig.start_step)
recorded: str = "gpu/long_context/*.jsonl"  # glob under data/: the recorded GPU runs of this study
margin_loss: float = 0.02  # equivalence margin on the loss, nats/token (stated before the runs)
margin_acc: float = 0.01  # equivalence margin on exact-match accuracy (0.01 is 1 point)
confidence: float = 0.95  # confidence level of every two-sided interval (TOST uses 1 - 2 alpha)
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "08_long_context",
    rules={
        "device": one_of("cpu", "cuda", "auto"),
        "fresh_size": one_of("small", "full"),
        "fresh_seq_len": satisfies(lambda v, p: v in ((128, 256) if p["fresh_size"] == "small"
                                                      else (8192, 16384, 32768, 65536)),
                                   "must be one of the size's lengths (small: 128, 256; full: 8192 ... 65536)"),
        "fresh_tasks": satisfies(lambda v, p: bool(v.strip()) and all(t.strip() in ("recall", "needle", "text")
                                                                      for t in v.split(",")),
                                 "must be a comma-separated subset of recall, needle, text"),
        "fresh_seeds": satisfies(lambda v, p: valid_list(v, int, allowed=range(5)),
                                 "must be a comma-separated list of seeds in 0-4"),
        "fresh_steps": between(0, None),
        "margin_loss": between(1e-6, 1.0),
        "margin_acc": between(1e-6, 0.5),
        "confidence": between(0.5, 0.999),
        "recorded": satisfies(lambda v, p: not v.startswith(("/", "..")), "must be a glob relative to data/"),
    },
)
P, FRESH_LABEL, maybe_save = nb.params, nb.fresh_label, nb.save
MARGIN = {"loss": P.margin_loss, "val_loss": P.margin_loss, "accuracy": P.margin_acc}

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from dsa.study import long_context as LC
from dsa.study import recheck as R
from dsa.study.equivalence import blocked_contrasts
from dsa.study.runs import ablation_table, parse_list, recorded_runs, runs_dir, runs_table, share_records
from dsa.study.tables import readable
from dsa.train.experiments import get_experiment, shortened
from dsa.train.long_context import design_of, run_arms

# %% [markdown]
# ## 1 · The design at full size
#
# What `long_context_sparse` and `long_context_recipe` run on GPUs (5 seeds per arm, MQA: 8 query heads on one
# K/V head, 64K tokens per step), and the pilot that fits 8 minutes of one H200
# (`long_context_pilot`, `scripts/gpu/gpu_long_context.sh`). Every run carries these factors in its record
# (`design`).

# %%
for name in ("long_context_sparse", "long_context_recipe", "long_context_pilot"):
    cfgs = get_experiment(name, "full")
    display(Markdown(f"**{name}**: {len(cfgs)} runs"))
    display(readable(LC.design_table(cfgs)))

# %% [markdown]
# ## 2 · A tiny fresh run (CPU, not evidence)
#
# The slice below trains on this machine in seconds: the chosen tasks at `fresh_seq_len`, dense and DSA at
# k = L/16, and (with `fresh_recipe`) the recipe's arms. Its models are far too small and short-lived to learn
# the tasks: it exercises the code and shows what the tables look like. **Its numbers are not results.**

# %%
FRESH = []
if P.run_fresh:
    tasks, seeds = {t.strip() for t in P.fresh_tasks.split(",")}, set(parse_list(P.fresh_seeds))
    pick = [c for c in get_experiment("long_context_sparse", P.fresh_size)
            if c.seq_len == P.fresh_seq_len and c.seed in seeds and design_of(c)["task"] in tasks
            and c.top_k == P.fresh_seq_len // 16]
    if P.fresh_recipe:
        pick += [c for c in get_experiment("long_context_recipe", P.fresh_size)
                 if c.seed in seeds and design_of(c)["task"] in tasks]
    if P.fresh_steps:  # every run on a schedule of fresh_steps global steps; continued arms still meet their base
        pick = shortened(pick, P.fresh_steps)
    out = runs_dir("08_long_context") / "fresh.jsonl"
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    FRESH = run_arms(pick, out, runs_dir("08_long_context") / "ckpt", n_eval_batches=1, device=P.device)
    print(f"fresh runs: {len(FRESH)} in {time.monotonic() - t0:.0f} s — {FRESH_LABEL}")

# %% [markdown]
# ## 3 · The tasks: exact match, hit rate, and does dense use the far tokens?
#
# Exact match per distance bucket (distance from the query to its relevant token, relative to k) with its Wilson
# interval; the hit rate is the share of relevant positions the indexer put in the query's selection (mean over
# layers; dense has none). "far tokens cut": the same queries with the relevant tokens replaced by noise.
# Chance is 1/127 (the task's 127 values).

# %%
def task_sections(records, label):
    tasks, texts = LC.task_table(records, P.confidence), LC.text_table(records)
    if len(tasks):
        display(Markdown(f"**{label}: exact match and hit rate per distance bucket** (seeds pooled)"))
        display(readable(LC.pooled_accuracy(tasks, confidence=P.confidence), na="n/a (dense: no selection)"))
    if len(texts):
        display(Markdown(f"**{label}: loss per position bucket** (nats/token, mean over seeds; lower is better)"))
        pos = texts[texts.replicate == 0].groupby(["experiment", "arm", "seq_len", "top_k", "bucket"]).loss.mean()
        display(readable(pos.unstack("bucket").reset_index(), na="n/a (no position)"))
    check = LC.far_context_check(tasks, texts, P.confidence)
    if len(check):
        display(Markdown(f"**{label}: does dense use the far context?**"))
        display(readable(check))
    return tasks, texts


if FRESH:
    FRESH_TABLES = task_sections(FRESH, f"fresh run ({FRESH_LABEL}; not evidence)")

# %% [markdown]
# ## 4 · The recipe's arms and DSA vs dense: equivalence verdicts
#
# Each arm against its control, paired by seed, by two one-sided tests with the margins stated above
# (loss ±`margin_loss` nats/token, exact match ±`margin_acc`). "Resolution" is the largest difference the
# 90% interval leaves possible: the verdict can say "no difference larger than" that and no less. The noise
# floor (SD of the difference between two identical re-runs, from the re-runs of the same experiment) stands
# beside each verdict; "n/a" where nothing was re-run.

# %%
def verdict_sections(records, label):
    tasks, texts = LC.task_table(records, P.confidence), LC.text_table(records)
    metrics = LC.run_metrics(tasks, texts)
    shown = False
    for baseline in ("dense_continued", "dense"):
        v = LC.arm_verdicts(metrics, baseline, MARGIN)
        if len(v):
            shown = True
            display(Markdown(f"**{label}: every arm against `{baseline}`**"))
            display(readable(v.drop(columns=["verdict_text"]), na="n/a (no re-runs)"))
            for _, r in v.iterrows():
                display(Markdown(f"- {r.task}, L = {r.seq_len}, {r.arm} (k = {r.top_k}) vs {baseline}: {r.verdict_text}"))
    if not shown:
        display(Markdown(f"{label}: no arm has its control in these runs."))


if FRESH:
    verdict_sections(FRESH, f"fresh run ({FRESH_LABEL}; not evidence)")

# %% [markdown]
# ## 5 · The GPU pilot and its time
#
# `scripts/gpu/gpu_long_context.sh` runs `long_context_pilot` on one H200 within 8 minutes: L = 8192, k = 512
# (1/16), 32K tokens per step, the recipe's arms on recall and text, 5 seeds, seed 0's continued arms re-run
# twice (noise floor), six processes sharing the GPU. The estimate below counts the pilot's steps and prices them
# with the H200's measured speed: a dense step by its FLOPs at 20% of the card's bf16 matmul rate (758 TFLOP/s
# measured; narrow heads of 32 run far below peak), a DSA step by adding the DSA layer's measured costs at 8K in the
# MQA layout (`data/bench/layer/h200-mqa-64x128-k2048.json`: indexer + top-k 1.2 ms, KL 6.1 ms, sparse attention
# 11.1 ms fwd+bwd per 8K sequence and layer), the KL and sparse attention scaled to the pilot's 32x narrower
# attention and 4x smaller k (a tenth: launch overheads do not shrink). The CPU timing of the same code (the fresh
# run above, and the pilot's `small` size) checks that every arm runs; it says nothing about GPU speed.

# %%
def pilot_estimate(dense_fraction: float = 0.2, bf16_flops: float = 758e12) -> tuple[pd.DataFrame, float, float]:
    """Seconds of GPU work per pilot run: (table, ms per dense step, ms per DSA step)."""
    cfgs = get_experiment("long_context_pilot", "full")
    c0 = cfgs[0]
    b, length, layers = c0.batch_size, c0.seq_len, c0.n_layers
    hd = c0.n_heads * (c0.head_dim or c0.d_model // c0.n_heads)
    attn = 2 * length ** 2 * hd * 3.5 * layers * b  # causal QK and PV, fwd + bwd (x 3.5)
    rest = 6 * 12 * c0.d_model ** 2 * layers * length * b  # the projections and MLP, fwd + bwd
    dense_ms = (attn + rest) / (dense_fraction * bf16_flops) * 1e3
    per_seq_layer = 1.2 + 6.1 / 10 + 11.1 / 10
    dsa_ms = dense_ms + layers * b * per_seq_layer
    warm_ms = dense_ms / 3 + layers * b * (1.2 + 6.1 / 10)  # forward of the frozen model + the indexer's dense KL
    rows = []
    for c in cfgs:
        ph = dict(c.phases())
        ms = ph.get("dense", 0) * dense_ms + ph.get("sparse", 0) * dsa_ms + ph.get("warmup", 0) * warm_ms
        rows.append({"arm": design_of(c)["arm"], "task": design_of(c)["task"], "steps": sum(ph.values()), "s": ms / 1e3})
    return pd.DataFrame(rows), dense_ms, dsa_ms


EST, DENSE_MS, DSA_MS = pilot_estimate()
total = EST.s.sum()
display(readable(EST.groupby(["task", "arm"]).agg(runs=("s", "size"), steps=("steps", "sum"),
                                                  seconds=("s", "sum")).reset_index(), 1))
display(Markdown(f"Priced at {DENSE_MS:.0f} ms per dense step and {DSA_MS:.0f} ms per DSA step: **about {total:.0f} s "
                 f"of GPU work** in all ({EST.s.groupby(EST.task).sum().round().to_dict()} s per task). Six processes "
                 "sharing the GPU finish near that if the GPU is the bottleneck; start-up, Triton compilation and "
                 "evaluation add about a minute per process. The runs are capped at 450 s (8 minutes with the copy "
                 "back): a process that hits the cap keeps the runs it finished and the integrator reports the rest "
                 "as not run."))

# %% [markdown]
# ## 6 · Recorded GPU runs of this study
#
# `recorded` (default `gpu/long_context/*.jsonl`) holds the pilot's re-run on one LR schedule: the recipe's
# continued arms continue the dense base's step, schedule, batch stream and optimiser state. The first pilot ran
# before `TrainConfig.start_step` existed (its continued arms restarted warm-up and cosine with fresh
# optimisers, while DSA from scratch ran one schedule); its records are kept in `gpu/long_context/pilot-1/`,
# and with `recorded` pointing there the verdicts flag DSA from scratch against dense continued as confounded
# (`same_lr_schedule`). Runs of the two kinds are never averaged together, nor taken as re-runs of each other.

# %%
REC = recorded_runs(P.recorded)  # this study's records carry no sweep key: re-runs are all kept
if REC:
    task_sections(REC, "recorded GPU runs")
    verdict_sections(REC, "recorded GPU runs")
    for name in ("long_context_pilot", "long_context_recipe", "long_context_sparse"):
        miss = LC.not_recorded(REC, get_experiment(name, "full"))
        display(Markdown(f"**{name}: cells without a recorded run**" + (": none" if miss.empty else "")))
        if len(miss):
            display(readable(miss))
else:
    display(Markdown(f"**Nothing recorded yet**: no file matches `data/{P.recorded}`. Not recorded: every run "
                     "of `long_context_sparse` (L = 8K-64K, k = L/4-L/64, recall / needle / text, 5 seeds), of "
                     "`long_context_recipe` (L = 8K, k = 512, 5 seeds, the noise-floor re-runs) and of the GPU pilot "
                     "(`scripts/gpu/gpu_long_context.sh`). No statement about long context can be made from this "
                     "page until they are."))

# %% [markdown]
# ## 7 · What the recomputation of the earlier sweeps found
#
# From the records under `data/gpu/` (3 seeds per arm, L ≤ 4096, k/L ≥ 1/8); every number is computed here.

# %%
def _read(name):
    return recorded_runs(f"gpu/{name}.jsonl")


ALL = {n: _read(n) for n in ("exp5_sparsity", "exp4_long", "exp3_adaptive", "exp4_reproduce", "ablation_kl",
                              "ablation_warmup", "ablation_indexer_heads")}
NOISE = R.replicate_noise([r for recs in ALL.values() for r in recs])
display(Markdown(
    f"**Noise floor**: {NOISE['n_groups']} configurations were recorded twice (the same DSA arm in exp3 and in the "
    f"KL ablation, one commit): " + "; ".join(NOISE["groups"]) +
    f". SD of one run {NOISE['pooled_sd']:.4f}, SD of the difference of two identical runs {NOISE['sd_diff']:.4f}, "
    f"largest difference {NOISE['max_abs_diff']:.4f} nats/token. Any effect below about "
    f"{2 * NOISE['sd_diff']:.3f} nats/token is within what re-running the same configuration produces."
    if NOISE["n_groups"] else "**Noise floor**: no configuration was recorded twice."))

# %%
d5 = runs_table(ALL["exp5_sparsity"], "exp5") if ALL["exp5_sparsity"] else pd.DataFrame()
if len(d5):
    display(Markdown("**exp5: the devices per L** (L = 64 ran on two kinds of GPU)"))
    display(R.devices_by(d5))
    fam = R.exp5_family(d5)
    worst = fam.sort_values("p").iloc[0]
    display(Markdown(
        f"**exp5: the Bonferroni family is all {int(worst.family)} tests** (every k/L ratio against dense at every "
        f"L, paired by seed). The smallest p: L = {worst.seq_len}, {worst.variant}: {worst.mean_diff:+.4f} nats/token, "
        f"worse than dense in {worst.seeds_worse} of {worst.n_seeds} seeds, p = {worst.p:.4f}, Bonferroni-adjusted "
        f"{worst.p_adj:.3f} over {int(worst.family)} tests (significant at 0.05 only within a family of "
        f"{int(0.05 // worst.p)} or fewer tests)."))
    display(readable(fam.sort_values("p").head(5)[["seq_len", "variant", "mean_diff", "ci_low", "ci_high", "p", "p_adj",
                                                   "seeds_worse", "n_seeds", "family"]], 4))
    blocked = []
    for length, g in R._with_ratio_arm(d5).groupby("seq_len"):
        b = blocked_contrasts(g[g.ratio_arm != "dense"], "ratio_arm", "val_loss", "k/L=0.25", margin=P.margin_loss)
        blocked.append({"seq_len": length, "one-way ANOVA p (seed ignored)": b.p_factor_oneway.iloc[0],
                        "seed-blocked ANOVA p (loss ~ ratio + seed)": b.p_factor_blocked.iloc[0]})
    display(Markdown("**exp5: do the six ratios differ?** The same question by two analyses: the seed explains most "
                     "of the spread, so blocking by it is the sharper test (neither finds a difference)."))
    display(readable(pd.DataFrame(blocked)))
    out5 = R.outliers(R._with_ratio_arm(d5), "ratio_arm", top=2)
    display(Markdown("**exp5: the two runs furthest from what their arm and seed predict** (OLS loss ~ arm + seed per "
                     "L; z = standardised residual)"))
    display(readable(out5))
    eq5 = R.parity_equivalence(R._with_ratio_arm(d5), "ratio_arm", margin=P.margin_loss, noise=NOISE["sd_diff"])
    counts = eq5.verdict.value_counts().to_dict()
    display(Markdown(f"**exp5 parity by TOST** (±{P.margin_loss} nats/token, 3 seeds): " +
                     ", ".join(f"{v}: {n}" for v, n in counts.items()) +
                     f" of {len(eq5)}; resolution {eq5.resolution.min():.3f}-{eq5.resolution.max():.3f} nats/token."))

# %%
heads = share_records(ALL["ablation_indexer_heads"], ALL["ablation_kl"] + ALL["ablation_warmup"], "heads")
if heads:
    ha = R.heads_analyses(ablation_table(heads, "recorded", "heads"))
    display(Markdown("**Indexer heads: the loss's fitted change from 1 to 16 heads by two analyses** "
                     "(nats/token; the second uses every run's residual, the first only the 3 per-seed slopes)"))
    display(readable(ha, 4))

# %%
dl = runs_table(ALL["exp4_long"], "exp4_long") if ALL["exp4_long"] else pd.DataFrame()
if len(dl):
    dl["k arm"] = np.where(dl.variant == "dense", "dense", "k = L/" + (dl.seq_len // dl.top_k).astype(str))
    eq = R.parity_equivalence(dl, "k arm", margin=P.margin_loss, noise=NOISE["sd_diff"])
    display(Markdown(f"**exp4_long: 'equal quality' by equivalence tests** (margin ±{P.margin_loss} nats/token "
                     "stated here, 3 seeds, paired by seed)"))
    display(readable(eq[["seq_len", "arm", "n_pairs", "diff", "ci90_low", "ci90_high", "resolution", "verdict"]], 4))
    for _, r in eq.iterrows():
        display(Markdown(f"- L = {r.seq_len}, DSA {r.arm}: {r.verdict_text}"))
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    ypos = np.arange(len(eq))
    ax.errorbar(eq["diff"], ypos, xerr=[eq["diff"] - eq.ci90_low, eq.ci90_high - eq["diff"]], fmt="o", color="C0",
                capsize=3, label="DSA - dense, 90% CI (TOST)")
    ax.axvspan(-P.margin_loss, P.margin_loss, color="C2", alpha=0.15, label=f"margin ±{P.margin_loss}")
    ax.axvspan(-NOISE["sd_diff"], NOISE["sd_diff"], color="0.5", alpha=0.2, label="noise floor (±1 SD of a re-run diff)")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(ypos, [f"L={r.seq_len}, {r.arm}" for _, r in eq.iterrows()])
    ax.set_xlabel("validation loss difference, DSA - dense (nats/token)")
    ax.set_title("exp4_long: equal only if the interval lies inside the green band")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: it must not cover an interval
    fig.tight_layout()
    maybe_save(fig, "08_exp4_long_equivalence", "data/gpu/exp4_long.jsonl (H100, 3 seeds)")
    plt.show()

# %%
if ALL["exp3_adaptive"]:
    kpq = R.keys_per_query(ALL["exp3_adaptive"])
    display(Markdown("**exp3: keys per query of each arm** (mean over seeds; dense attends to (L+1)/2 on average)"))
    display(readable(kpq.groupby("arm")[["keys_per_query", "val_loss"]].mean().reset_index()))
    display(Markdown("**exp3 at equal compute**: each adaptive arm against the fixed-k loss interpolated at its own "
                     "keys per query (only where that lies within the fixed arms' range)"))
    display(readable(R.equal_compute(kpq), na="n/a (outside the fixed arms' range)"))

# %%
gaps = pd.DataFrame([{"file": n, **R.provenance_gaps(recs)} for n, recs in ALL.items() if recs])
display(Markdown("**Provenance gaps of the recorded files** (records written before `dsa.provenance` recorded the "
                 "dirty flag of an environment commit and expanded short hashes; new records carry both). exp4's "
                 "records have no `timing.workers_on_device`: how many trainings shared their GPU is unknown."))
display(gaps)
