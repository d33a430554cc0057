"""What a token costs against its position, for prefill and for decode: DeepSeek's "cost per million tokens"
curves (V3.1 against V3.2), rebuilt for one attention layer from the recorded benchmarks.

Prefill: the map (``dsa.bench.map``) times one forward of the whole sequence at lengths L1 < L2 < ...; the
tokens at positions L1..L2 cost (T(L2) - T(L1)) / (L2 - L1) each (the marginal cost, plotted at the middle of
the interval), so a dense layer's cost grows linearly with the position and a DSA layer's flattens once the
position passes k (only the indexer still grows). Decode: ``dsa.bench.decode`` times one step for a batch of B
sequences with S cached tokens; each generated token costs step / B at position S.

Dollars come from GPU time at a rental price: DeepSeek's own cost statements assume $2 per GPU-hour (H800);
the price is a parameter, and the curves are attention-only (projections, MLP and the rest of the model are
the same for dense and DSA and are left out), per layer unless ``layers`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .inference import DENSE_DECODE, best_dense_ms, decode_rows, keys_dtype
from .map_tables import LAYOUT_NAMES, map_frame


@dataclass(frozen=True)
class TokenCost:
    """GPU time to dollars: ``usd_per_gpu_hour`` (DeepSeek's assumption: 2.0), ``layers`` attention layers
    counted (1: per layer; DeepSeek-V3.2 has 61)."""

    usd_per_gpu_hour: float = 2.0
    layers: int = 1

    def __post_init__(self) -> None:
        price = self.usd_per_gpu_hour
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not price > 0:
            raise ValueError(f"usd_per_gpu_hour must be > 0, got {self.usd_per_gpu_hour!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {self.layers!r}")

    def usd_per_million(self, ms_per_token: Any) -> Any:
        """Dollars per million tokens for ``ms_per_token`` milliseconds of GPU time each (scalar or array)."""
        return np.asarray(ms_per_token, dtype=float) * 1e6 / 3.6e6 * self.usd_per_gpu_hour * self.layers


def _marginal(d: pd.DataFrame, col: str) -> pd.DataFrame:
    """Consecutive measured lengths of ``d`` (sorted by L): ms per token between them and the mid position."""
    d = d[d[col].notna()].groupby("L", as_index=False)[col].median()  # repeated runs of one L: their median
    l, t = d.L.to_numpy(float), d[col].to_numpy(float)
    out = pd.DataFrame({"from_L": l[:-1], "to_L": l[1:], "position": (l[:-1] + l[1:]) / 2,
                        "ms_per_token": np.diff(t) / np.diff(l)})
    # a time that fell with L is timing noise larger than the difference: it says nothing of the marginal cost
    return out[out.ms_per_token > 0]


def prefill_cost_frame(map_results: Iterable[dict], cost: TokenCost = TokenCost(),
                       indexers: tuple[str, ...] = ("4x64 bf16", "64x128 bf16", "64x128 fp8")) -> pd.DataFrame:
    """Marginal prefill cost per token against position, per layout: the best dense kernel at each L, and DSA
    per indexer in ``indexers`` ('HxD precision'). Columns: layout, method, position, from_L, to_L,
    ms_per_token, usd_per_mtok. A length without a time is skipped: the interval then spans it (from_L, to_L).
    An interval whose time fell (T(L2) <= T(L1): noise larger than the difference, at short L) is left out, and
    so are DSA rows marked ``stale`` by :func:`map_frame` (older than a re-run of their series)."""
    df = map_frame(map_results)
    out = []
    for layout, d in (df[df["pass"] == "fwd"].groupby("layout") if len(df) else ()):
        out.append(_marginal(d, "best_dense_ms").assign(method="dense (best kernel)", layout=layout))
        for ix in indexers:  # stale rows predate a re-run of the series: an interval to them mixes two codes
            di = d[(d.indexer == ix) & ~d.stale]
            out.append(_marginal(di, "dsa_ms").assign(method=f"DSA, indexer {ix}", layout=layout))
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["from_L", "to_L", "position", "ms_per_token", "method", "layout"], dtype=float)
    res["layout"] = [LAYOUT_NAMES.get(x, x) for x in res["layout"]]
    return res.assign(usd_per_mtok=cost.usd_per_million(res.ms_per_token))


def decode_cost_frame(decode_results: Iterable[dict], cost: TokenCost = TokenCost()) -> pd.DataFrame:
    """Decode cost per generated token against position (the cached context S), per layout and batch: dense
    (the faster of the split-K kernel and SDPA over the whole cache, per point) and DSA (indexer + top-k +
    sparse attention). Columns: layout, method, batch, position, ms_per_token, usd_per_mtok."""
    rows = []
    for r in decode_rows(list(decode_results)):
        dsa = "DSA, FP8 keys" if keys_dtype(r) == "fp8" else "DSA"
        for ms, method in ((best_dense_ms(r), DENSE_DECODE), (r.get("dsa_ms"), dsa)):
            if ms is not None:
                rows.append({"layout": LAYOUT_NAMES.get(r["layout"], r["layout"]), "method": method,
                             "batch": r["batch"], "position": r["context"], "ms_per_token": ms / r["batch"]})
    res = pd.DataFrame(rows, columns=["layout", "method", "batch", "position", "ms_per_token"])
    # a method measured in several runs (dense beside the bf16 and the FP8 key runs): their median per point
    res = res.groupby(["layout", "method", "batch", "position"], as_index=False).ms_per_token.median()
    return res.assign(usd_per_mtok=cost.usd_per_million(res.ms_per_token))


def cost_ratio_table(prefill: pd.DataFrame, decode: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Dense cost / DSA cost per token at each position (> 1: DSA is cheaper): prefill per DSA indexer, decode
    at ``batch``. Columns: layout, stage, position, dense_usd, dsa_usd, dense_over_dsa."""
    out = []
    for layout, p in prefill.groupby("layout"):
        dense = p[p.method.str.startswith("dense")].set_index("position").usd_per_mtok
        for method, q in p[p.method.str.startswith("DSA")].groupby("method"):
            j = q.set_index("position").usd_per_mtok.to_frame("dsa_usd").join(dense.rename("dense_usd"), how="inner")
            out.append(j.reset_index().assign(layout=layout, stage=f"prefill, {method}"))
    for layout, d in decode[decode.batch == batch].groupby("layout"):
        piv = d.pivot_table(index="position", columns="method", values="usd_per_mtok")
        for dsa in [m for m in piv.columns if m.startswith("DSA")]:
            if DENSE_DECODE in piv.columns:
                j = piv[[dsa, DENSE_DECODE]].set_axis(["dsa_usd", "dense_usd"], axis=1)
                keys = "" if dsa == "DSA" else f", {dsa[5:]}"
                out.append(j.reset_index().assign(layout=layout, stage=f"decode, batch {batch}{keys}"))
    if not out:
        return pd.DataFrame(columns=["layout", "stage", "position", "dense_usd", "dsa_usd", "dense_over_dsa"])
    res = pd.concat(out, ignore_index=True)
    res = res.assign(dense_over_dsa=res.dense_usd / res.dsa_usd)
    return res[["layout", "stage", "position", "dense_usd", "dsa_usd", "dense_over_dsa"]]


def _kilo(x: float) -> str:
    return f"{x / 1024:g}K" if x >= 1024 else f"{x:g}"


MIN_TICK_RATIO = 1.4  # neighbouring labels on a log axis closer than this overlap ("10K12K")


def _position_ticks(ax: Any, positions: pd.Series) -> None:
    """Ticks at the measured positions of a log axis, in K tokens (1K = 1024); a position within
    MIN_TICK_RATIO of the last ticked one gets no label of its own."""
    xs: list[float] = []
    for x in sorted(positions.unique()):
        if not xs or x / xs[-1] >= MIN_TICK_RATIO:
            xs.append(x)
    if xs:
        ax.set_xticks(xs, [_kilo(x) for x in xs])
        ax.minorticks_off()


def token_cost_figure(prefill: pd.DataFrame, decode: pd.DataFrame, cost: TokenCost, title: str) -> Any:
    """Matplotlib: rows = layouts, columns = prefill / decode; cost per million tokens (USD, linear axes, as
    DeepSeek plots it) against the token's position. Lower is better; a flat DSA curve is the point."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    layouts = sorted(set(prefill.layout) | set(decode.layout))
    fig, axes = plt.subplots(max(1, len(layouts)), 2, figsize=(11, 3.5 * max(1, len(layouts))), squeeze=False)
    unit = f"USD per million tokens ({cost.layers} attention layer{'s' if cost.layers > 1 else ''}, " \
           f"${cost.usd_per_gpu_hour:g}/GPU-hour)"
    for r, lay in enumerate(layouts):
        ax = axes[r, 0]
        for method, g in prefill[prefill.layout == lay].groupby("method"):
            ls = "--" if "fp8" in method else ":" if "4x64" in method else "-"
            col = "#444444" if method.startswith("dense") else "#d62728"
            ax.plot(g.position, g.usd_per_mtok, ls=ls, color=col, marker="o", ms=4, label=method)
        ax.set(xscale="log", xlabel="token position (tokens before it)", ylabel=unit,
               title=f"{lay}: prefill (lower is better)")
        _position_ticks(ax, prefill[prefill.layout == lay].position)
        ax = axes[r, 1]
        d = decode[decode.layout == lay]
        markers = dict(zip(sorted(d.batch.unique()), "osD^v"))
        for (method, b), g in d.groupby(["method", "batch"]):
            g = g.sort_values("position")
            col = "#444444" if method.startswith("dense") else "#d62728"
            ax.plot(g.position, g.usd_per_mtok, color=col, ls="--" if "FP8" in method else "-", marker=markers[b],
                    ms=4, label=f"{method}, batch {b}")
        ax.set(xscale="log", yscale="log", xlabel="token position (cached tokens)", ylabel=unit,
               title=f"{lay}: decode (lower is better)")
        for c, ax in enumerate(axes[r]):
            if ax.has_data():  # decode's lines fill its panel: its legend goes beside it
                ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if c else {}))
                ax.yaxis.label.set_size(8)
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        _position_ticks(axes[r, 1], d.position)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
