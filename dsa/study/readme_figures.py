"""The README's key figures, redrawn from the recorded GPU data under ``data/`` (no GPU, no training):

- ``leak``: the seeds' exp4 (``data/gpu/exp4_reproduce.jsonl``): final validation loss per arm and L, the
  leaky model once as trained and once with the causal guard switched on at evaluation;
- ``loss_curves``: causal DSA against dense at L = 512 … 4096 (``data/gpu/exp4_long.jsonl``): validation loss
  over the LM steps, mean over seeds;
- ``layer_speed``: the model's own DSA layer against the dense layer (cuDNN) over L, prefill and training pass
  (``data/bench/layer/h200-mqa-64x128-k2048.json``);
- ``where_dsa_pays``: the map (``data/bench/map/``): speed-up over the best dense kernel against L per layout,
  the 4 x 64 indexer and DeepSeek's FP8 64 x 128 one, prefill and training;
- ``token_cost``: cost per million tokens against position at the MLA-MQA shape (the map and the decode runs).

``python -m dsa.study.readme_figures [--out-dir DIR]`` (``make readme-figures``) writes them as
``figures/readme/<name>.png`` through :func:`dsa.study.figures.save_static`, which checks each one
(``dsa.study.figcheck``) and stamps where its numbers come from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (CI, the report)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dsa.cli import usage_errors  # noqa: E402
from dsa.provenance import REPO_ROOT  # noqa: E402
from dsa.records import load_records, summarize_provenance  # noqa: E402
from dsa.study import verdicts as V  # noqa: E402
from dsa.study.bench_tables import LAYER_BASELINES, layer_bench_frame  # noqa: E402
from dsa.study.figures import save_static  # noqa: E402
from dsa.study.runs import curves_table, recorded_runs, runs_table  # noqa: E402

README_DIR = REPO_ROOT / "figures" / "readme"
EXP4 = "gpu/exp4_reproduce.jsonl"
EXP4_LONG = "gpu/exp4_long.jsonl"
LAYER_BENCH = "bench/layer/h200-mqa-64x128-k2048.json"
MAP_BENCH = "bench/map/*.json"
DECODE_BENCH = "bench/decode/*.json"
GUARD_ON = V.LEAKY + ", causal guard on at eval"
COLORS = {"dense": "#444444", V.LEAKY: "#d62728", GUARD_ON: "#ff9896", "DSA scratch": "#1f77b4",
          "DSA deepseek": "#2ca02c"}


def _source(path: str, records: list[dict]) -> str:
    """The figure's footer: where its data came from. Many runs over several commits in one short line (a
    footer wrapped over lines costs the PNG its size budget): devices, dates, torch, the commits."""
    text = summarize_provenance(r.get("provenance") or {} for r in records)
    if len(text) <= 200:
        return f"data/{path}: " + text
    provs = [r.get("provenance") or {} for r in records]

    def values(key: str, n: int | None = None) -> str:
        return ", ".join(sorted({str(p.get(key) or "?")[:n] for p in provs}))

    return (f"data/{path}: {len(provs)} runs on {values('device')}, {values('date', 10)}, torch "
            f"{values('torch_version')}, commits {values('git_commit', 7)}")


def leak_figure() -> tuple[Any, str]:
    """exp4: bars of the final validation loss (mean over seeds, 95% bootstrap CI) per L and arm."""
    recs = recorded_runs(EXP4)
    df = runs_table(recs, "exp4")
    leaky = df[df.variant == V.LEAKY].assign(variant=GUARD_ON, val_loss=lambda d: d.val_loss_causal_eval)
    bars = pd.concat([df, leaky], ignore_index=True)
    order = [v for v in [*V.VARIANT_ORDER, GUARD_ON] if v in set(bars.variant)]
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(bars, x="seq_len", y="val_loss", hue="variant", hue_order=order, palette=[COLORS[o] for o in order],
                errorbar=("ci", 95), ax=ax)
    ax.set(xlabel="sequence length L (tokens)", ylabel="final validation loss (nats/token)",
           title="The seeds' \"300% better\" is a future-token leak (lower is better)")
    ax.legend(title=None, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig, _source(EXP4, recs)


def loss_curves_figure() -> tuple[Any, str]:
    """exp4_long: validation loss against LM steps, one panel per L, dense and DSA at k = L/2 and L/8."""
    recs = recorded_runs(EXP4_LONG)
    c = curves_table(recs, "exp4_long")
    c = c[c.phase != "warmup"].copy()  # the indexer warm-up trains no LM step
    c["arm"] = c.apply(lambda r: "dense" if r.attention == "dense" else f"DSA k = L/{round(1 / r.ratio)}", axis=1)
    mean = c.groupby(["seq_len", "arm", "lm_step"], as_index=False).val_loss.mean()
    lens = sorted(mean.seq_len.unique())
    fig, axes = plt.subplots(1, len(lens), figsize=(3.0 * len(lens), 3.4), sharey=True)
    palette = {"dense": "#444444", "DSA k = L/2": "#2ca02c", "DSA k = L/8": "#1f77b4"}
    for ax, l in zip(axes, lens):
        sns.lineplot(mean[mean.seq_len == l], x="lm_step", y="val_loss", hue="arm", palette=palette, ax=ax,
                     legend=ax is axes[-1])
        ax.set(title=f"L = {l}", xlabel="LM step", ylabel="validation loss (nats/token)")
    axes[-1].legend(title=None, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Causal DSA (DeepSeek's recipe) trains like dense, also keeping 1/8 of the tokens "
                 "(mean of 3 seeds; lower is better)", fontsize=10)
    fig.tight_layout()
    return fig, _source(EXP4_LONG, recs)


def layer_speed_figure() -> tuple[Any, str]:
    """The layer benchmark: dense layer ms / DSA layer ms against L (above 1: DSA faster), cuDNN baseline."""
    recs = load_records(LAYER_BENCH)
    df = layer_bench_frame(recs)
    df = df[(df.baseline == LAYER_BASELINES["cudnn"]) & df.speedup.notna()].copy()
    df["L (K tokens)"] = df.L / 1024
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(df, x="L (K tokens)", y="speedup", hue="indexer", style="pass", markers=True, dashes=True, ax=ax)
    ax.set_xscale("log", base=2)
    ticks = sorted(df["L (K tokens)"].unique())
    ax.set_xticks(ticks, [f"{t:g}K" for t in ticks])
    ax.axhline(1.0, color="0.5", lw=1, ls=":")
    layout, k = df.layout.iloc[0], int(df.k.iloc[0])
    ax.set(xlabel="sequence length L (tokens)", ylabel="speed-up: dense ms / DSA ms (x)",
           title=f"DSA layer vs the dense layer (cuDNN), {layout}, k = {k}\n(above 1: DSA faster)")
    ax.legend(title="indexer (heads x dim) / pass", fontsize=8, title_fontsize=8, loc="upper left")
    return fig, _source(LAYER_BENCH, recs)


def token_cost_figure() -> tuple[Any, str]:
    """Cost per million tokens against position at DeepSeek's MLA-MQA shape: prefill (the map) and decode."""
    from .inference import load_decode_records  # noqa: PLC0415
    from .token_cost import TokenCost, decode_cost_frame, prefill_cost_frame  # noqa: PLC0415
    from .token_cost import token_cost_figure as draw  # noqa: PLC0415

    maps, decs = load_records(MAP_BENCH), load_decode_records(DECODE_BENCH)
    cost = TokenCost(usd_per_gpu_hour=2.0, layers=61)
    lay = "MLA-MQA 128 x 576/512"
    p, d = prefill_cost_frame(maps, cost), decode_cost_frame(decs, cost)
    fig = draw(p[p.layout == lay], d[d.layout == lay], cost,
               "What a token's attention costs against its position, DeepSeek-V3.2's MLA-MQA shape, H200, k = 2048")
    return fig, _source(f"{MAP_BENCH} + data/{DECODE_BENCH}", maps + decs)


MAP_INDEXERS = {"4x64 bf16": "indexer 4 x 64 bf16", "64x128 fp8": "indexer 64 x 128 FP8 (DeepSeek's)"}


def where_dsa_pays_figure() -> tuple[Any, str]:
    """The map: DSA layer speed-up over the best dense kernel against L, per layout, for the small indexer and
    DeepSeek's FP8 one; prefill and training side by side (above 1: DSA faster)."""
    from .map_tables import LAYOUT_NAMES, PASS_LABELS, map_frame  # noqa: PLC0415

    recs = load_records(MAP_BENCH)
    df = map_frame(recs)
    df = df[df.indexer.isin(list(MAP_INDEXERS)) & df.speedup.notna() & (df.L >= 2048)].copy()
    df["layout"] = [LAYOUT_NAMES.get(x, x) for x in df.layout]
    df["indexer"] = df.indexer.map(MAP_INDEXERS)
    df["L (K tokens)"] = df.L / 1024
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, pass_ in zip(axes, ("fwd", "fwdbwd")):
        d = df[df["pass"] == pass_]
        sns.lineplot(d, x="L (K tokens)", y="speedup", hue="layout", style="indexer", markers=True, dashes=True,
                     ax=ax, legend=pass_ == "fwdbwd", errorbar=None)
        ax.set(xscale="log", yscale="log", xlabel="sequence length L (tokens)",
               ylabel="speed-up: best dense ms / DSA ms (x)", title=PASS_LABELS[pass_])
        ticks = sorted(df["L (K tokens)"].unique())
        ax.set_xticks(ticks, [f"{t:g}K" for t in ticks])
        ax.minorticks_off()
        yt = [0.05, 0.1, 0.2, 0.5, 1, 2, 4]
        ax.set_yticks(yt, [f"{y:g}" for y in yt])
        ax.axhline(1.0, color="0.5", lw=1, ls=":")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Where DSA pays: the model's DSA layer vs its dense layer on the fastest of cuDNN, flash and "
                 "FlexAttention, k = 2048, H200 (above 1: DSA faster)", fontsize=10)
    fig.tight_layout()
    return fig, _source(MAP_BENCH, recs)


FIGURES: dict[str, Callable[[], tuple[Any, str]]] = {
    "where_dsa_pays": where_dsa_pays_figure,
    "leak": leak_figure, "loss_curves": loss_curves_figure, "layer_speed": layer_speed_figure,
    "token_cost": token_cost_figure}


def write_readme_figures(out_dir: str | Path = README_DIR, dpi: int = 110) -> dict[str, Path]:
    """Draw every README figure from the recorded data and save it (checked) to ``out_dir``/<name>.png.
    Returns {name: path}; raises FileNotFoundError when a recorded file is missing."""
    paths = {}
    for name, draw in FIGURES.items():
        fig, source = draw()
        paths[name] = save_static(fig, name, source=source, dpi=dpi, out_dir=out_dir)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.study.readme_figures") -> int:
    """``python -m dsa readme-figures``: redraw the README's key figures from the recorded data."""
    p = argparse.ArgumentParser(prog=prog,
                                description="Redraw the README's key figures from the recorded data under data/.")
    p.add_argument("--out-dir", default=str(README_DIR), metavar="DIR",
                   help=f"where to write the PNGs (default {README_DIR})")
    p.add_argument("--dpi", type=int, default=110, metavar="DPI",
                   help="resolution, >= 30 (default 110: each PNG well under 150 KB)")
    args = p.parse_args(argv)
    with usage_errors(p):
        if args.dpi < 30:
            raise ValueError(f"--dpi must be >= 30, got {args.dpi}")
        if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
            raise ValueError(f"--out-dir must be a folder, got the file {args.out_dir!r}")
    write_readme_figures(args.out_dir, args.dpi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
