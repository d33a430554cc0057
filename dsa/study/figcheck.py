"""Mechanical checks of a static (matplotlib) figure, run by :func:`dsa.study.figures.save_static` on every figure it
saves, and by the tests:

- **overlapping labels**: any two visible texts of the figure (tick labels, axis labels, titles, legend
  entries, annotations, heatmap cell values) whose boxes overlap by more than a small share of the smaller;
- **NaN cells**: a heatmap (``QuadMesh``) or image with NaN or masked (blank) cells;
- **intervals past a physical bound**: error bars or filled bands reaching below 0 on an axis whose label
  names a time, loss, accuracy, recall, share or count, or above 100 % / 1 on a percentage / fraction axis.

:func:`check_figure` returns a list of problems (empty = the figure passes); nothing is changed.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# y-axis label -> lower bound 0 (these quantities cannot be negative)
_NONNEG = re.compile(r"\b(ms|time|loss|accuracy|recall|fraction|share|keys|tokens|flops|bytes|memory|%)", re.I)
_PERCENT = re.compile(r"\(%|%\)|percent", re.I)
_FRACTION = re.compile(r"\bfraction\b|\brecall\b|\bshare\b", re.I)


def axis_bounds(label: str) -> tuple[float | None, float | None]:
    """Physical (lower, upper) bound of a quantity from its axis label ('time per step (ms)' -> (0, None),
    'val accuracy (%)' -> (0, 100), 'recall (fraction of dense mass)' -> (0, 1)); (None, None) if unknown."""
    if not label or not _NONNEG.search(label) or "−" in label or " - " in label or "minus" in label.lower() \
            or "difference" in label.lower() or "change" in label.lower():
        return (None, None)
    if _PERCENT.search(label):
        return (0.0, 100.0)
    if _FRACTION.search(label) and "loss" not in label.lower():
        return (0.0, 1.0)
    return (0.0, None)


def _texts(fig: Any) -> list:
    """The texts a draw of the figure shows: per axes the tick labels of the ticks drawn (not those outside
    the view), axis labels, titles, annotations and legend entries; the figure's own texts and legends. The
    provenance stamp of :func:`dsa.study.figures.save_static` is left out."""
    out = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.get_visible():
                continue
            for tick in axis._update_ticks():  # the ticks this draw shows
                out += [tick.label1, tick.label2]
            out.append(axis.label)
            out.append(axis.get_offset_text())
        out += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        leg = ax.get_legend()
        if leg is not None and leg.get_visible():
            out += [*leg.get_texts(), leg.get_title()]
    out += list(fig.texts)
    for leg in fig.legends:
        out += [*leg.get_texts(), leg.get_title()]
    if getattr(fig, "_suptitle", None) is not None:
        out.append(fig._suptitle)
    seen, keep = set(), []
    for t in out:
        if id(t) in seen or not t.get_visible() or not str(t.get_text()).strip() or t.get_gid() == "provenance":
            continue
        seen.add(id(t))
        keep.append(t)
    return keep


def overlapping_labels(fig: Any, tolerance: float = 0.15) -> list[str]:
    """Pairs of visible texts whose boxes overlap by more than ``tolerance`` of the smaller box's area."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = []
    for t in _texts(fig):
        try:
            bb = t.get_window_extent(r)
        except Exception:  # noqa: BLE001
            continue
        if bb.width > 0 and bb.height > 0 and np.isfinite([bb.x0, bb.y0, bb.x1, bb.y1]).all():
            boxes.append((t, bb))
    problems = []
    for i in range(len(boxes)):
        ti, a = boxes[i]
        for j in range(i + 1, len(boxes)):
            tj, b = boxes[j]
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            if w <= 0 or h <= 0:
                continue
            if w * h > tolerance * min(a.width * a.height, b.width * b.height):
                problems.append(f"labels overlap: {ti.get_text()!r} and {tj.get_text()!r}")
    return problems


def nan_cells(fig: Any) -> list[str]:
    """Heatmaps and images with NaN or masked cells."""
    from matplotlib.collections import QuadMesh  # noqa: PLC0415
    from matplotlib.image import AxesImage  # noqa: PLC0415

    problems = []
    for ax in fig.axes:
        for art in [*ax.collections, *ax.images]:
            if not isinstance(art, (QuadMesh, AxesImage)):
                continue
            arr = art.get_array()
            if arr is None:
                continue
            masked = np.ma.getmaskarray(arr)
            n = int(masked.sum() + np.isnan(np.ma.getdata(arr).astype(float)[~masked]).sum())
            if n:
                problems.append(f"{n} NaN/blank cell(s) in a heatmap of {ax.get_title()!r}")
    return problems


def intervals_out_of_bounds(fig: Any, eps: float = 1e-9) -> list[str]:
    """Error bars (vertical line segments) and bands reaching past the y axis's physical bound."""
    from matplotlib.collections import LineCollection, PolyCollection  # noqa: PLC0415

    problems = []
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = axis_bounds(ax.get_ylabel())
        if (lo is None and hi is None) or not _values_axis(ax.yaxis):
            continue
        ys = []
        for c in ax.collections:
            if isinstance(c, LineCollection):
                for seg in c.get_segments():
                    if len(seg) == 2 and abs(seg[0][0] - seg[1][0]) < 1e-12:  # vertical: an error bar
                        ys += [seg[0][1], seg[1][1]]
            elif isinstance(c, PolyCollection) and not c.get_label().startswith("_child"):
                for p in c.get_paths():
                    ys += list(p.vertices[:, 1])
        for line in ax.lines:  # seaborn draws its error bars as two-point vertical lines
            if line.get_transform() != ax.transData:  # axvline & co.: y in axes coordinates
                continue
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if len(x) == 2 and np.isfinite(x).all() and x[0] == x[1]:
                ys += list(y)
        ys = np.asarray([v for v in ys if np.isfinite(v)], float)
        if not len(ys):
            continue
        if lo is not None and ys.min() < lo - eps:
            problems.append(f"an interval reaches {ys.min():.4g} below the bound {lo:g} on {ax.get_ylabel()!r}")
        if hi is not None and ys.max() > hi + eps:
            problems.append(f"an interval reaches {ys.max():.4g} above the bound {hi:g} on {ax.get_ylabel()!r}")
    return problems


def _values_axis(axis: Any) -> bool:
    """True when the axis's tick labels are its data values (a numeric axis); False for category positions
    (bars labelled '1024', '2048' at 0, 1), which carry no physical bound."""
    seen = False
    for tick in axis._update_ticks():
        text = tick.label1.get_text().replace("\u2212", "-").replace(",", "")
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            return False
        if not np.isclose(value, tick.get_loc(), rtol=1e-6, atol=1e-9 + 0.01 * abs(tick.get_loc())):
            return False
        seen = True
    return seen


def check_figure(fig: Any) -> list[str]:
    """Every check above; an empty list means the figure passes."""
    return [*overlapping_labels(fig), *nan_cells(fig), *intervals_out_of_bounds(fig)]


__all__ = ["axis_bounds", "check_figure", "intervals_out_of_bounds", "nan_cells", "overlapping_labels"]
