"""What notebook 07 (inference) reads and draws: the cache check, generations side by side, the selection
stepper widget, and the decode benchmark's records as tables and cost curves.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dsa.inference import Generation
from dsa.model import TransformerLM

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@torch.no_grad()
def cache_check(model: TransformerLM, tokens: torch.Tensor, prompt_len: int, *, sparse: bool = True) -> dict:
    """Decode ``tokens`` (B, L) with a cache (a prompt of ``prompt_len`` tokens, then one token at a time) and
    compare with one full forward: {'max_abs_diff', 'max_abs_logit', 'selections_equal' (DSA: the same sets)}."""
    if not 1 <= prompt_len < tokens.shape[1]:
        raise ValueError(f"prompt_len must be in [1, L={tokens.shape[1]}), got {prompt_len}")
    full = model(tokens, sparse=sparse)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    outs = [model(tokens[:, :prompt_len], cache=cache, sparse=sparse)]
    outs += [model(tokens[:, j:j + 1], cache=cache, sparse=sparse) for j in range(prompt_len, tokens.shape[1])]
    dec = torch.cat([o.logits for o in outs], 1)
    same = None
    if sparse and full.aux[0].selection is not None:
        k = full.aux[0].selection.shape[-1]
        sel = torch.cat([torch.nn.functional.pad(o.aux[0].selection, (0, k - o.aux[0].selection.shape[-1]), value=-1)
                         for o in outs], 1)
        same = bool(torch.equal(sel.sort(-1).values, full.aux[0].selection.sort(-1).values))
    return {"max_abs_diff": float((dec - full.logits).abs().max()), "max_abs_logit": float(full.logits.abs().max()),
            "selections_equal": same}


def generations_table(decode: Callable[[list[int]], str], prompts: list[list[int]], runs: dict[str, Generation]
                      ) -> pd.DataFrame:
    """One row per prompt: its text, each run's continuation, and how many leading tokens the runs share."""
    names = list(runs)
    rows = []
    for i, p in enumerate(prompts):
        row = {"prompt": decode(p)}
        for n in names:
            row[n] = decode(runs[n].tokens[i])
        if len(names) >= 2:
            a, b = runs[names[0]].tokens[i], runs[names[1]].tokens[i]
            same = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            row[f"leading tokens equal ({names[0]} vs {names[1]})"] = f"{same} of {len(a)}"
        rows.append(row)
    return pd.DataFrame(rows)


def selection_matrix(gen: Generation, seq: int, layer: int) -> np.ndarray:
    """(steps, positions) 0/1: which cached positions the token fed at each step selected (sequence ``seq``,
    ``layer``); step 0 is the prompt's last token. Positions past a step's own are 0 (never selectable)."""
    sels = [s[layer][seq] for s in gen.selections]
    width = gen.prompt_lengths[seq] + len(gen.selections)
    m = np.zeros((len(sels), width), dtype=np.int8)
    for i, s in enumerate(sels):
        s = s[s >= 0].numpy()
        m[i, s] = 1
    return m


class SelectionStepper:
    """A slider over the generated tokens of one sequence and a plotly FigureWidget updated in place: for the
    token at the slider, which cached positions each layer's indexer selected (one row per layer), with the
    tokens' text on hover. ``decode``: ids -> text; ``tokens``: prompt + generated ids of that sequence."""

    def __init__(self, gen: Generation, seq: int, tokens: list[int], decode: Callable[[list[int]], str],
                 title: str = "Which cached positions each generated token selected") -> None:
        import ipywidgets as W  # noqa: PLC0415
        import plotly.graph_objects as go  # noqa: PLC0415

        if not gen.selections or gen.selections[0][0] is None:
            raise ValueError("the generation holds no DSA selections (generate with record_selection=True, sparse)")
        self.gen, self.seq, self.tokens, self.decode = gen, seq, tokens, decode
        self.n_layers = len(gen.selections[0])
        self.prompt_len = gen.prompt_lengths[seq]
        self.width = self.prompt_len + len(gen.selections)
        self.labels = [decode([t]) for t in tokens[: self.width]]
        self.slider = W.IntSlider(value=len(gen.selections) - 1, min=0, max=len(gen.selections) - 1,
                                  description="step", continuous_update=False, layout=W.Layout(width="600px"))
        self.info = W.HTML()
        fig = go.Figure(go.Heatmap(z=[[0]], zmin=0, zmax=1, colorscale=[[0, "#f0f0f0"], [1, "#d62728"]],
                                   colorbar={"title": {"text": "selected", "side": "right"}, "tickvals": [0, 1],
                                             "ticktext": ["no", "yes"], "thickness": 10},
                                   hovertemplate="position %{x}: %{customdata}<br>layer %{y}<extra></extra>"))
        fig.update_layout(title=title, height=160 + 40 * self.n_layers, width=1000,
                          margin={"l": 70, "r": 40, "t": 60, "b": 60},
                          xaxis={"title": "cached position s (tokens; grey: prompt and earlier tokens, "
                                          "blue line: the current token)", "range": [-0.5, self.width - 0.5]},
                          yaxis={"title": "layer", "dtick": 1})
        self.fig = go.FigureWidget(fig)
        self.slider.observe(lambda ch: self.update(), names="value")
        self.widget = W.VBox([self.slider, self.info, self.fig])
        self.update()

    def view(self, step: int) -> dict:
        """The (layers, width) selection of the token fed at ``step``, its position and text."""
        pos = self.prompt_len - 1 + step
        z = np.stack([selection_matrix(self.gen, self.seq, layer)[step] for layer in range(self.n_layers)])
        return {"z": z, "pos": pos, "token": self.labels[pos], "k": int(z[0].sum())}

    def update(self) -> dict:
        v = self.view(self.slider.value)
        custom = [self.labels] * self.n_layers
        with self.fig.batch_update():
            self.fig.data[0].z = v["z"].tolist()
            self.fig.data[0].customdata = custom
            self.fig.layout.shapes = [{"type": "line", "x0": v["pos"], "x1": v["pos"], "y0": -0.5,
                                       "y1": self.n_layers - 0.5, "line": {"color": "#1f77b4", "width": 2}}]
        self.info.value = (f"step {self.slider.value}: the token at position <b>{v['pos']}</b> "
                           f"(<code>{v['token']!r}</code>) selected <b>{v['k']}</b> of its {v['pos'] + 1} cached "
                           f"positions per layer (k = all of them while the context is shorter than k)")
        return v

    def static_figure(self):
        import plotly.graph_objects as go  # noqa: PLC0415

        return go.Figure(self.fig)


# ------------------------------------------------------------------------------------------ benchmark data


def load_decode_records(pattern: str, base: Path = DATA_DIR) -> list[dict]:
    """The dsa.bench.decode JSON files matching ``pattern`` under ``base`` (sorted by name)."""
    return [json.loads(Path(p).read_text()) for p in sorted(glob.glob(str(base / pattern)))]


def decode_frame(results: list[dict]) -> pd.DataFrame:
    """Long table of the decode rows: one row per (file, layout, context, batch, method) with ms per token and
    layer, tokens/s, GB/s and the share of the measured copy bandwidth. A DSA method of a run with FP8
    indexer keys is suffixed ``_fp8`` (``dsa_fp8``, ...): the two key formats are different methods."""
    rows = []
    for i, res in enumerate(results):
        for r in decode_rows([res]):
            for m in ("dense", "dense_sdpa", "dsa", "dsa_indexer_topk", "dsa_indexer_scores", "dsa_sparse",
                      "dsa_topk", "dsa_topk_split", "dsa_topk_torch", "dsa_topk_torch_exact"):
                if r.get(f"{m}_ms") is None:
                    continue
                rows.append({"file": i, "layout": r["layout"], "context": r["context"], "batch": r["batch"],
                             "method": _method_name(m, r), "ms": r[f"{m}_ms"], "tokens_per_s": r[f"{m}_tokens_per_s"],
                             "gbps": r[f"{m}_gbps"], "hbm_frac": r.get(f"{m}_hbm_frac", np.nan),
                             "graph": r.get(f"{m}_graph", False)})
    return pd.DataFrame(rows)


def decode_rows(results: list[dict]) -> list[dict]:
    """The measured decode rows of dsa.bench.decode results (neither requests nor contexts skipped)."""
    return [r for res in results for r in res["rows"] if r.get("kind") == "decode" and "skipped" not in r]


def keys_dtype(r: dict) -> str:
    """The indexer keys' format of a decode row: 'bf16' (and rows recorded before the option) or 'fp8'."""
    return r.get("indexer_dtype") or "bf16"


DENSE_DECODE = "dense (best kernel)"  # the faster of the split-K kernel and SDPA at each point


def best_dense_ms(r: dict) -> float | None:
    """The faster dense decode time of a row: the split-K kernel or SDPA (SDPA wins at large batches, where
    MLA's 128 heads over one latent row make a matrix multiply); None when neither was measured."""
    times = [r[k] for k in ("dense_ms", "dense_sdpa_ms") if r.get(k)]
    return min(times) if times else None


def _method_name(m: str, r: dict) -> str:
    return f"{m}_fp8" if m.startswith("dsa") and keys_dtype(r) == "fp8" else m


def _ratio(r: dict, num: str, den: str) -> float | None:
    """r[num] / r[den] when both were measured (the benchmark files hold raw times only), else None."""
    return r[num] / r[den] if r.get(num) and r.get(den) else None


def speedup_table(results: list[dict]) -> pd.DataFrame:
    """Per (layout, batch) and context: dense / DSA decode time against the best dense kernel, and against
    each of the split-K kernel and SDPA."""
    rows = [{"layout": r["layout"], "indexer keys": keys_dtype(r), "batch": r["batch"], "context": r["context"],
             "x vs best dense": best_dense_ms(r) / r["dsa_ms"] if best_dense_ms(r) and r.get("dsa_ms") else None,
             "x vs dense kernel": _ratio(r, "dense_ms", "dsa_ms"), "x vs SDPA": _ratio(r, "dense_sdpa_ms", "dsa_ms"),
             "DSA % of HBM": 100 * r["dsa_hbm_frac"] if r.get("dsa_hbm_frac") is not None else None}
            for r in decode_rows(results)]
    return pd.DataFrame(rows)


def decode_parts_frame(results: list[dict]) -> pd.DataFrame:
    """Where a DSA decode step's time goes, per (layout, indexer keys, batch, context): the indexer's scores
    alone, the top-k (the indexer step minus its scores) and the sparse attention, each in ms and as a share of
    their sum, with the HBM share of the whole step. Rows recorded before the scores were timed alone are left
    out. Columns: layout, indexer keys, batch, context, part, ms, share, step_hbm_frac."""
    rows = []
    for r in decode_rows(results):
        if not all(r.get(k) for k in ("dsa_indexer_scores_ms", "dsa_indexer_topk_ms", "dsa_sparse_ms")):
            continue
        ms = {"indexer scores": r["dsa_indexer_scores_ms"],
              "top-k": max(0.0, r["dsa_indexer_topk_ms"] - r["dsa_indexer_scores_ms"]),
              "sparse attention": r["dsa_sparse_ms"]}
        total = sum(ms.values())
        rows += [{"layout": r["layout"], "indexer keys": keys_dtype(r), "batch": r["batch"], "context": r["context"],
                  "part": part, "ms": v, "share": v / total, "step_hbm_frac": r.get("dsa_hbm_frac")}
                 for part, v in ms.items()]
    return pd.DataFrame(rows, columns=["layout", "indexer keys", "batch", "context", "part", "ms", "share",
                                       "step_hbm_frac"])


def request_table(results: list[dict]) -> pd.DataFrame:
    """Whole requests (prefill + generated tokens): ms per part and method, and dense / DSA for the request."""
    keys = ("layout", "prompt", "gen_tokens", "batch", "prefill_dense_ms", "prefill_dsa_ms", "decode_dense_ms",
            "decode_dsa_ms", "request_dense_ms", "request_dsa_ms")
    rows = [r for res in results for r in res["rows"] if r.get("kind") == "request"]
    return pd.DataFrame([{**{k: r.get(k) for k in keys}, "speedup_request": _ratio(r, "request_dense_ms",
                                                                                   "request_dsa_ms")} for r in rows])


def decode_cost_figure(df: pd.DataFrame, title: str) -> Any:
    """Matplotlib: per layout (columns), ms per token and layer against context, one line per (method, batch),
    log axes; and the DSA speed-up over the faster dense kernel (split-K or SDPA) at each point."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    layouts = sorted(df["layout"].unique())
    fig, axes = plt.subplots(2, len(layouts), figsize=(6.2 * len(layouts), 8.2), squeeze=False)
    styles = {"dense": ("#444444", "-"), "dense_sdpa": ("#8c564b", ":"), "dsa": ("#d62728", "-"),
              "dsa_fp8": ("#d62728", "--")}
    # a dense method measured in several runs (bf16 and FP8 key runs): one point per context, their median
    df = df.groupby(["layout", "method", "batch", "context"], as_index=False).ms.median()
    markers = dict(zip(sorted(df["batch"].unique()), "osD^v"))
    for c, lay in enumerate(layouts):
        d = df[(df.layout == lay) & df.method.isin(list(styles))]
        ax = axes[0, c]
        for (m, b), g in d.groupby(["method", "batch"]):
            g = g.sort_values("context")
            col, ls = styles[m]
            ax.plot(g.context, g.ms, color=col, ls=ls, marker=markers[b], ms=4, label=f"{m}, batch {b}")
        ax.set(xscale="log", yscale="log", xlabel="context S (cached tokens)", ylabel="ms per token step, one layer",
               title=f"{lay}: decode time (lower is better)")
        ax.legend(fontsize=7, ncol=2)
        ax = axes[1, c]
        piv = d.pivot_table(index=["batch", "context"], columns="method", values="ms").reset_index()
        dense = [m for m in ("dense", "dense_sdpa") if m in piv]
        for b, g in piv.groupby("batch"):
            best = g[dense].min(axis=1) if dense else None  # the faster dense kernel at each point
            for dsa, ls in (("dsa", "-"), ("dsa_fp8", "--")):
                if best is not None and dsa in g:
                    keys = " (FP8 keys)" if dsa.endswith("fp8") else ""
                    ax.plot(g.context, best / g[dsa], ls=ls, marker=markers[b], ms=4, label=f"batch {b}{keys}")
        ax.axhline(1, color="0.6", lw=0.8)
        ax.set(xscale="log", xlabel="context S (cached tokens)", ylabel="best dense kernel ms / DSA ms",
               title=f"{lay}: DSA speed-up (higher is better; 1 = tie)")
        ax.legend(fontsize=7)
        for a in axes[:, c]:
            xs = sorted(d.context.unique())
            a.set_xticks(xs, [f"{x // 1024}K" if x >= 1024 else str(x) for x in xs])
            a.minorticks_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
