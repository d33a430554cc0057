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
# # 01 · The lightning indexer, top-k selection and the causal guard
#
# DeepSeek Sparse Attention (DSA) lets every query attend to only **k** of its past tokens. Which k is
# decided by a cheap scorer, the *lightning indexer*:
#
# $$I[t,s] = \sum_{j=1}^{H_I} w[t,j]\;\mathrm{ReLU}\big(q_I[t,j]\cdot k_I[s]\big)$$
#
# * $q_I[t,j]$: one small query per **indexer head** $j$, computed from token $t$;
# * $k_I[s]$: **one** key per token $s$, shared by all indexer heads (MQA-style);
# * $w[t,j]$: a per-token weight for each indexer head, also computed from token $t$.
#
# Each query keeps the top-k of $I[t, s]$ over $s \le t$ and runs ordinary softmax attention over those
# k tokens only. This notebook walks through the formula on real numbers, its cost, the selection, the
# **causal guard** (and what the seed code got wrong without it), then lets you explore the indexer of a
# small DSA model with widgets, and measures what each indexer head looks at.
#
# All computation lives in the `dsa` package; this notebook holds parameters, calls and plots.
# Parameters are validated in the first cells: an unknown name or an invalid value stops here.

# %%
import sys
from pathlib import Path

try:
    import dsa  # noqa: F401
except ImportError:  # opened from notebooks/ without the package installed: use the repository copy
    sys.path.insert(0, str(Path.cwd().parent))

from dsa.study.notebook_params import between, one_of, satisfies, snapshot_namespace
from dsa.study.setup import setup_notebook

_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
seed: int = 0
device: str = "cpu"  # "cpu", "cuda" or "auto"
checkpoint: str = ""  # a DSA checkpoint written by training (runs/<name>.ckpt.pt) instead of training one here
train_steps: int = 100  # dense LM steps of the inspected model, trained here on Shakespeare (0: a random model)
train_warmup: int = 30  # indexer-only KL warm-up steps after them (DeepSeek's recipe)
train_seq_len: int = 128  # tokens per training sequence
# the inspected model (ignored when a checkpoint is given)
vocab_size: int = 256  # random model only (a trained one uses the corpus's BPE vocabulary)
d_model: int = 64
n_layers: int = 3
n_heads: int = 4
indexer_heads: int = 4
indexer_dim: int = 16
indexer_rope_dim: int = 8
init_gain: float = 8.0  # random model only: gain on the q/k/indexer projections (1: the LM's own init, near-uniform attention)
# sequences and selection
batch: int = 4  # sequences for the statistics
seq_len: int = 256  # tokens per sequence for the statistics
top_k: int = 32  # keys kept per query
view_len: int = 64  # tokens shown in the heatmaps and at the explorer's start
explorer_len: int = 512  # the explorer's longest sequence (its length slider's maximum)
local_window: int = 16  # tokens: "local" means t - s < local_window
k_sweep: str = "4,8,16,32,64,128"  # k values of the recall sweep (those up to seq_len are used)
# cost plot at DeepSeek-V3.2-like sizes
ref_heads: int = 128
ref_head_dim: int = 128
ref_indexer_heads: int = 64
ref_indexer_dim: int = 128
ref_top_k: int = 2048
cost_max_len: int = 131072  # tokens
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "01_indexer_math",
    rules={
        "device": one_of("cpu", "cuda", "auto"),
        "seq_len": between(8, None),
        "top_k": between(1, "seq_len"),
        "view_len": between(2, "seq_len"),
        "explorer_len": between("view_len", 4096),
        "train_steps": between(0, None),
        "train_warmup": between(0, None),
        "train_seq_len": between(8, None),
        "local_window": between(1, "seq_len"),
        "batch": between(1, None),
        "n_layers": between(1, None),
        "n_heads": between(1, None),
        "d_model": satisfies(lambda v, p: v % p["n_heads"] == 0 and (v // p["n_heads"]) % 2 == 0,
                             "must be a multiple of n_heads with an even head dim (RoPE)"),
        "indexer_rope_dim": satisfies(lambda v, p: v % 2 == 0 and 0 <= v <= p["indexer_dim"],
                                      "must be even and in [0, indexer_dim]"),
        "k_sweep": satisfies(lambda v, p: all(x.strip().isdigit() and int(x) >= 1 for x in v.split(",")),
                             "must be a comma-separated list of positive ints"),
        "init_gain": satisfies(lambda v, p: v > 0, "must be > 0"),
        "ref_top_k": between(1, None),
        "cost_max_len": between(1024, None),
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

from dsa.study import analysis as A
from dsa.study.figures import IndexerExplorer, save_static
from dsa.layers import IndexerConfig, LightningIndexer
from dsa.ops import indexer_scores, indexer_topk, select_topk, selection_to_mask
from dsa.study.probes import causality_probe

SOURCE = FRESH_LABEL
print("Every number and figure in this notebook is a", SOURCE, "(no recorded data is read).")


def maybe_save(fig, name):
    if P.save_figures:
        save_static(fig, name, source=SOURCE)


# %% [markdown]
# ## 1 · The formula on a tiny example
#
# A lightning indexer with $d_{model}=8$, $H_I = 2$ heads of $d_I = 4$ dims (no RoPE) on 5 random
# tokens. We take one pair $(t, s)$ and compute the score by hand, term by term, then compare with
# `dsa.ops.indexer_scores`, which computes all pairs at once.

# %%
torch.manual_seed(P.seed)
tiny = LightningIndexer(IndexerConfig(d_model=8, n_heads=2, head_dim=4, rope_dim=0))
x_tiny = torch.randn(1, 5, 8)
with torch.no_grad():
    q_i, k_i, w_i = tiny(x_tiny)
t, s = 3, 1
ex = A.explain_pair(q_i, k_i, w_i, t, s)
torch.set_printoptions(precision=4, sci_mode=False)
print(f"q_I[t={t}, j] (one row per indexer head j):\n{ex['q']}")
print(f"k_I[s={s}] (shared by all heads): {ex['k']}")
print(f"w[t={t}, j]: {ex['w']}")
print(f"q_I[t,j] . k_I[s]: {ex['dot']}")
print(f"ReLU(...):         {ex['relu']}")
print(f"w * ReLU(...):     {ex['contrib']}")
print(f"I[t={t}, s={s}] = sum over heads = {ex['score']:.6f}")
full = indexer_scores(q_i, k_i, w_i)
print(f"indexer_scores(...)[0, {t}, {s}] = {float(full[0, t, s]):.6f}")
assert abs(float(full[0, t, s]) - ex["score"]) < 1e-5, "the hand computation disagrees with indexer_scores"
print("Match: the hand computation equals indexer_scores.")
pd.DataFrame(full[0].numpy(), index=[f"t={i}" for i in range(5)], columns=[f"s={i}" for i in range(5)]).round(4)

# %% [markdown]
# The full score matrix above has `-inf` right of the diagonal: `indexer_scores(causal=True)` already
# marks future keys as never selectable.
#
# **Why ReLU, not softmax?** The indexer only has to *rank* keys for each query; it never mixes values.
# A ReLU makes each $(t,s)$ entry independent of every other key (no normalisation over the row, so no
# second pass over $L$ keys), it is cheap in FP8, and a head that finds no evidence for a key
# contributes exactly 0 instead of a negative vote. Heads whose dot product is negative simply drop out,
# as head 0 or 1 may have done above.
#
# **Why per-token head weights?** $w[t,j]$ comes from the *query* token: each query decides how much it
# trusts each indexer head (a punctuation token may want a "recent tokens" head, a name a "previous
# mention" head). The weights can be negative: a head can also vote *against* keys it matches. Below:
# the weights of the 5 tiny tokens, and the same key's score seen from each query.

# %%
pd.DataFrame(
    {f"w[t, head {j}]": w_i[0, :, j].numpy() for j in range(w_i.shape[-1])}
    | {"I[t, s=0] (the same key)": full[0, :, 0].numpy()},
    index=[f"t={i}" for i in range(5)],
).round(4)

# %% [markdown]
# ## 2 · What the indexer costs
#
# Per (query, key) pair the indexer does $H_I$ dot products of $d_I$ (plus the weighting):
# $2 H_I d_I + 2H_I$ FLOPs; dense attention does $4 H d$ (QKᵀ and PV). The indexer is still quadratic in
# $L$, but with few, small heads (and in FP8 in V3.2) — while the attention itself becomes $O(L \cdot k)$.
# Sizes below are DeepSeek-V3.2-like (parameters `ref_*`); projections are not counted.

# %%
lengths = np.unique(np.geomspace(1024, P.cost_max_len, 24).astype(int))
cost = A.flops_table(lengths, indexer_heads=P.ref_indexer_heads, indexer_dim=P.ref_indexer_dim,
                     heads=P.ref_heads, head_dim=P.ref_head_dim, top_k=P.ref_top_k)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
sns.lineplot(cost, x="L", y="flops", hue="part", ax=axes[0], marker="o", markersize=3)
axes[0].set(xscale="log", yscale="log", xlabel="sequence length L (tokens)", ylabel="forward FLOPs per sequence",
            title="Cost per layer (lower is better)")
axes[0].legend(fontsize=8)
piv = cost.pivot(index="L", columns="part", values="flops")
dense_col = [c for c in piv.columns if c.startswith("dense")][0]
total_col = "DSA total (indexer + sparse)"
idx_col = [c for c in piv.columns if c.startswith("indexer")][0]
axes[1].plot(piv.index, piv[dense_col] / piv[total_col], marker="o", ms=3, label="dense / DSA total (higher is better)")
axes[1].plot(piv.index, piv[idx_col] / piv[total_col], marker="o", ms=3, label="indexer share of DSA (lower is better)")
axes[1].set(xscale="log", yscale="log", xlabel="sequence length L (tokens)", ylabel="ratio (dimensionless)",
            title=f"Speed-up bound and indexer share (k={P.ref_top_k})")
axes[1].axhline(1, color="0.6", lw=0.8)
axes[1].legend(fontsize=8)
fig.suptitle(f"H={P.ref_heads}×d={P.ref_head_dim} attention, H_I={P.ref_indexer_heads}×d_I={P.ref_indexer_dim} indexer",
             fontsize=10)
fig.tight_layout()
maybe_save(fig, "01_indexer_cost")
plt.show()
print(piv.loc[[lengths[0], lengths[len(lengths) // 2], lengths[-1]]].map(lambda v: f"{v:.3g}"))

# %% [markdown]
# At long $L$ the sparse attention term is linear in $L$, so the indexer's quadratic term dominates what
# is left: its share of the DSA cost grows with $L$. That is why V3.2 keeps it small and low-precision.
#
# ## 3 · Top-k selection and the causal guard
#
# We now look at a real (small) DSA model: a `dsa.model.TransformerLM` with `attention='dsa'`, **trained
# here** (`dsa.study.analysis.train_inspect_model`: `train_steps` dense LM steps on the Shakespeare plays, then
# `train_warmup` steps of DeepSeek's KL warm-up, which teach the indexer to point where dense attention
# looks; about half a minute on a laptop CPU, a progress bar counts the steps), fed with text of the
# validation plays. A `checkpoint` replaces it; `train_steps=0` gives a random model fed with tokens from a
# small alphabet (the last quarter repeating the first). Per query $t$ the selection keeps the top-k of
# $I[t, s]$ over $s \le t$ (all past tokens while $t < k$).
#
# **The seed's leak.** The seed code built its top-k mask from scores *without* the causal mask and
# passed it to `scaled_dot_product_attention(attn_mask=...)` *without* `is_causal`: any future token with
# a high score gets selected and attended to. Left: that selection; right: with the guard.

# %%
MAX_LEN = max(P.seq_len, P.explorer_len)
TRAINED = not P.checkpoint and P.train_steps > 0
SIZE = A.InspectModelConfig(d_model=P.d_model, n_layers=P.n_layers, n_heads=P.n_heads, indexer_heads=P.indexer_heads,
                            indexer_dim=P.indexer_dim, indexer_rope_dim=P.indexer_rope_dim, max_seq_len=MAX_LEN,
                            top_k=P.top_k, seed=P.seed)
if TRAINED:
    model, MODEL_LABEL, _ = A.train_inspect_model(SIZE, steps=P.train_steps, warmup_steps=P.train_warmup,
                                                  seq_len=P.train_seq_len, device=DEV)
    tokens = A.corpus_tokens(P.batch, P.seq_len, vocab_size=model.cfg.vocab_size, seed=P.seed).to(DEV)
    explorer_tokens = A.corpus_tokens(1, P.explorer_len, vocab_size=model.cfg.vocab_size, seed=P.seed + 1).to(DEV)
else:
    model, MODEL_LABEL = A.make_inspect_model(P.checkpoint, SIZE, vocab_size=P.vocab_size, init_gain=P.init_gain,
                                              device=DEV)
    tokens = A.structured_tokens(P.batch, P.seq_len, model.cfg.vocab_size, seed=P.seed).to(DEV)
    explorer_tokens = A.structured_tokens(1, P.explorer_len, model.cfg.vocab_size, seed=P.seed).to(DEV)
layers = A.layer_tensors(model, tokens)
print(f"{MODEL_LABEL}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads × {model.cfg.head_dim}, "
      f"indexer {model.cfg.indexer_heads} heads × {model.cfg.indexer_dim} (RoPE on {model.cfg.indexer_rope_dim}); "
      f"tokens {tuple(tokens.shape)} on {DEV}")

k_view = min(P.top_k, P.view_len)
views = {guard: A.explorer_views(layers[0], seq_len=P.view_len, top_k=k_view, head=0, indexer_head=-1, causal=guard)
         for guard in (False, True)}
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
for ax, guard in zip(axes, (False, True)):
    sel = views[guard]["selected"].numpy()
    fut = np.triu(np.ones_like(sel), 1).astype(bool)
    img = np.where(sel > 0, np.where(fut, 2, 1), 0)
    ax.imshow(img, cmap=plt.matplotlib.colors.ListedColormap(["#f4f4f4", "#1f77b4", "#d62728"]), vmin=0, vmax=2,
              interpolation="nearest")
    ax.plot([0, P.view_len - 1], [0, P.view_len - 1], color="k", lw=0.6)
    n_future = int((sel * fut).sum())
    ax.set(xlabel="key position s (tokens)", ylabel="query position t (tokens)",
           title=("seed: no causal guard" if not guard else "with the causal guard") +
           f"\n{n_future} future selections (red; better = 0)")
fig.suptitle(f"Top-k selection, k={k_view}, layer 0, first {P.view_len} tokens (blue = selected past token)",
             fontsize=10)
fig.tight_layout()
maybe_save(fig, "01_causal_guard")
plt.show()
assert views[True]["stats"]["future_selections"] == 0

# %% [markdown]
# ### The causality probe
#
# `dsa.study.probes.causality_probe` perturbs every input after position $t$ and checks that the outputs at
# positions $\le t$ do not change **at all**, and that their gradient with respect to the later inputs is
# exactly zero. We probe layer 0's attention as a function of its input hidden states, once built the
# seed's way and once with the guard (indexer top-k with the causal mask + gather attention).

# %%
x_probe = torch.randn(2, P.view_len, model.cfg.d_model, device=DEV, generator=torch.Generator(DEV).manual_seed(P.seed))
t_probe = P.view_len // 2
probe_rows = []
for name, leak in (("seed: top-k mask, SDPA without is_causal", True), ("DSA with the causal guard", False)):
    fn = A.layer_attention_fn(model, 0, k_view, leak=leak)
    # input (B, L, D); the attention output (B, H, L, d) is transposed so positions are on dim 1 in both
    r = causality_probe(lambda x, fn=fn: fn(x).transpose(1, 2), x_probe, t_probe)
    probe_rows.append({"variant": name, "max |Δ output| at ≤ t": r.max_change_at_or_before_t,
                       "max |∂ output(≤ t) / ∂ input(> t)|": r.grad_leak, "leaks": r.leaks})
    print(f"{name}: {r}")
display(pd.DataFrame(probe_rows))
assert probe_rows[0]["leaks"], "the seed's variant was expected to leak"
assert not probe_rows[1]["leaks"], "the guarded variant must not leak"
print("As expected: the seed's variant leaks the future, the guarded one is exactly causal.")

# %% [markdown]
# ## 4 · Explore: indexer scores → top-k selection → sparse attention (vs dense)
#
# Move the sliders: **k**, the sequence length shown (up to `explorer_len` tokens of one validation
# sequence), the layer, the attention head, the indexer head
# (-1 shows the full weighted sum; a head number shows that head's term $w[t,j]\,\mathrm{ReLU}(\cdot)$
# alone — the selection always uses the full sum) and the causal guard. The four heatmaps update in place.
# Rows are queries $t$, columns keys $s$; blank cells are masked. The line above the plots gives the
# number of keys per query, the mean distance, how much of the dense attention mass (all heads) the
# selection keeps (1 = all of it) and the number of future selections (must be 0).
#
# A static copy of the default view follows the widget, for reports (a widget needs a live kernel).

# %%
explorer_layers = A.layer_tensors(model, explorer_tokens)
explorer = IndexerExplorer(explorer_layers, A.explorer_views, max_len=P.explorer_len, seq_len=P.view_len, top_k=k_view,
                           title=f"Indexer explorer — {MODEL_LABEL.split(' (')[0]}")
display(explorer.widget)

# %%
explorer.static_figure().show()

# %% [markdown]
# ## 5 · What each indexer head looks at
#
# For each layer and indexer head $j$ we take the head's own term $C_j[t,s] = w[t,j]\,\mathrm{ReLU}(q_I[t,j]\cdot k_I[s])$
# over the full sequences (`seq_len` tokens, `batch` sequences) and measure
# * the share of its $|C_j|$ mass that lies within the local window $t - s <$ `local_window` — versus the
#   share a head spreading evenly over the past would get (dashed line): above = a local head, below = a
#   head looking far back;
# * the distances $t - s$ of the top-k it would select on its own.

# %%
head_rows, dist_rows = [], []
uniform = A.uniform_local_share(P.seq_len, P.local_window)
for li, tens in enumerate(layers):
    contrib = A.head_contributions(tens["q_idx"], tens["k_idx"], tens["w"])
    share = A.local_mass_share(contrib, P.local_window)
    sels = A.per_head_selection(tens["q_idx"], tens["k_idx"], tens["w"], P.top_k)
    for j, sel in enumerate(sels):
        d = A.selected_distances(sel).cpu().numpy()
        head_rows.append({"layer": li, "indexer head": j, "local mass share": float(share[j]),
                          "median selected distance (tokens)": float(np.median(d)),
                          "mean |w| (head weight)": float(tens["w"][..., j].abs().mean())})
        sub = np.random.default_rng(P.seed).choice(d, size=min(len(d), 4000), replace=False)
        dist_rows += [{"layer": li, "indexer head": f"L{li} h{j}", "distance t−s (tokens)": int(v)} for v in sub]
    del contrib
heads = pd.DataFrame(head_rows)
dists = pd.DataFrame(dist_rows)

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
sns.barplot(heads, x="indexer head", y="local mass share", hue="layer", ax=axes[0], palette="viridis")
axes[0].axhline(uniform, ls="--", color="k", lw=1, label=f"uniform spread ({uniform:.2f})")
axes[0].set(ylim=(0, 1), ylabel=f"share of |score| mass with t−s < {P.local_window} (fraction)",
            title="Local mass per indexer head\n(above the dashed line = local head)")
axes[0].legend(fontsize=8, title="layer")
sns.boxplot(dists, x="indexer head", y="distance t−s (tokens)", hue="layer", ax=axes[1], palette="viridis",
            fliersize=1, legend=False)
axes[1].set(title=f"Distances of each head's own top-{P.top_k} (per query)", xlabel="layer, indexer head")
axes[1].tick_params(axis="x", rotation=60, labelsize=7)
fig.suptitle(f"{MODEL_LABEL}; {P.batch}×{P.seq_len} tokens", fontsize=10)
fig.tight_layout()
maybe_save(fig, "01_indexer_heads")
plt.show()
heads.round(3)

# %%
px.histogram(dists, x="distance t−s (tokens)", color="indexer head", facet_col="layer", nbins=64, opacity=0.6,
             barmode="overlay", histnorm="probability",
             title="Selected distances per indexer head (interactive; click legend entries to isolate a head)"
             ).update_yaxes(title_text="fraction of selections").show()

# %% [markdown]
# With the model trained here the indexer has had a few dozen warm-up steps: heads may already lean local
# or long-range, but a longer-trained model (`checkpoint=...`) is what shows whether they specialise. With
# a random model (`train_steps=0`) the heads have no learned preference: differences then come from RoPE
# and the input (recurring tokens, the repeated last quarter).
#
# ## 6 · Sparsity: how much of dense attention does the selection keep?
#
# For each k, the share of each head's dense attention probability mass that falls on the selected keys
# ("dense mass recall", 1 = sparse attention sees everything dense attention weighs), for the indexer's
# selection and for the simplest alternative, a sliding window of the k most recent tokens.

# %%
ks = [k for k in (int(v) for v in P.k_sweep.split(",")) if k <= P.seq_len]
rows = []
for li, tens in enumerate(layers):
    dense = A.attention_probs(tens["q"], tens["k"])
    for k in ks:
        sel = indexer_topk(tens["q_idx"], tens["k_idx"], tens["w"], k)
        st = A.sparsity_stats(sel, P.seq_len, dense, window=P.local_window)
        win = A.sparsity_stats(A.window_selection(P.batch, P.seq_len, k, DEV), P.seq_len, dense, window=P.local_window)
        rows.append({"layer": li, "k": k, "selection": "indexer top-k", **st})
        rows.append({"layer": li, "k": k, "selection": "sliding window", **win})
    del dense
sp = pd.DataFrame(rows)
assert (sp["future_selections"] == 0).all()
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
sns.lineplot(sp, x="k", y="dense_mass_recall", hue="layer", style="selection", marker="o", ax=axes[0], palette="viridis")
axes[0].set(xscale="log", ylim=(0, 1.02), xlabel="k (keys per query)", ylabel="dense attention mass kept (fraction)",
            title="Dense mass recall (higher is better)")
sns.lineplot(sp[sp.selection == "indexer top-k"], x="k", y="mean_distance", hue="layer", marker="o", ax=axes[1],
             palette="viridis")
axes[1].set(xscale="log", xlabel="k (keys per query)", ylabel="mean selected distance t−s (tokens)",
            title="How far back the selection reaches")
fig.suptitle(f"{MODEL_LABEL}; {P.batch}×{P.seq_len} tokens", fontsize=10)
fig.tight_layout()
maybe_save(fig, "01_sparsity")
plt.show()
sp.pivot_table(index=["layer", "k"], columns="selection", values="dense_mass_recall").round(3)

# %% [markdown]
# Better looks like the indexer's curve above the sliding window's at the same k. A random model's
# indexer has not learned where attention goes, so it need not beat the window; the KL warm-up of the
# model trained here is what should lift its curve (notebook 06 measures the effect at full size).
#
# ## Summary
#
# * The hand computation of $I[t,s]$ matches `indexer_scores`.
# * The indexer costs $O(L^2 H_I d_I)$, a small fraction of dense attention at V3.2 sizes, while the
#   attention drops to $O(L k)$.
# * Without the causal guard (the seed's recipe) queries select and attend to future tokens: the probe
#   detects the leak; with the guard the outputs at $\le t$ are bit-for-bit independent of later tokens.
