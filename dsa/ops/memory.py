"""How many rows the references process at once: one memory budget for every chunked reference."""

from __future__ import annotations

# elements of the largest float32 intermediate one chunk of a reference holds (128 MiB)
CHUNK_ELEMENTS = 1 << 25


def chunk_rows(elements_per_row: int, n_rows: int) -> int:
    """Rows per chunk so that rows x elements_per_row stays near CHUNK_ELEMENTS: at least 1, at most n_rows."""
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(1, elements_per_row)))
