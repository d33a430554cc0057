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
# # 07 · Inference: prefill and decode with caches, and what DSA saves per generated token
#
# DeepSeek deploys DSA for inference. While a model generates, every new token attends to the keys and values
# of every token before it, kept in a **cache**. Dense decode reads the whole cache for every new token, so
# its cost per token grows with the context. DSA's indexer also reads every cached position, but only one small
# key per token (128 values, FP8 in DeepSeek-V3.2, bf16 here). The attention itself then reads only the
# $k$ selected rows. At DeepSeek's MLA shape (one latent row of 576 values per token) and a 128K context,
# that is about 8x fewer bytes per token and layer.
#
# This notebook uses the study's inference API (`dsa.inference`):
#
# 1. `cache = model.init_cache(batch, max_len)`; `model(tokens, cache=cache)` appends the new tokens' keys,
#    values and indexer keys, and returns the new tokens' logits. You feed a prompt first, then one token at a
#    time. The layers decode through `dsa.ops.decode_*`: the indexer's top-k over the cached keys, then
#    sparse attention over the selected rows, or dense attention over all rows.
#    Prompts of different lengths share a batch: they are right-padded, and each sequence continues from
#    its own length.
# 2. Decoding with the cache gives the same logits as one full forward (section 2 checks this on the model here).
# 3. `dsa.inference.generate(model, prompt, max_new_tokens, temperature, top_p, seed)` generates from one
#    DSA model twice: with sparse attention (DSA) and with dense attention (the same weights).
# 4. A widget steps through the generated tokens and shows which cached positions each one selected.
# 5. The decode cost curves from `dsa.bench.decode`: time per token and layer against the context, DSA
#    against dense decode, on a GPU when recorded (`data/bench/decode/`), otherwise a CPU run with that label.
# 6. What a token costs against its position, prefill and decode, in dollars per million tokens: DeepSeek's
#    V3.1-against-V3.2 curves rebuilt from the recorded GPU benchmarks (attention only).

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


def _relative_glob(v, p):
    return not v.startswith(("/", "~")) and ".." not in v.replace("\\", "/").split("/")


_ns_before = snapshot_namespace(globals())

# %% tags=["parameters"]
# Parameters: annotated assignments only (the annotation declares the parameter and its type).
seed: int = 0
device: str = "cpu"  # "cpu", "cuda" or "auto"
checkpoint: str = ""  # a DSA checkpoint (torch.save {'model_config', 'state_dict'}) instead of training one here
train_steps: int = 60  # dense LM steps of the model trained here on Shakespeare (0: a random model)
train_warmup: int = 20  # indexer-only KL warm-up steps after them (DeepSeek's recipe)
train_seq_len: int = 64  # tokens per training sequence
d_model: int = 64  # the model trained here (ignored with a checkpoint)
n_layers: int = 2
n_heads: int = 4
indexer_heads: int = 4
indexer_dim: int = 16
indexer_rope_dim: int = 8
top_k: int = 16  # keys each token keeps (DSA)
max_seq_len: int = 256  # longest prompt + generation
n_prompts: int = 3  # prompts from the validation plays, of different lengths (one batch)
prompt_len: int = 48  # tokens of the longest prompt (the others are shorter)
max_new_tokens: int = 32  # tokens generated per prompt
temperature: float = 0.8  # of the sampled generations (section 3 also decodes greedily)
top_p: float = 0.95  # nucleus of the sampled generations
recorded: str = "bench/decode/*.json"  # glob under data/: the recorded dsa.bench.decode files
run_fresh_bench: bool = True  # run dsa.bench.decode here when nothing is recorded (CPU: tiny shapes)
bench_contexts: str = "64,160,384"  # cached tokens of the fresh benchmark
bench_batches: str = "1,4"  # sequences per step of the fresh benchmark
recorded_map: str = "bench/map/*.json"  # glob under data/: the recorded dsa.bench.map files (prefill costs)
usd_per_gpu_hour: float = 2.0  # GPU rental price of the cost curves (DeepSeek's own assumption: $2, H800)
cost_layers: int = 61  # attention layers the cost curves count (DeepSeek-V3.2: 61; 1 = per layer)
cost_batch: int = 16  # decode batch of the cost table
save_figures: bool = True  # write the static figures to figures/ (or $DSA_FIGURES_DIR)

# %%
nb = setup_notebook(
    globals(),
    _ns_before,
    "07_inference",
    rules={
        "device": one_of("cpu", "cuda", "auto"),
        "train_steps": between(0, None),
        "train_warmup": between(0, None),
        "train_seq_len": between(8, "max_seq_len"),
        "n_heads": between(1, None),
        "d_model": satisfies(lambda v, p: v % p["n_heads"] == 0 and (v // p["n_heads"]) % 2 == 0,
                             "must be a multiple of n_heads with an even head dim (RoPE)"),
        "n_layers": between(1, None),
        "indexer_heads": between(1, None),
        "indexer_dim": between(1, None),
        "indexer_rope_dim": satisfies(lambda v, p: v % 2 == 0 and 0 <= v <= p["indexer_dim"],
                                      "must be even and in [0, indexer_dim]"),
        "top_k": between(1, "max_seq_len"),
        "n_prompts": between(1, 16),
        "prompt_len": satisfies(lambda v, p: 2 <= v and v + p["max_new_tokens"] <= p["max_seq_len"],
                                "must be >= 2 with prompt_len + max_new_tokens <= max_seq_len"),
        "max_new_tokens": between(1, None),
        "temperature": satisfies(lambda v, p: v >= 0, "must be >= 0 (0 = greedy)"),
        "top_p": satisfies(lambda v, p: 0 < v <= 1, "must be in (0, 1]"),
        "recorded": satisfies(_relative_glob, "must be a glob relative to data/ (no leading / or ..), or empty"),
        "bench_contexts": satisfies(lambda v, p: valid_list(v, int, minimum=8) and bool(parse_list(v)),
                                    "must be a non-empty comma-separated list of contexts >= 8"),
        "bench_batches": satisfies(lambda v, p: valid_list(v, int, minimum=1) and bool(parse_list(v)),
                                   "must be a non-empty comma-separated list of batch sizes >= 1"),
        "recorded_map": satisfies(_relative_glob, "must be a glob relative to data/ (no leading / or ..), or empty"),
        "usd_per_gpu_hour": satisfies(lambda v, p: v > 0, "must be > 0"),
        "cost_layers": between(1, None),
        "cost_batch": between(1, None),
    },
)
P, DEV, FRESH_LABEL, maybe_save = nb.params, nb.device, nb.fresh_label, nb.save

# %%
import matplotlib.pyplot as plt
import pandas as pd
import plotly.express as px
from IPython.display import Markdown, display

from dsa.bench import decode as bench_decode
from dsa.inference import cache_row_bytes, generate
from dsa.records import load_records, summarize_provenance
from dsa.study import analysis as A
from dsa.study import inference as I
from dsa.study import token_cost as TC
from dsa.study.tables import readable
from dsa.text.corpus import load_corpus

pd.set_option("display.max_colwidth", 80)

# %% [markdown]
# ## 1 · The model
#
# A DSA `TransformerLM` **trained here** (`dsa.study.analysis.train_inspect_model`: `train_steps` dense LM
# steps on the Shakespeare plays, then `train_warmup` steps of DeepSeek's KL warm-up, which teach the indexer
# to point where dense attention looks). A `checkpoint` replaces it. The same weights decode
# two ways: sparse (DSA: the indexer's top-k, then attention over those rows) and dense (every cached row).

# %%
if P.checkpoint or P.train_steps == 0:
    model, MODEL_LABEL = A.make_inspect_model(
        P.checkpoint, vocab_size=2048, d_model=P.d_model, n_layers=P.n_layers, n_heads=P.n_heads,
        indexer_heads=P.indexer_heads, indexer_dim=P.indexer_dim, indexer_rope_dim=P.indexer_rope_dim,
        max_seq_len=P.max_seq_len, top_k=P.top_k, seed=P.seed, device=DEV)
else:
    model, MODEL_LABEL, _ = A.train_inspect_model(
        steps=P.train_steps, warmup_steps=P.train_warmup, seq_len=P.train_seq_len, max_seq_len=P.max_seq_len,
        d_model=P.d_model, n_layers=P.n_layers, n_heads=P.n_heads, indexer_heads=P.indexer_heads,
        indexer_dim=P.indexer_dim, indexer_rope_dim=P.indexer_rope_dim, top_k=P.top_k, seed=P.seed, device=DEV)
corpus = load_corpus("shakespeare", tokenizer="bpe", vocab_size=model.cfg.vocab_size)
K = model.cfg.top_k
print(MODEL_LABEL)
print(f"k = {K} keys per token; cache per token and layer: {cache_row_bytes(model.cfg, 4)} bytes (float32)")

# %% [markdown]
# ## 2 · The cache gives the logits of a full forward
#
# A batch of validation text is decoded two ways. First with the cache: a prompt of half the tokens, then one
# token at a time. Then in one full forward over the whole sequence. The logits must agree to float rounding,
# for dense and for DSA. DSA must also select the same sets: the top-k of a token at position $t$ is taken
# among the cached positions $s \le t$ (all of them while $t + 1 \le k$). The test suite checks the same
# equality in every layout: MHA, GQA, MQA and MLA with its latent cache (`tests/inference/test_cache.py`).

# %%
check_tokens = A.corpus_tokens(2, min(P.prompt_len + P.max_new_tokens, P.max_seq_len), vocab_size=model.cfg.vocab_size,
                               seed=P.seed + 7).to(DEV)
checks = {name: I.cache_check(model, check_tokens, check_tokens.shape[1] // 2, sparse=sparse)
          for name, sparse in (("DSA (sparse)", True), ("dense", False))}
check_df = pd.DataFrame(checks).T.rename(columns={"max_abs_diff": "max |decoded − full| logit",
                                                  "max_abs_logit": "max |logit|",
                                                  "selections_equal": "same selected sets"})
display(readable(check_df.astype(object), na="n/a (dense)"))
for name, c in checks.items():
    assert c["max_abs_diff"] <= 1e-4 * max(1.0, c["max_abs_logit"]), f"{name}: cached decoding disagrees"
    assert c["selections_equal"] in (None, True), f"{name}: the cached selection differs"
print("Cached decoding equals the full forward (float rounding only), and DSA selects the same sets.")

# %% [markdown]
# ## 3 · Generating with DSA and with dense attention
#
# `n_prompts` prompts from the validation plays, of different lengths, in one right-padded batch. The
# same DSA weights continue each prompt with sparse attention and with dense attention, first greedily
# (temperature 0), then sampled (`temperature`, `top_p`, one seed for both). Greedy decoding shows where
# the two attentions first pick a different token. Sampled text from a model this small is not good
# Shakespeare.

# %%
val = A.corpus_tokens(P.n_prompts, P.prompt_len, vocab_size=model.cfg.vocab_size, seed=P.seed + 1)
lengths = [max(2, P.prompt_len - i * P.prompt_len // (2 * P.n_prompts)) for i in range(P.n_prompts)]
prompts = [val[i, : n].tolist() for i, n in enumerate(lengths)]
runs = {}
for mode, temp in (("greedy", 0.0), ("sampled", P.temperature)):
    for name, sparse in (("DSA", True), ("dense", False)):
        runs[f"{name}, {mode}"] = generate(model, prompts, P.max_new_tokens, temperature=temp, top_p=P.top_p,
                                           seed=P.seed, sparse=sparse, record_selection=sparse)
greedy = I.generations_table(corpus.decode, prompts, {k: v for k, v in runs.items() if k.endswith("greedy")})
sampled = I.generations_table(corpus.decode, prompts, {k: v for k, v in runs.items() if k.endswith("sampled")})
display(Markdown(f"**Greedy** ({P.max_new_tokens} tokens per prompt; prompt lengths {lengths} tokens):"))
display(readable(greedy))
display(Markdown(f"**Sampled** (temperature {P.temperature}, top-p {P.top_p}, seed {P.seed}):"))
display(readable(sampled))

# %% [markdown]
# Where the context is no longer than $k$, a DSA token selects every cached position, so it attends like
# dense attention. The two greedy continuations can then differ only by float rounding. Past $k$, they agree
# as long as the indexer keeps the positions that matter.

# %% [markdown]
# ## 4 · Which cached positions each generated token selected
#
# Move the slider to step through the DSA greedy generation of the longest prompt. Step 0 is the prompt's last
# token, then each generated token as it is fed back. Each row is a layer and each column a cached position.
# Red cells are the $k$ positions that layer's indexer kept, and the blue line marks the token itself.
# Hover a cell to see the token at that position. Below the widget, a static copy shows every step of
# layer 0 at once, for reports.

# %%
gen_dsa = runs["DSA, greedy"]
seq_tokens = prompts[0] + gen_dsa.tokens[0]
stepper = I.SelectionStepper(gen_dsa, 0, seq_tokens, corpus.decode)
display(stepper.widget)

# %%
m0 = I.selection_matrix(gen_dsa, 0, 0)
fig, ax = plt.subplots(figsize=(11, 3.8))
im = ax.imshow(m0, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
ax.grid(False)
ax.axvline(lengths[0] - 0.5, color="#1f77b4", lw=1, ls="--", label="end of the prompt")
ax.set(xlabel="cached position s (tokens)", ylabel="decode step (0 = prompt's last token)",
       title=f"Layer 0: the positions each fed token selected (red; k = {K}), greedy DSA generation")
cb = fig.colorbar(im, ax=ax, ticks=[0, 1], fraction=0.03)
cb.set_label("selected (1) or not (0)")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
maybe_save(fig, "07_selection_steps", FRESH_LABEL)
plt.show()
local = [(i, (row[max(0, lengths[0] - 1 + i - 7): lengths[0] + i]).mean()) for i, row in enumerate(m0)]
print(f"share of the last 8 positions selected, averaged over steps: {sum(v for _, v in local) / len(local):.2f}; "
      f"positions selected per step: {int(m0.sum(1).min())}..{int(m0.sum(1).max())} (k = {K})")

# %% [markdown]
# ## 5 · What a generated token costs: DSA against dense decode
#
# `dsa.bench.decode` times one decode step of one attention layer (projections excluded, since they are the
# same for both), with one new token per sequence and the cache at $S$ tokens:
#
# * **dense**: every cached row, read by the split-K flash-decoding kernel (`dsa.ops.decode_dense_attention`),
#   and SDPA with the heads as queries;
# * **DSA**: indexer scores over every cached key, the radix top-k, and the split-K sparse kernel reading only
#   the $k$ selected rows (`dsa.ops.decode_indexer_topk` + `dsa.ops.decode_sparse_attention`).
#
# Layouts: MQA (64 heads × 128 on one K/V head) and MLA in MQA mode (128 heads on one latent row of 576 values,
# the values being its first 512). On a GPU, each step runs inside a CUDA graph with L2 flushed between steps.
# The modelled bytes per step, divided by the time, give the bandwidth, which is compared with a copy measured
# in the same run. Better: a lower time per token, and a flat DSA curve as $S$ grows.

# %%
recorded = I.load_decode_records(P.recorded) if P.recorded else []
if recorded:
    bench = recorded
    BENCH_LABEL = summarize_provenance(r["provenance"] for r in recorded)
    display(Markdown(f"**Recorded GPU data**: {len(recorded)} file(s) under `data/{P.recorded}` ({BENCH_LABEL})."))
elif P.run_fresh_bench:
    gpu = DEV.type == "cuda"  # the real layouts, k = 2048 and the 64 x 128 indexer; tiny ones on a CPU
    cfg = bench_decode.DecodeBenchConfig(contexts=parse_list(P.bench_contexts), batches=parse_list(P.bench_batches),
                                         top_k=min(2048 if gpu else 16, min(parse_list(P.bench_contexts))),
                                         indexer="64x128" if gpu else "4x16", request_contexts=[], tiny=not gpu,
                                         device=DEV.type)
    bench = [bench_decode.run(cfg, log=lambda s: None)]
    BENCH_LABEL = FRESH_LABEL + ("" if gpu else " — tiny CPU shapes, the reference ops: NOT the GPU numbers")
    display(Markdown(f"**A fresh GPU run** ({BENCH_LABEL}); `scripts/gpu/gpu_decode.sh` records the full grid.") if gpu
            else Markdown("> **The GPU numbers are not recorded yet** (nothing matches "
                     f"`data/{P.recorded}`; `scripts/gpu/gpu_decode.sh` records them). The curves below come from "
                     "a **CPU run at tiny shapes** with the reference ops. They exercise the code path only: "
                     "on a CPU nothing is bandwidth-bound in the GPU's sense, and the times say nothing about DSA's "
                     "gain."))
else:
    bench = []
    BENCH_LABEL = ""
    display(Markdown(f"No recorded decode benchmark matches `data/{P.recorded}` and `run_fresh_bench` is off."))

# %%
if bench:
    frame = I.decode_frame(bench)
    fig = I.decode_cost_figure(frame, f"Decode cost per token and layer — {BENCH_LABEL}")
    maybe_save(fig, "07_decode_cost", BENCH_LABEL)
    plt.show()
    display(readable(I.speedup_table(bench).round(2), na="n/a (not measured)"))
    req = I.request_table(bench)
    if len(req):
        display(Markdown("**Whole requests** (one layer: prefill of the prompt + the generated tokens, ms):"))
        display(readable(req.round(2), na="n/a (failed or not run)"))
    hbm = [r.get("hbm_gbps") for r in bench if r.get("hbm_gbps")]
    print(f"measured copy bandwidth: {hbm[0]:.0f} GB/s" if hbm else "copy bandwidth: not measured (CPU run)")

# %% [markdown]
# **How to read it.** Dense decode reads $S$ rows per token, so its time grows linearly with the context.
# DSA reads $S$ indexer keys (128 values each at DeepSeek's size) plus $k$ rows. At MLA's 576-value rows the
# indexer's share is small. Once $S \gg k$, the byte ratio approaches $1152 / (256 + 8) \approx 4.4$ with bf16
# indexer keys, or $1152 / (128 + 8) \approx 8.5$ with FP8 keys, as DeepSeek stores them (the 8 bytes are the
# fp32 score the top-k writes and reads per key). At MQA's 256-value rows (k and v, 512 bytes) the bound is
# about 1.9x with bf16 indexer keys.

# %% [markdown]
# **Where a DSA decode step's time goes.** The benchmark also times the indexer's scores alone and the sparse
# attention on a fixed selection; the top-k is the indexer step minus its scores. The scores read every cached
# indexer key (bandwidth-bound: they reach most of the HBM rate at long contexts), the top-k runs one program per
# score row (B rows: too few to fill the GPU) and the sparse attention gathers k rows per sequence. **The tallest
# block bounds the step's share of HBM bandwidth** (the target: 70%).

# %%
parts = I.decode_parts_frame(bench) if bench else pd.DataFrame()
if len(parts):
    parts["context"] = [f"{c // 1024}K" if c >= 1024 else str(c) for c in parts.context]
    parts["layout, keys"] = parts.layout + ", " + parts["indexer keys"] + " keys"
    fig = px.bar(parts, x="context", y="ms", color="part", facet_col="batch", facet_row="layout, keys",
                 hover_data=["share", "step_hbm_frac"],
                 labels={"ms": "ms per step, one layer", "context": "context S (cached tokens)"},
                 title=f"Where a DSA decode step's time goes (lower is better)<br><sup>{BENCH_LABEL}</sup>")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    fig.update_yaxes(matches=None)
    fig.update_layout(height=220 * parts["layout, keys"].nunique() + 120, margin=dict(t=110))
    fig.show()
else:
    display(Markdown("No decode run here times the indexer's scores alone (recorded before that split existed)."))

# %% [markdown]
# ## 6 · What a token costs against its position
#
# DeepSeek published, for V3.1 (dense MLA) against V3.2 (DSA), the cost per million tokens against the
# token's position in the sequence, for prefill and for decode. The same curves, from this study's recorded
# benchmarks (`dsa.study.token_cost`), for the attention alone:
#
# * **prefill**: the map (`dsa.bench.map`, notebook 05) times one forward over $L$ tokens; the tokens between
#   two measured lengths $L_1 < L_2$ cost $(T(L_2) - T(L_1)) / (L_2 - L_1)$ each, plotted at the middle. Dense
#   attention's cost grows linearly with the position; DSA's sparse attention stops growing at $k$, and only its
#   indexer keeps growing, at a smaller slope.
# * **decode**: one step over a batch of $B$ sequences with $S$ cached tokens, divided by $B$.
#
# Dollars come from GPU time at `usd_per_gpu_hour` (DeepSeek's own assumption is $2 per H800-hour), for
# `cost_layers` attention layers (61 in DeepSeek-V3.2: the per-layer time multiplied, an extrapolation of
# one layer's measurement; projections, MLP and everything outside attention are left out since they are the
# same for both). Lower is better; DSA pays where its curve is below dense.

# %%
cost = TC.TokenCost(P.usd_per_gpu_hour, P.cost_layers)
map_recorded = load_records(P.recorded_map) if P.recorded_map else []
if map_recorded or recorded:
    prefill_cost = TC.prefill_cost_frame(map_recorded, cost)
    decode_cost = TC.decode_cost_frame(recorded, cost)
    shown = sorted(set(decode_cost.layout)) or sorted(set(prefill_cost.layout))
    prefill_cost = prefill_cost[prefill_cost.layout.isin(shown)]
    COST_LABEL = summarize_provenance(r["provenance"] for r in map_recorded + recorded)
    fig = TC.token_cost_figure(prefill_cost, decode_cost, cost, f"Attention cost per token — {COST_LABEL}")
    maybe_save(fig, "07_token_cost", COST_LABEL)
    plt.show()
    table = TC.cost_ratio_table(prefill_cost, decode_cost, P.cost_batch)
    display(Markdown(f"**Dense cost / DSA cost per token** (> 1: DSA is cheaper; decode at batch {P.cost_batch}):"))
    display(readable(table.round(4), na="n/a"))
else:
    display(Markdown("No recorded map or decode benchmark under `data/`: the cost curves need GPU timings "
                     "(`scripts/gpu/gpu_map.sh`, `scripts/gpu/gpu_decode.sh`); CPU times would say nothing "
                     "about them."))

# %% [markdown]
# **How to read it.** In decode at the MLA-MQA shape DSA's curve is nearly flat while dense grows linearly
# with the position, so the gap widens with the context (the table gives the ratio per position). Batch 1 is
# the exception: both kernels wait on latency there, and DSA runs three of them. In MQA, where a cached row is
# as small as the indexer's key, DSA costs more per token at every position. In prefill, dense attention's
# marginal cost rises linearly; DSA's is nearly flat at MLA-MQA (its indexer's slope is small against the
# fixed $k$ rows of 576 values) but starts higher, so the two would cross beyond the 16K the MLA-MQA map has
# reached so far (its 32K-128K rows are still to be run); in MQA the small 4 × 64 indexer makes a DSA token
# cheaper from the middle positions on, the 64 × 128 one does not within 64K.
