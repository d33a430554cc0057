"""Tables for display: numbers rounded, and no NaN cell: a missing value reads 'n/a (why)'."""

from __future__ import annotations

import pandas as pd


def readable(df: pd.DataFrame, digits: int = 3, na: str | dict[str, str] = "n/a") -> pd.DataFrame:
    """``df`` rounded to ``digits`` with every missing cell replaced by ``na`` (one text, or column -> text,
    e.g. ``{"DSA scratch": "n/a (not run)"}``; other columns get 'n/a'). Numeric columns holding a missing
    value become text columns; the others keep their type."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if not col.isna().any():
            if pd.api.types.is_float_dtype(col):
                out[c] = col.round(digits)
            continue
        text = na.get(c, "n/a") if isinstance(na, dict) else na
        if pd.api.types.is_float_dtype(col):
            out[c] = [text if pd.isna(v) else f"{v:.{digits}f}" for v in col]
        else:
            out[c] = col.astype(object).where(col.notna(), text)
    return out


def nan_cells(df: pd.DataFrame) -> int:
    """Number of missing cells (what a displayed table must not show)."""
    return int(df.isna().to_numpy().sum())


__all__ = ["nan_cells", "readable"]
