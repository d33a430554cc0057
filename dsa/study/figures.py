"""Figures for the notebooks: saving static report figures (with where their numbers come from), plotly
set-up, and the interactive indexer explorer (ipywidgets + a plotly FigureWidget updated in place).
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsa.provenance import REPO_ROOT

from .figcheck import check_figure


def figures_dir() -> Path:
    """``$DSA_FIGURES_DIR`` or ``<repo>/figures``."""
    return Path(os.environ.get("DSA_FIGURES_DIR", REPO_ROOT / "figures"))


def save_static(fig: Any, name: str, *, source: str | None = None, dpi: int = 150,
                out_dir: str | Path | None = None) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` (or ``<out_dir>/<name>.png``); ``source`` (e.g.
    ``fresh_run_label()`` or a record's ``describe_provenance``) is stamped in the bottom-left corner so the
    figure says where its numbers come from. Returns the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    if source:
        # wrapped to the figure's width and hung below it: a long provenance list must not widen the figure
        # or cover the axis labels (about 22 characters of 6-point text per inch)
        text = textwrap.fill(source, width=max(60, int(fig.get_figwidth() * 22)))
        fig.canvas.draw()  # the bottom of what is drawn (tick and axis labels) sets where the stamp hangs
        bottom = fig.get_tightbbox(fig.canvas.get_renderer()).y0 / fig.get_figheight()
        fig.text(0.005, bottom - 0.02, text, fontsize=6, color="0.45", ha="left", va="top", gid="provenance")
    path = (figures_dir() if out_dir is None else Path(out_dir)) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    print(f"[figures] saved {path}")
    # the mechanical checks (dsa.study.figcheck), written next to the figure: the tests fail on any problem
    problems = check_figure(fig)
    path.with_suffix(".check.json").write_text(json.dumps({"figure": path.name, "problems": problems}, indent=1))
    for msg in problems:
        print(f"[figures] CHECK {name}: {msg}")
    return path


def figure_saver(enabled: bool) -> Callable[[Any, str, str | None], None]:
    """A notebook's ``maybe_save(fig, name, source)``: :func:`save_static` when ``enabled`` (the notebook's
    ``save_figures`` parameter), nothing otherwise. Usage: ``maybe_save = figure_saver(P.save_figures)``."""

    def maybe_save(fig: Any, name: str, source: str | None) -> None:
        if enabled:
            save_static(fig, name, source=source)

    return maybe_save


def setup_plotting() -> None:
    """plotly: emit the plotly JSON mimetype (JupyterLab renders it; ``python -m dsa.study.report`` turns it into
    HTML with plotly.js shipped next to the report, so figures render offline). seaborn: a clean style."""
    import plotly.io as pio  # noqa: PLC0415
    import seaborn as sns  # noqa: PLC0415

    pio.renderers.default = "plotly_mimetype"
    pio.templates.default = "plotly_white"
    sns.set_theme(context="notebook", style="whitegrid")


# ----------------------------------------------------------------------------------- notebook figures
KIND_STYLE = {"dense": ("#444444", "o"), "fixed k": ("#dd8452", "X"), "adaptive k": ("#55a868", "<")}


def clipped_errors(mean: Any, half_width: Any, bounds: tuple[float | None, float | None]) -> tuple[Any, Any]:
    """(minus, plus) error-bar lengths of mean ± half_width cut at the metric's physical bounds (e.g. a time
    interval never reaches below 0: ``dsa.study.verdicts.metric_bounds``); a missing half-width draws no bar."""
    import numpy as np  # noqa: PLC0415

    m = np.asarray(mean, float)
    h = np.nan_to_num(np.asarray(half_width, float), nan=0.0)
    lo = m - h if bounds[0] is None else np.maximum(m - h, bounds[0])
    hi = m + h if bounds[1] is None else np.minimum(m + h, bounds[1])
    return np.maximum(m - lo, 0.0), np.maximum(hi - m, 0.0)


def adaptive_tradeoff_figure(points: Any, arms: list[str], title: str = ""):
    """Notebook 04's static figure: validation loss against the mean share of past tokens each query keeps
    (lower-left is better), and the time per step, one marker per arm.

    points: one row per arm with ``arm``, ``kind`` ('dense' | 'fixed k' | 'adaptive k'), ``keys`` (mean keys
    per query / L; NaN when not measured), ``keys_max`` (an upper bound for an adaptive arm: the keys of the
    fixed arm with its cap), ``loss``, ``loss_sd`` and ``ms`` (time per step). An adaptive arm whose keys were
    not measured (a recorded run holds no model) is drawn at its bound with a left-pointing marker and an
    arrow towards fewer keys, and its legend entry says so: every arm appears.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.35, 1]})
    ax = axes[0]
    palette = plt.get_cmap("tab10")
    order = [a for a in arms if a in set(points.arm)]
    for i, arm in enumerate(order):
        r = points[points.arm == arm].iloc[0]
        color, marker = KIND_STYLE.get(r.kind, ("#4c72b0", "o"))
        color = color if r.kind == "dense" else palette(i % 10)
        measured = np.isfinite(r["keys"])
        x = r["keys"] if measured else r.get("keys_max", np.nan)
        label = arm if measured else f"{arm}: keys not recorded, at most {x:.2f}"
        if not np.isfinite(x):
            continue
        sd = r["loss_sd"] if np.isfinite(r["loss_sd"]) else 0.0
        ax.errorbar([x], [r["loss"]], yerr=[[min(sd, r["loss"])], [sd]], fmt=marker if measured else "<",
                    ms=9, color=color, capsize=3, label=label, mfc=color if measured else "white", mew=1.5)
        if not measured:
            ax.annotate("", xy=(x - 0.06, r["loss"]), xytext=(x, r["loss"]),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1})
    ax.set(xlabel="mean keys per query / L (fraction of the sequence)", ylabel="validation loss (nats/token)",
           title="Quality vs keys kept (lower-left is better; bars: SD over seeds)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="arm",
              title_fontsize=7)
    ms = points.set_index("arm").reindex(order)["ms"]
    axes[1].barh(np.arange(len(order)), ms.to_numpy(), color="#4c72b0")
    axes[1].set_yticks(np.arange(len(order)), order, fontsize=8)
    axes[1].invert_yaxis()
    axes[1].set(xlabel="time per training step (ms; DSA: sparse phase)", title="Speed (lower is better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_pair_figure(mean: Any, diff: Any, title: str = ""):
    """Notebook 03's static figure: the mean validation loss over (L, k/L) and its difference from dense
    at the same L, with colour bars. Cell values are sized to the cells (no overlapping labels); an empty
    cell (a configuration not run) is hatched and marked 'n/a'."""
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import seaborn as sns  # noqa: PLC0415

    n_cols = mean.shape[1]
    width = max(13.0, 2 * (1.6 + 0.95 * n_cols))
    fig, axes = plt.subplots(1, 2, figsize=(width, 2.4 + 0.7 * len(mean)))
    size = 8 if n_cols <= 5 else 7
    lim = float(np.nanmax(np.abs(diff.values))) if diff.notna().any().any() else 0.0
    lim = lim or 1e-9
    for ax, data, fmt, cmap, label, ttl, kw in (
        (axes[0], mean, ".3f", "viridis_r", "val loss (nats/token)", "Validation loss\n(lower is better)", {}),
        (axes[1], diff, "+.3f", "RdBu_r", "loss − dense loss (nats/token)",
         "Loss − dense at the same L\n(below 0: better than dense)",
         {"center": 0, "vmin": -lim, "vmax": lim}),
    ):
        filled = data.fillna(data.stack().mean() if data.notna().any().any() else 0.0)
        sns.heatmap(filled, annot=False, cmap=cmap, ax=ax, cbar_kws={"label": label}, **kw)
        mesh = ax.collections[0]
        for (yi, xi), v in np.ndenumerate(data.to_numpy(dtype=float)):
            if np.isfinite(v):
                r, g, b, _ = mesh.cmap(mesh.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(xi + 0.5, yi + 0.5, format(v, fmt), ha="center", va="center", fontsize=size,
                        color="white" if dark else "black")
            else:
                ax.add_patch(plt.Rectangle((xi, yi), 1, 1, fill=True, color="white", hatch="//", ec="0.7"))
                ax.text(xi + 0.5, yi + 0.5, "n/a\n(not run)", ha="center", va="center", fontsize=size - 1, color="0.4")
        ax.set(xlabel="k/L (fraction of past tokens kept)", ylabel="sequence length L (tokens)", title=ttl)
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title, fontsize=10, y=1.02)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- the explorer
PANELS = (
    ("scores", "indexer score I[t,s]", "Viridis"),
    ("selected", "top-k selection", [[0, "#f4f4f4"], [1, "#d62728"]]),
    ("sparse", "sparse attention weights", "Blues"),
    ("dense", "dense attention weights", "Blues"),
)


CBAR_TITLES = {"scores": "score (a.u.)", "selected": "selected", "sparse": "probability",
               "dense": "probability"}


class IndexerExplorer:
    """Sliders for k, sequence length, layer, attention head and indexer head, a causal-guard toggle, and
    four linked heatmaps (indexer scores, top-k selection, sparse attention weights, dense attention for
    comparison) in one plotly FigureWidget whose traces are updated in place.

    layers: per layer, the dict of tensors of :func:`dsa.study.analysis.layer_tensors`.
    compute: ``dsa.study.analysis.explorer_views``-like function of (tensors, seq_len=, top_k=, head=,
             indexer_head=, causal=) -> dict of (L, L) matrices and 'stats'.
    """

    def __init__(
        self,
        layers: list[dict],
        compute: Callable[..., dict],
        *,
        max_len: int,
        top_k: int,
        seq_len: int | None = None,
        title: str = "Indexer explorer",
    ) -> None:
        import ipywidgets as W  # noqa: PLC0415
        import plotly.graph_objects as go  # noqa: PLC0415
        from plotly.subplots import make_subplots  # noqa: PLC0415

        self.layers, self.compute = layers, compute
        n_heads = layers[0]["q"].shape[1]
        n_idx_heads = layers[0]["w"].shape[-1]
        seq_len = min(seq_len or max_len, max_len)
        style = {"description_width": "170px"}
        lay = W.Layout(width="440px")
        self.w_k = W.IntSlider(value=min(top_k, seq_len), min=1, max=seq_len, description="top-k k (keys)",
                               style=style, layout=lay, continuous_update=False)
        self.w_len = W.IntSlider(value=seq_len, min=2, max=max_len, description="sequence length L",
                                 style=style, layout=lay, continuous_update=False)
        self.w_layer = W.IntSlider(value=0, min=0, max=len(layers) - 1, description="layer", style=style,
                                   layout=lay, continuous_update=False)
        self.w_head = W.IntSlider(value=0, min=0, max=n_heads - 1, description="attention head", style=style,
                                  layout=lay, continuous_update=False)
        self.w_ihead = W.IntSlider(value=-1, min=-1, max=n_idx_heads - 1, description="indexer head (-1: sum)",
                                   style=style, layout=lay, continuous_update=False)
        self.w_causal = W.ToggleButton(value=True, description="causal guard ON", icon="shield",
                                       button_style="success", layout=W.Layout(width="200px"))
        self.w_stats = W.HTML()

        fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in PANELS], horizontal_spacing=0.075)
        for i, (key, label, cs) in enumerate(PANELS):
            dom = fig.layout[f"xaxis{i + 1 if i else ''}"].domain
            cbar = {"x": dom[1] + 0.004, "len": 0.75, "thickness": 9, "title": {"text": CBAR_TITLES[key],
                    "side": "right", "font": {"size": 10}}, "tickfont": {"size": 9}}
            if key == "selected":
                cbar.update(tickvals=[0, 1], ticktext=["no", "yes"])
            fig.add_trace(
                go.Heatmap(z=[[0.0]], colorscale=cs, showscale=True, colorbar=cbar, name=label,
                           zmin=0 if key == "selected" else None, zmax=1 if key == "selected" else None,
                           hovertemplate="t=%{y}, s=%{x}<br>" + label + ": %{z:.3g}<extra></extra>"),
                row=1, col=i + 1,
            )
            fig.update_xaxes(title_text="key position s (tokens)", title_font_size=11, tickfont_size=10,
                             row=1, col=i + 1)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}", tickfont_size=10,
                             row=1, col=i + 1)
        fig.update_yaxes(title_text="query position t (tokens)", title_font_size=11, row=1, col=1)
        fig.update_annotations(font_size=12)
        fig.update_layout(
            title={"text": title, "font": {"size": 13}},
            height=410, width=1080, margin={"l": 60, "r": 70, "t": 90, "b": 110},
            annotations=list(fig.layout.annotations) + [{
                "text": "Better: the red cells of the selection cover the dark cells of dense attention (high "
                        "'dense mass recall');<br>with the causal guard no cell lies right of the diagonal "
                        "(s > t is the future; blank cells are masked). Colour bars: score (a.u.), selected "
                        "or not, attention probability.",
                "xref": "paper", "yref": "paper", "x": 0, "y": -0.36, "showarrow": False,
                "font": {"size": 11}, "xanchor": "left", "align": "left"}],
        )
        self.fig = go.FigureWidget(fig)
        for w in (self.w_k, self.w_len, self.w_layer, self.w_head, self.w_ihead, self.w_causal):
            w.observe(self._on_change, names="value")
        controls = W.HBox([W.VBox([self.w_k, self.w_len, self.w_layer]),
                           W.VBox([self.w_head, self.w_ihead, self.w_causal])])
        self.widget = W.VBox([controls, self.w_stats, self.fig])
        self.update()

    def settings(self) -> dict:
        return {"seq_len": self.w_len.value, "top_k": self.w_k.value, "head": self.w_head.value,
                "indexer_head": self.w_ihead.value, "causal": self.w_causal.value}

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.w_len:  # k may not exceed L
            self.w_k.max = self.w_len.value
        if change["owner"] is self.w_causal:
            on = self.w_causal.value
            self.w_causal.description = "causal guard ON" if on else "causal guard OFF (seed's leak)"
            self.w_causal.button_style = "success" if on else "danger"
        self.update()

    def update(self) -> dict:
        """Recompute the four matrices for the current settings and write them into the figure in place."""
        v = self.compute(self.layers[self.w_layer.value], **self.settings())
        with self.fig.batch_update():
            for i, (key, _, _) in enumerate(PANELS):
                # NaN (masked) -> None: blank cells, and JSON-compliant for the widget's comm messages
                self.fig.data[i].z = [[None if x != x else x for x in row] for row in v[key].tolist()]
        st = v["stats"]
        leak = st["future_selections"]
        color = "#2ca02c" if leak == 0 else "#d62728"
        self.w_stats.value = (
            f"<b>{st['keys_per_query']:.1f}</b> keys per query ({100 * st['fraction_of_past_selected']:.0f}% of "
            f"the past on average) · mean distance t−s <b>{st['mean_distance']:.1f}</b> tokens · dense mass "
            f"recall (all heads) <b>{st.get('dense_mass_recall', float('nan')):.3f}</b> (1 = best) · "
            f"<span style='color:{color}'>future selections: <b>{leak}</b></span> (must be 0)"
        )
        self.last = v
        return v

    def static_figure(self):
        """A plain ``go.Figure`` copy of the current view (for static reports: a widget needs a kernel)."""
        import plotly.graph_objects as go  # noqa: PLC0415

        return go.Figure(self.fig)


__all__ = ["IndexerExplorer", "adaptive_tradeoff_figure", "clipped_errors", "figure_saver", "figures_dir",
           "heatmap_pair_figure", "save_static", "setup_plotting"]
