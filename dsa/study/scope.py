"""What a notebook's fresh run can and cannot show: the box each notebook displays at its top, before it
trains anything, so that nobody reads a tiny CPU run as the study's evidence.

    display(Markdown(fresh_run_scope("02_sparse_vs_dense", run_fresh=P.run_fresh, size=P.fresh_size,
                                     device=DEV.type, steps=P.fresh_steps)))
"""

from __future__ import annotations

# notebook -> (what the small CPU run can show, what it cannot, where the conclusions come from)
SCOPE: dict[str, tuple[str, str, str]] = {
    "01_indexer_math": (
        "the indexer formula on real numbers, the cost model, the seeds' leak and the causal guard (exact, by "
        "the causality probe), and the indexer of a small model trained here for under a minute",
        "what the indexer of a full-size model learns: the trained model here is tiny and trained briefly",
        "the numbers of this notebook are exact checks or small-model illustrations; nothing is read from the GPU data",
    ),
    "02_sparse_vs_dense": (
        "**the leak**: the seeds' leaky model's loss falls below dense within a few hundred steps, and the same "
        "weights evaluated with the causal guard on fall behind dense (section 5 says whether this run shows it); "
        "every code path of the experiment",
        "how causal DSA compares with dense (the differences at full size are a few hundredths of a nat, below "
        "a tiny run's noise), and any speed (CPU reference code, not the GPU kernels)",
        "the recorded H100 sweep `data/gpu/exp4_reproduce.jsonl` (1000 steps, 3 seeds)",
    ),
    "03_sparsity_sweep": (
        "the whole analysis (ANOVA, Tukey HSD, Cohen's d, Bonferroni) running on real runs",
        "any effect of the ratio k/L: after a few dozen steps every model is still near its initial loss, so "
        "every cell of the fresh heatmap is about the same number",
        "the recorded GPU sweep `data/gpu/exp5_sparsity.jsonl` (105 runs, 500 steps)",
    ),
    "04_adaptive_k": (
        "how the adaptive rules (indexer mass, entropy) choose k per query and per layer on models trained here",
        "whether an adaptive k beats a fixed k on quality or speed: the models are tiny and barely trained, the "
        "indexer has little to adapt to, and CPU times are not GPU times",
        "the recorded H100 sweep `data/gpu/exp3_adaptive.jsonl` (1000 steps, 3 seeds)",
    ),
    "06_ablations": (
        "**the indexer's KL loss at work**: the KL-trained indexer keeps more of the dense attention mass "
        "(recall) than the untrained one, which stays near the random-selection line (section 2 says whether this "
        "run shows it); every code path",
        "any effect on the loss or accuracy (a few dozen steps leave every arm near its initial loss), and "
        "the warm-up and head-count trends",
        "the recorded H100 sweeps `data/gpu/ablation_*.jsonl` (1000 steps, 3 seeds)",
    ),
    "07_inference": (
        "the cache API at work: cached decoding equals the full forward, DSA and dense generations from the same "
        "weights, which cached positions each generated token selects; every code path of the decode benchmark",
        "the quality of generated text (the model is tiny and trained for seconds), or any decode speed: CPU "
        "times of tiny shapes are not the bandwidth-bound GPU decode DSA is built for",
        "the recorded GPU decode benchmark `data/bench/decode/` (section 5 says whether it is there)",
    ),
}


def fresh_run_scope(notebook: str, *, run_fresh: bool = True, size: str = "small", device: str = "cpu",
                    steps: int | None = None) -> str:
    """A Markdown box: what this notebook's fresh run can and cannot show, and where its conclusions come
    from. Empty when the notebook trains nothing or trains at full size on a GPU (then the fresh run is
    itself evidence)."""
    if notebook not in SCOPE:
        raise KeyError(f"no scope text for {notebook!r}; known: {sorted(SCOPE)}")
    if not run_fresh and notebook not in ("01_indexer_math", "07_inference"):
        return ("> **No fresh run** (`run_fresh` is off): every figure and verdict below comes from recorded GPU "
                "data, named with its device and commit where it is shown.")
    if size == "full" and device == "cuda":
        return ""
    can, cannot, evidence = SCOPE[notebook]
    what = f"a small run on {device}" + (f" ({size} size" + (f", {steps} steps" if steps else "") + ")"
                                         if notebook not in ("01_indexer_math", "07_inference") else "")
    return (f"> **What the fresh run can and cannot show.** This page trains {what} while it runs, so that every "
            f"code path is exercised and the figures are reproducible on a laptop.\n>\n"
            f"> * It **can** show {can}.\n"
            f"> * It **cannot** show {cannot}.\n"
            f"> * **The conclusions come from** {evidence}; every figure and table says which data it shows.")


def leak_check(row: dict) -> str:
    """Did a run set show the seeds' leak? ``row``: one row of ``dsa.study.verdicts.leak_table`` (dense, leaky, and the
    leaky weights evaluated with the causal guard on; val loss, nats/token). Markdown, computed from the numbers."""
    d, lk, ce = row["dense"], row["leaky"], row["leaky, causal guard on at eval"]
    nums = f"leaky {lk:.3f}, dense {d:.3f}, the leaky weights with the guard on at eval {ce:.3f} nats/token"
    if lk < d and ce > d:
        return (f"**This run shows the leak** ({nums}): the leaky model is better than dense only while it may read "
                "the future; denied it, the same weights are worse than dense.")
    return (f"**This run does not show the leak clearly** ({nums}): the model has not trained long enough to learn "
            "to copy the future (raise `fresh_steps`).")


def kl_recall_check(df) -> str:
    """Did the KL-trained indexer keep more of the dense attention mass than the untrained one? ``df``: the KL
    ablation's runs of one source (``arm``, ``recall``). Markdown, computed from the numbers."""
    on = df[df.arm.str.startswith("KL on")].recall.dropna()
    off = df[df.arm.str.startswith("KL off")].recall.dropna()
    if on.empty or off.empty:
        return "No recall to compare: a KL arm is missing."
    nums = f"recall with KL {on.mean():.3f}, without {off.mean():.3f} (mean over {len(on)} and {len(off)} runs)"
    if on.min() > off.max():
        return (f"**This run shows what the KL loss does** ({nums}): every KL-trained indexer keeps more of the dense "
                "attention mass than every untrained one.")
    return f"**This run does not separate the arms** ({nums}): too few steps for the indexer to learn."


__all__ = ["SCOPE", "fresh_run_scope", "kl_recall_check", "leak_check"]
