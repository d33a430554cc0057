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
# # 05 · Efficiency: where (and whether) sparse attention pays off
#
# DSA replaces the $O(L^2)$ attention by an $O(L^2)$ but cheap indexer plus an $O(L k)$ attention over
# the selected keys. Whether that is faster in practice depends on kernels. This notebook compares, for
# one attention layer over $L$ (`python -m dsa.bench.kernels`, one process per table, median times):
#
# | method | what it is |
# | --- | --- |
# | SDPA flash | `scaled_dot_product_attention(is_causal=True)`, FlashAttention backend: the dense baseline |
# | FlexAttention | `torch.nn.attention.flex_attention` with a causal block mask (compiled) |
# | seeds' masked SDPA | the seeds' approach: an $L \times L$ top-k mask passed to SDPA — dense cost, no saving |
# | gather reference | our plain-PyTorch sparse attention: gathers the $k$ keys of every query |
# | sparse kernel | our Triton sparse attention (GQA-aware, padded slots) over precomputed indices |
# | indexer top-k | ours with its scores (the threshold search `indexer_topk_threshold`, the per-query-k path, and stored score chunks + our top-k `indexer_topk_chunked`, the fixed-k path of `dsa.ops.indexer_topk`) vs scores + `torch.topk`; our top-k vs `torch.topk` over the same precomputed scores |
# | DSA (select + attend) | `dsa.ops.indexer_topk` + the sparse kernel: what replaces the dense attention (fwd+bwd: attention backward; the selection has no gradient) |
#
# for MHA ($H_{kv} = H$) and GQA ($H_{kv} = 2$), with $k$ = 2048 (DeepSeek-V3.2's) and $k = L/8$. The model's
# whole layer (projections, indexer, top-k, sparse attention, KL loss) against the same dense layer, in the
# MQA layout where DSA should pay, is the section "Where DSA should pay" (`python -m dsa.bench.layer`, H200).
#
# The **recorded** numbers come from `data/bench/*.json` (an H100; every file's device, commit and date
# are printed and stamped on the figures; several files are merged, the newest winning for a repeated
# configuration). A CPU cannot measure GPU kernels, so the **fresh** benchmark run here uses small sizes
# and the PyTorch reference paths: it checks that the benchmark runs, not how fast the kernels are.

# %%
import sys
from pathlib import Path

try:
    import dsa  # noqa: F401
except ImportError:  # opened from notebooks/ without the package installed: use the repository copy
    sys.path.insert(0, str(Path.cwd().parent))

from dsa.study.notebook_params import between, one_of, satisfies, snapshot_namespace
from dsa.study.runs import parse_list, valid_list
from dsa.study.setup import setup_notebook

_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
device: str = "cpu"  # device of the fresh benchmark: "cpu", "cuda" or "auto"
run_fresh: bool = True  # run a fresh dsa.bench.kernels in this notebook
bench_seq_lens: str = "128,256,512"  # comma-separated sequence lengths of the fresh benchmark (tokens)
bench_top_k: str = "64,0"  # comma-separated k values of the fresh benchmark; 0 means L/8
bench_heads: int = 4  # attention heads H of the fresh benchmark
bench_kv_heads: str = "4,2"  # comma-separated key/value head counts (H for MHA, fewer for GQA)
bench_head_dim: int = 32  # head dimension d of the fresh benchmark
bench_indexer_heads: int = 4  # indexer heads of the fresh benchmark
bench_indexer_dim: int = 32  # indexer head dimension of the fresh benchmark
recorded: str = "bench/*.json"  # glob under data/: the recorded benchmark files (merged)
step_profiles: str = "bench/step-profile/*/*.json"  # glob under data/: dsa.bench.step_profile files ("" to skip)
layer_bench: str = "bench/layer/*.json"  # glob under data/: dsa.bench.layer files, the model's own layer ("" to skip)
map_bench: str = "bench/map/*.json"  # glob under data/: dsa.bench.map files, the map of where DSA pays ("" to skip)
launch_profiles: str = "bench/map/profile/*.json"  # glob under data/: dsa.bench.launch_profile files ("" to skip)
plot_k: str = "2048"  # the k shown in the plots over L: an integer, or "L/8"
flex_artifact_factor: float = 10.0  # FlexAttention this many times slower than flash is flagged as an artefact
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "05_efficiency",
    rules={
        "device": one_of("cpu", "cuda", "auto"),
        "bench_seq_lens": satisfies(lambda v, p: bool(parse_list(v) if valid_list(v, int, minimum=16) else None),
                                    "must be a non-empty comma-separated list of lengths >= 16"),
        "bench_top_k": satisfies(
            lambda v, p: valid_list(v, int, minimum=0) and bool(parse_list(v)) and valid_list(p["bench_seq_lens"], int)
            and all(k <= min(parse_list(p["bench_seq_lens"]) or [0]) for k in parse_list(v)),
            "must be a non-empty comma-separated list of k in [0, the smallest bench_seq_lens] (0 means L/8)"),
        "bench_heads": between(1, None),
        "bench_kv_heads": satisfies(
            lambda v, p: valid_list(v, int, minimum=1) and bool(parse_list(v))
            and all(p["bench_heads"] % h == 0 for h in parse_list(v)),
            "must be a comma-separated list of divisors of bench_heads"),
        "bench_head_dim": satisfies(lambda v, p: v >= 2 and v % 2 == 0, "must be an even number >= 2"),
        "bench_indexer_heads": between(1, None),
        "bench_indexer_dim": between(1, None),
        "plot_k": satisfies(lambda v, p: v.strip() == "L/8" or (v.strip().isdigit() and int(v) >= 1),
                            'must be a positive integer or "L/8"'),
        "flex_artifact_factor": satisfies(lambda v, p: v > 1, "must be > 1"),
    },
)
P, DEV, FRESH_LABEL = nb.params, nb.device, nb.fresh_label

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.express as px
import seaborn as sns
import torch
from IPython.display import Markdown, display

from dsa.bench import kernels as dsa_bench
from dsa.bench import map as dsa_map
from dsa.study import bench_tables as B
from dsa.study import map_tables as MT
from dsa.study.figures import save_static
from dsa.study.tables import readable
from dsa.records import describe_provenance, load_records, summarize_provenance
from dsa.study.runs import runs_dir

METHOD_COLORS = {label: c for label, c in zip(
    [*B.METHODS.values(), *B.TOPK_METHODS.values()],
    ["#444444", "#8c564b", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#e377c2", "#17becf",
     "#bcbd22", "#7f7f7f"])}


def maybe_save(fig, name, source):
    if P.save_figures:
        save_static(fig, name, source=source)


def len_ticks(ax, lengths):
    """x ticks at the measured lengths, labelled 1K, 2K, ... (log axes otherwise print 2x10^3)."""
    xs = sorted({int(x) for x in lengths})
    ax.set_xticks(xs, [f"{x // 1024}K" if x >= 1024 else str(x) for x in xs])
    ax.minorticks_off()


def ms_vs_len(long, title, rule):
    """Plotly: ms vs L (log-log), one line per method, MHA / GQA side by side, one row per pass."""
    d = long[long["pass"] != "selection (no grad)"]
    fig = px.line(d, x="L", y="ms", color="method", facet_col="kind", facet_row="pass", markers=True, log_x=True,
                  log_y=True, color_discrete_map=METHOD_COLORS, hover_data=["k", "peak_mib", "tflops"],
                  labels={"L": "sequence length L (tokens)", "ms": "time (ms)"},
                  title=f"{title}: time per layer call, {rule} (lower is better)")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_layout(height=650)
    return fig


# %% [markdown]
# ## 1 · Recorded benchmark data

# %%
results = B.load_bench_results(P.recorded)
df = B.bench_frame(results)
if df.empty:
    display(Markdown(f"**No recorded benchmark**: nothing matches `data/{P.recorded}`. Run `python -m dsa.bench.kernels "
                     "--out data/bench/<name>.json` on a GPU. Only the fresh CPU run is shown below."))
    REC_LABEL = ""
else:
    REC_LABEL = "; ".join(sorted({describe_provenance(r["provenance"]) for r in results}))
    print(f"{len(df)} configurations from {len(results)} file(s); {int((df.superseded > 0).sum())} configuration(s) "
          "were measured in more than one file (the newest kept)")
    display(df.groupby(["kind", "k_rule"]).L.apply(lambda s: ", ".join(str(int(x)) for x in sorted(s)))
            .rename("L measured").to_frame())
    sk = B.skipped(df)
    if len(sk):
        display(Markdown("Measurements the benchmark could not take (out of memory on the GPU, or skipped by size):"))
        display(sk)

# %% [markdown]
# ## 2 · Time over sequence length
#
# Per method, the time of one layer call against $L$ on log-log axes: a slope of 2 is quadratic, 1 is
# linear. `plot_k` chooses the $k$ of the sparse methods (the dense ones do not depend on it).

# %%
if not df.empty:
    rec = B.select_k(df, P.plot_k)
    rule = f"k={P.plot_k}" if P.plot_k != "L/8" else "k=L/8"
    long = B.long_times(rec)
    ms_vs_len(long, f"Recorded ({REC_LABEL})", rule).show()

    d = long[long["pass"] != "selection (no grad)"]
    kinds = sorted(d.kind.unique(), key=lambda k: not k.startswith("MHA"))
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 8.5), squeeze=False, sharex=True)
    for j, kind in enumerate(kinds):
        for i, ps in enumerate(("forward", "forward + backward")):
            ax = axes[i, j]
            sub = d[(d.kind == kind) & (d["pass"] == ps)]
            for m, g in sub.groupby("method", sort=False):
                ax.plot(g.L, g.ms, marker="o", ms=4, label=m, color=METHOD_COLORS.get(m))
            ax.set(xscale="log", yscale="log", xlabel="sequence length L (tokens)", ylabel="time per call (ms)",
                   title=f"{kind}, {ps} ({rule}; lower is better)")
            len_ticks(ax, sub.L)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0.01, 1, 0.94))
    maybe_save(fig, "05_time_vs_len", REC_LABEL)
    plt.show()

# %% [markdown]
# ## 3 · The whole DSA layer against flash: speed-up over L
#
# Speed-up = flash time / DSA layer time (above 1: DSA is faster; the dotted line is break-even). The
# targets of the study are marked: 4x at 32K and 8x at 64K for fwd+bwd, break-even by 8K.

# %%
if not df.empty:
    sp = df.melt(id_vars=["L", "k", "kind", "k_rule"], value_vars=["speedup_fwd", "speedup_fwdbwd"],
                 var_name="pass", value_name="speed-up").dropna()
    sp["pass"] = sp["pass"].map({"speedup_fwd": "forward", "speedup_fwdbwd": "forward + backward"})
    sp["config"] = sp.kind + ", " + sp.k_rule.str.replace("=2048=L/8", "=2048")
    fig = px.line(sp, x="L", y="speed-up", color="config", facet_col="pass", markers=True, log_x=True, log_y=True,
                  labels={"L": "sequence length L (tokens)", "speed-up": "flash ms / DSA layer ms"},
                  title=f"DSA layer speed-up over SDPA flash (above 1 is better)<br><sup>{REC_LABEL}</sup>")
    fig.add_hline(y=1, line_dash="dot")
    fig.add_scatter(x=[32768, 65536], y=[4, 8], mode="markers", marker_symbol="star", marker_size=12,
                    marker_color="black", name="targets (fwd+bwd)", row=1, col=2)
    fig.show()

    fig, ax = plt.subplots(figsize=(8, 4.6))
    fb = sp[sp["pass"] == "forward + backward"]
    for cfg, g in fb.groupby("config"):
        g = g.sort_values("L")
        ax.plot(g.L, g["speed-up"], marker="o", ms=4, label=cfg)
    ax.axhline(1, color="0.4", ls=":", lw=1, label="break-even")
    ax.scatter([32768, 65536], [4, 8], marker="*", s=160, color="k", zorder=5, label="targets: 4x at 32K, 8x at 64K")
    ax.axvspan(fb.L.min() / 1.3, 8192, color="#2ca02c", alpha=0.06,
               label="break-even target region (L ≤ 8K)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length L (tokens)",
           ylabel="flash fwd+bwd ms / DSA layer fwd+bwd ms",
           title="DSA layer fwd+bwd speed-up over flash (above 1 is better)")
    len_ticks(ax, fb.L)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    maybe_save(fig, "05_speedup", REC_LABEL)
    plt.show()

# %% [markdown]
# ## 4 · The parts: top-k selection and the sparse kernel's throughput
#
# Left: the selection. `torch.topk` and our top-k are timed over scores computed beforehand; our indexer
# top-ks include computing the scores, so "scores + `torch.topk`" is their like-for-like comparison. Right:
# achieved TFLOP/s of the sparse kernel and of flash on the same shape (FLOPs: $2L^2Hd$ for causal dense,
# $4Hd\sum_t \min(t+1, k)$ for sparse: the pairs a causal top-k attends to), higher is better.

# %%
if not df.empty:
    tk = B.long_times(df, methods={}, passes=())
    tk = tk[tk.k_rule.isin(["k=2048", "k=2048=L/8"]) if P.plot_k != "L/8" else tk.k_rule.str.contains("L/8")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for (m, kind), g in tk.groupby(["method", "kind"]):
        g = g.sort_values("L")
        axes[0].plot(g.L, g.ms, marker="o", ms=4, color=METHOD_COLORS.get(m),
                     ls="-" if kind.startswith("MHA") else "--", label=f"{m} · {kind.split(' ')[0]}")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length L (tokens)", ylabel="time (ms)",
                title=f"Top-k selection, {rule} (lower is better)")
    len_ticks(axes[0], tk.L)
    axes[0].legend(fontsize=6)
    tf = df.melt(id_vars=["L", "k", "kind", "k_rule"], value_vars=["sparse_fwd_tflops", "flash_fwd_tflops"],
                 var_name="method", value_name="TFLOP/s").dropna()
    tf["method"] = tf.method.map({"sparse_fwd_tflops": "sparse kernel fwd", "flash_fwd_tflops": "flash fwd"})
    tf = B.select_k(tf, P.plot_k)
    for (m, kind), g in tf.groupby(["method", "kind"]):
        g = g.sort_values("L")
        axes[1].plot(g.L, g["TFLOP/s"], marker="o", ms=4, ls="-" if kind.startswith("MHA") else "--",
                     color="#1f77b4" if m.startswith("sparse") else "#444444", label=f"{m} · {kind.split(' ')[0]}")
    axes[1].set(xscale="log", xlabel="sequence length L (tokens)", ylabel="achieved TFLOP/s",
                title=f"Throughput, {rule} (higher is better)")
    len_ticks(axes[1], tf.L)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    maybe_save(fig, "05_topk_tflops", REC_LABEL)
    plt.show()

# %% [markdown]
# ### The selection alone: our top-k kernel vs `torch.topk` over the same scores
#
# `torch.topk` sorts its $k$ winners and returns their values; the attention needs only the set of
# positions. `dsa.ops.kernels.radix_topk` finds the $k$-th largest score of each row and writes the positions at
# or above it. It sorts a stratified sample of 512 scores of the row and reads off two scores that bracket
# the $k$-th one (about three standard deviations of the sample rank on either side); one pass over the row
# copies the candidates, the scores at or above the bracket's low end with their positions, aside in order;
# 8-bit histogram rounds over the candidates (starting at the first byte where the bracket's ends differ)
# find the $k$-th score, and one pass over the candidates writes the positions, ascending. So the row is
# read once. When the sample misses (a row the sample does not represent, or ties that overflow the
# scratch) the row falls back to a radix select (four 8-bit histogram passes over it). The result is exact
# either way. Both read the same precomputed causal scores (`python -m dsa.bench.kernels --selection-only`); a ratio
# above 1 means ours is faster. The target is 5x at $k = 2048$.

# %%
if not df.empty:
    txt = B.selection_text(df)
    display(Markdown(txt or "No recorded row measured our top-k kernel over precomputed scores."))

# %% [markdown]
# ### Where our top-k's time goes
#
# Each launch of `radix_topk` timed on its own (`python -m dsa.bench.kernels --selection-only --profile-selection`),
# against one read of the fp32 causal score triangle at the HBM peak (the dashed line: what a selection
# bound by memory would cost). Shorter bars are better; a bar well past the line is bound by its
# instructions (scans, histograms, scattered stores), not by memory.

# %%
prof = B.selection_profile(df) if not df.empty else B.selection_profile(pd.DataFrame())
if prof.empty:
    print("No recorded row profiled the top-k's launches.")
else:
    for device, g in prof.groupby("device"):
        g = g[g.k == 2048] if (g.k == 2048).any() else g
        piv = g.pivot_table(index="L", columns="stage", values="ms", sort=False)
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.55 * len(piv)))
        piv.plot.barh(stacked=True, ax=ax, colormap="tab10", width=0.7)
        reads = g.groupby("L").one_read_ms.first().reindex(piv.index)
        for i, v in enumerate(reads):
            ax.plot([v, v], [i - 0.4, i + 0.4], color="k", ls="--", lw=1)
        ax.set(xlabel="time per call (ms)", ylabel="sequence length L (tokens)",
               title=f"Our top-k per launch, k={int(g.k.iloc[0])}, {device} (shorter is better; dashed: one read)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        maybe_save(fig, "05_topk_profile", REC_LABEL)
        plt.show()

# %% [markdown]
# ### Memory
#
# Peak memory allocated during each call, beyond what was allocated before it (the inputs). The seeds'
# masked SDPA materialises an $L \times L$ mask; the gather reference an $L \times k \times d$ copy per
# head.

# %%
if not df.empty:
    mem = long.dropna(subset=["peak_mib"])
    px.line(mem[mem["pass"] != "selection (no grad)"], x="L", y="peak_mib", color="method", facet_col="kind",
            facet_row="pass", log_x=True, log_y=True, markers=True, color_discrete_map=METHOD_COLORS,
            labels={"L": "sequence length L (tokens)", "peak_mib": "peak memory (MiB)"},
            title=f"Peak memory per call, {rule} (lower is better)<br><sup>{REC_LABEL}</sup>").update_layout(
        height=650).for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## 5 · The study's targets, on the recorded data
#
# Each target is evaluated on the **most favourable** configuration measured (best over $k$ and
# MHA / GQA), so a miss is not an artefact of which row is shown; `per_kind` gives the best per attention
# kind. "not measured" means the data has no row at that length.

# %%
if not df.empty:
    targets = B.evaluate_targets(df)
    display(targets[["target", "measured", "met", "per_kind", "note"]])
    met = (targets.met == "yes").sum()
    lines = [f"**{met} of {len(targets)} targets met** on the recorded data ({REC_LABEL})."]
    for _, t in targets.iterrows():
        lines.append(f"* {t.target}: **{t.met}** — {t.measured}.")
    why = B.breakdown_text(df)
    if why:
        lines += ["", "Where the time goes: " + why]
    display(Markdown("\n".join(lines)))
    display(B.layer_breakdown(df).round(3))

# %% [markdown]
# ### Why the attention targets are out of reach: the bytes a per-query selection must move
#
# Flash attention loads a K/V tile once for a block of 64-128 queries. A per-query top-$k$ shares nothing
# between queries: for every query, KV head and selected slot the forward reads one K and one V row
# ($2d$ values) and the backward reads them again and adds dK, dV back at scattered rows (float32
# atomics). `gather_roofline` turns that into bytes (a lower bound without reuse), the effective
# bandwidth the kernel reached (bytes / measured time; above the HBM peak where rows come from L2), and
# the bandwidth a layer meeting the target would need for those bytes alone. The arithmetic intensity
# of the sparse forward is $G = H/H_{kv}$ flop per byte, far below the ~300 flop/byte an H100 needs to
# be compute-bound, which also caps the kernel's TFLOP/s: 60% of flash's needs $G$ in the tens
# (MQA-style sharing, as DeepSeek's MLA does with 128 heads on one latent KV).

# %%
if not df.empty:
    roof = B.gather_roofline(df)
    if not roof.empty:
        display(roof.round(2))
        display(Markdown(B.roofline_text(df) + " Lower needed bandwidth is better; a need above the "
                         "reached effective bandwidth is a target this kernel design cannot meet without "
                         "queries sharing their selected rows."))
        fig, ax = plt.subplots(figsize=(8, 4))
        sns.lineplot(roof, x="L", y="fwd TB/s reached", hue="kind", style="k", markers=True, ax=ax)
        peak = roof["HBM peak TB/s"].dropna()
        if not peak.empty:
            ax.axhline(peak.iloc[0], color="0.4", ls="--", lw=1, label=f"HBM peak ({peak.iloc[0]:g} TB/s)")
        ax.set(xscale="log", xlabel="sequence length L (tokens)", ylabel="effective gather bandwidth (TB/s)",
               title="Sparse kernel forward: bytes it must move / time (higher is better)")
        len_ticks(ax, roof.L)
        ax.legend(fontsize=7)
        fig.tight_layout()
        maybe_save(fig, "05_gather_bandwidth", REC_LABEL)
        plt.show()

# %% [markdown]
# ### A whole training step: dense vs DSA in one process
#
# The seeds' "1.4-1.7x faster training" is a claim about training steps, not kernels.
# `python -m dsa.bench.step_profile` times the sparse-phase training step of the study's full-size model
# (d_model 256, 4 layers, 8 heads of 32; LM loss + the indexer's KL loss, backward, both optimisers)
# with dense attention and with DSA, in the same process, and lists the top operators. The first
# profile found 20-75% of a DSA step in a sorting `index_put` (the backward of gathering indexer keys
# in the KL loss); the fix (a dense product per query chunk, then a gather; the Triton scores-at kernel
# on CUDA) is the `after-kl-fix` stage. `x dense` below 1 would mean DSA trains faster.

# %%
step_records = load_records(P.step_profiles) if P.step_profiles else []
all_steps = B.step_profile_frame(step_records)
KL_FIX_STAGES = ("before-kl-fix", "after-kl-fix")  # this section's stages; the MQA layout has its own below
steps = all_steps[all_steps.stage.isin(KL_FIX_STAGES)]
if steps.empty:
    display(Markdown(f"No step profile matches `data/{P.step_profiles}`."))
else:
    show = steps.rename(columns={"x_first": "x dense", "ms_per_step": "ms/step"})
    display(readable(show.drop(columns=["device", "commit", "date", "layout", "attention_share"]), 2))
    latest = steps.loc[steps.date.idxmax(), "stage"]  # the most recent profile: the code as it is now
    after = steps[(steps.stage == latest) & steps.variant.str.startswith("dsa")]
    fig = px.bar(steps[steps.variant.str.startswith("dsa")], x="variant", y="x_first", color="stage",
                 facet_col="L", barmode="group", hover_data=["k", "batch", "ms_per_step", "top_op"],
                 labels={"x_first": "DSA step time / dense step time", "variant": "DSA variant (impl:chunk)"},
                 title="Training step, DSA relative to dense (1 = parity; lower is better)<br>"
                       f"<sup>{summarize_provenance(r['provenance'] for r in step_records)}</sup>")
    fig.add_hline(y=1.0, line_dash="dot")
    fig.show()
    display(Markdown(
        f"After the fix a DSA training step takes {after.x_first.min():.1f}-{after.x_first.max():.1f}x the dense "
        f"step on {after.device.iloc[0]} (L = {', '.join(str(int(x)) for x in sorted(after.L.unique()))}): "
        f"no single GPU operator takes more than {(after.top_op_ms / after.ms_per_step).max():.0%} of a step: "
        "at these sizes the time is spread over many small kernels (DSA adds the indexer, the top-k and the KL "
        "loss to every layer), not concentrated in the attention arithmetic that sparsity saves."))

# %% [markdown]
# ### Where DSA should pay: the model's own layer in the MQA layout
#
# DSA saves attention work only where the main attention costs far more per (query, key) pair than the
# indexer (`../shared/notes/where_dsa_pays.md`): many query heads sharing one K/V (MQA, MLA), long context,
# k ≪ L. `python -m dsa.bench.layer` times **the model's own layer** (`dsa.layers.DSAAttention`: projections,
# indexer, top-k, sparse attention and, in training, the indexer's KL loss; the code `dsa.train.trainer` runs)
# against the same layer with dense attention (`dsa.layers.DenseAttention`, same weights) on cuDNN SDPA (the
# fastest dense attention on Hopper), flash SDPA and FlexAttention, in one process. Speed-up = dense ms /
# DSA ms: **above 1, DSA is faster**. The table under it splits the DSA layer into its parts.

# %%
layer_records = load_records(P.layer_bench) if P.layer_bench else []
layer = B.layer_bench_frame(layer_records)
if layer.empty:
    display(Markdown(f"No layer benchmark matches `data/{P.layer_bench}`: run `python -m dsa.bench.layer` on a GPU."))
else:
    fig = px.line(layer.dropna(subset=["speedup"]), x="L", y="speedup", color="baseline", line_dash="indexer",
                  facet_col="pass", markers=True, log_x=True, hover_data=["dense_ms", "dsa_ms", "dsa_tflops"],
                  labels={"speedup": "dense layer ms / DSA layer ms", "L": "sequence length L (tokens)"},
                  title=f"{layer.layout.iloc[0]}, k = {int(layer.k.iloc[0])}: DSA layer speed-up over the dense layer "
                        "(above 1 = DSA faster)<br>"
                        f"<sup>{summarize_provenance(r['provenance'] for r in layer_records)}</sup>")
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(margin=dict(t=110))
    fig.show()
    parts = layer[layer.baseline == B.LAYER_BASELINES["cudnn"]] if (layer.baseline == B.LAYER_BASELINES["cudnn"]).any() \
        else layer[layer.baseline == layer.baseline.iloc[0]]
    parts = parts.sort_values(["indexer", "L", "pass"])
    display(readable(parts[["L", "indexer", "pass", "dense_ms", "dsa_ms", "speedup", "dsa_tflops",
                            "indexer_topk_ms", "sparse_ms", "kl_fwdbwd_ms"]].rename(columns={
        "dense_ms": f"dense ({parts.baseline.iloc[0]}) ms", "dsa_ms": "DSA layer ms", "speedup": "x dense",
        "dsa_tflops": "DSA attention TFLOP/s", "indexer_topk_ms": "indexer + top-k ms",
        "sparse_ms": "sparse attention ms", "kl_fwdbwd_ms": "KL loss fwd+bwd ms"}), 2,
        na={"KL loss fwd+bwd ms": "n/a (no KL loss in a forward)"}))
    display(readable(B.evaluate_layer_targets(layer), 2))

# %% [markdown]
# A whole training step of a model in that layout (`python -m dsa.bench.step_profile` with the MQA flags; LM
# loss + indexer KL, backward, both optimisers): DSA step time / dense step time (**below 1, DSA trains
# faster**), and the share of the step spent in attention kernels. Stage `mqa-fp32-scores-at` is the same
# model before the fix of the KL loss's dtype (its attention share counted operator and kernel rows alike:
# not comparable); `mqa-one-path` is the code as it is.

# %%
mqa_steps = all_steps[~all_steps.stage.isin(KL_FIX_STAGES)].sort_values(["stage", "L", "variant"])
if mqa_steps.empty:
    display(Markdown("No step profile outside the KL-fix stages: run `python -m dsa.bench.step_profile` with "
                     "`--n-kv-heads 1` on a GPU and keep its JSON under `data/bench/step-profile/<stage>/`."))
else:
    display(readable(mqa_steps[["stage", "device", "layout", "L", "k", "variant", "ms_per_step", "x_first",
                                "attention_share", "peak_mib", "top_op"]].rename(
        columns={"x_first": "x dense", "ms_per_step": "ms/step", "attention_share": "attention share"}), 3,
        na={"attention share": "n/a (not recorded)", "peak_mib": "n/a (CPU)"}))

# %% [markdown]
# ### Where DSA pays: the map over layouts, indexers and L
#
# `python -m dsa.bench.map` (`scripts/gpu/gpu_map.sh` on one H200) times the model's own DSA layer against
# its dense layer, prefill and training, for MHA 16 × 128, GQA 16/2, MQA 64 × 128 and DeepSeek-V3.2's MLA in
# MQA mode (128 heads on one latent K/V, d_qk 576, d_v 512; its dense layer is MLA in MHA mode, 128 heads,
# d_qk 192, d_v 128, DeepSeek's prefill), with the indexer at 4 × 64 and 64 × 128 in bf16 and 64 × 128 in FP8
# (DeepSeek's).
# Speed-up = the **best** dense kernel's ms (cuDNN, flash or FlexAttention, same run) / the DSA layer's ms:
# **above 1, DSA is faster**. Dashed: the cost model (`dsa.study.map_tables`: FLOPs and bytes per (query,
# key) pair at the H200's measured matrix rates and bandwidth, attention and indexer only), the speed-up
# ideal kernels would give. The table names, per layout and indexer, the L from which DSA beats the best dense
# kernel at every larger measured L. A point measured in several runs shows the newest run's time; a series
# re-run after a kernel change (the 64 × 128 indexer's heads-as-N score kernel, 2026-12-02) keeps its older
# points at the lengths the re-run did not reach, flagged `stale` in `MT.map_frame`.

# %%
map_records = load_records(P.map_bench) if P.map_bench else []
map_label = summarize_provenance(r["provenance"] for r in map_records) if map_records else None
if not map_records:  # no recorded map: a tiny CPU run, which shows the machinery and nothing about GPU speed
    map_records = [dsa_map.run(dsa_map.MapConfig())]
    map_label = f"TINY CPU RUN ({FRESH_LABEL}): reference paths, toy sizes; not a measurement of any GPU kernel"
dmap = MT.map_frame(map_records)
fig = px.line(MT.long_speedups(dmap), x="L", y="value", color="indexer", line_dash="source", facet_col="layout",
              facet_row="pass", markers=True, log_x=True, log_y=True,
              hover_data=["best_dense", "best_dense_ms", "dsa_ms"],
              labels={"value": "best dense ms / DSA ms", "L": "sequence length L (tokens)"},
              title="Where DSA pays: DSA layer speed-up over the best dense kernel (above 1 = DSA faster)<br>"
                    f"<sup>{map_label}</sup>")
fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
fig.add_hline(y=1.0, line_dash="dot")
fig.update_layout(height=650, margin=dict(t=110))
fig.show()
display(readable(MT.crossover(dmap), 2))

# %% [markdown]
# ### Where a map row's time goes, per kernel launch
#
# `python -m dsa launch-profile` profiles one row of the map (the same layers, weights and inputs) under
# `torch.profiler`: the GPU kernels' time per call, grouped into the sparse attention's forward and
# backward, the indexer's scores, the top-k, the indexer loss, dense attention, matrix products (the
# projections) and the rest. This is what bounds a missed target: **the tallest block is the one to make
# faster**. A CPU profile of the reference ops says nothing about GPU kernels (the indexer and the attention
# share the same matrix products there).

# %%
prof_records = load_records(P.launch_profiles) if P.launch_profiles else []
if prof_records:
    prof_label = summarize_provenance(r["provenance"] for r in prof_records)
else:  # nothing recorded: a tiny CPU profile, which shows the machinery only
    from dsa.bench import launch_profile as LP

    prof_records = [LP.run(LP.LaunchProfileConfig(device="cpu", calls=1), log=lambda s: None)]
    prof_label = f"TINY CPU RUN ({FRESH_LABEL}): reference ops, toy sizes; not a measurement of any GPU kernel"
lp = MT.launch_profile_frame(prof_records)
lp["row"] = lp.layer + ", " + lp.layout + ", L = " + lp.L.astype(str) + ", indexer " + lp.indexer
fig = px.bar(lp, x="row", y="ms", color="category", facet_col="pass", hover_data=["share"],
             labels={"ms": "kernel time per call (ms)", "row": ""},
             title=f"Where the layer's time goes, per kernel category (lower is better)<br><sup>{prof_label}</sup>")
fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
fig.update_layout(height=560, margin=dict(t=110))
fig.show()
display(readable(lp.pivot_table(index=["layout", "L", "indexer", "layer", "pass"], columns="category",
                                values="share", fill_value=0.0).reset_index(), 2))

# %% [markdown]
# ### A caveat on FlexAttention

# %%
if not df.empty:
    fa = B.flex_artifacts(df, P.flex_artifact_factor)
    if fa.empty:
        display(Markdown(f"No FlexAttention measurement is more than {P.flex_artifact_factor:g}x slower than flash."))
    else:
        display(fa.round(2))
        import torch._dynamo.config as dynamo_config

        limit = getattr(dynamo_config, "recompile_limit", getattr(dynamo_config, "cache_size_limit", None))
        all_ratio = (df.flex_fwd_ms / df.flash_fwd_ms).dropna()
        ok_ratio = all_ratio[all_ratio <= P.flex_artifact_factor]

        def span(lo, hi, fmt):
            return f"{lo:{fmt}}x" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}x"

        display(Markdown(
            f"At L = {', '.join(str(int(x)) for x in sorted(fa.L.unique()))} FlexAttention is "
            f"{span(fa.ratio.min(), fa.ratio.max(), '.0f')} slower than flash and needs up to "
            f"{fa.flex_fwd_peak_mib.max() / 1024:.0f} GiB, while at every other L it runs at "
            f"{span(ok_ratio.min(), ok_ratio.max(), '.2f')} flash's time. Those rows are distinct shape no. "
            f"{', '.join(str(int(x)) for x in sorted(fa.flex_shape_no.dropna().unique()))} that the benchmark "
            f"compiled `flex_attention` for (`dynamic=False`: one compilation per shape); torch.compile's "
            f"recompile limit is {limit} in the torch installed here (8 by default). Past it, torch.compile stops "
            "compiling and runs the function eagerly, i.e. the unfused path that materialises the full score "
            "matrix. The number is an artefact of the benchmark harness, not FlexAttention's speed; read "
            "FlexAttention ≈ flash here."))

# %% [markdown]
# ## 6 · A fresh benchmark, on this machine
#
# `dsa.bench.kernels` at small sizes (parameters `bench_*`). On a CPU every method runs its PyTorch reference
# (SDPA math, the gather reference, `indexer_topk`), so the times say nothing about the GPU kernels; on a
# GPU (`device: cuda`) this is a quick re-measurement.

# %%
if P.run_fresh:
    out = runs_dir("05_efficiency") / f"bench-{DEV.type}.json"
    bench_cfg = dsa_bench.KernelBenchConfig(
        seq_lens=parse_list(P.bench_seq_lens), top_k=parse_list(P.bench_top_k), kv_heads=parse_list(P.bench_kv_heads),
        heads=P.bench_heads, head_dim=P.bench_head_dim, indexer_heads=P.bench_indexer_heads,
        indexer_dim=P.bench_indexer_dim, cpu=DEV.type == "cpu")
    fresh = dsa_bench.bench(bench_cfg, out)
    print(dsa_bench.table(fresh))
    fdf = B.bench_frame([fresh])
    print(f"{len(fdf)} configurations: {FRESH_LABEL}; sparse path: {fresh['provenance']['bench']['sparse_path']}")
    flong = B.long_times(fdf)
    fsel = B.select_k(fdf, "L/8" if 0 in parse_list(P.bench_top_k) else P.bench_top_k.split(",")[0])
    frule = fsel.k_rule.iloc[0] if len(fsel) else ""
    ms_vs_len(B.long_times(fsel), f"Fresh ({FRESH_LABEL})", frule).show()
    display(fdf[["L", "k", "kind", "flash_fwd_ms", "masked_fwd_ms", "gather_fwd_ms", "sparse_fwd_ms", "dsa_fwd_ms",
                 "torch_topk_ms", "topk_fast_ms", "speedup_fwd", "speedup_fwdbwd"]].round(3))
else:
    print("run_fresh is off: no fresh benchmark.")
