"""Top-k selection of past tokens per query, with the causal guard (and the seed's leak, on purpose)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_positive_int, check_tensor, check_top_k
from .indexer import indexer_scores


@dataclass
class Selection:
    """Selected key positions per query.

    idx:   (B, L, K) int64, the selected positions; -1 in unused slots
    valid: (B, L, K) bool, True where the slot holds a selected position
    """

    idx: torch.Tensor
    valid: torch.Tensor

    @property
    def k_max(self) -> int:
        return self.idx.shape[-1]

    def counts(self) -> torch.Tensor:
        """(B, L) number of selected tokens per query."""
        return self.valid.sum(-1)


def _per_query_k(top_k: int | torch.Tensor, b: int, l: int, device: torch.device) -> torch.Tensor:
    """Broadcast ``top_k`` (int, (L,) or (B, L)) to a (B, L) int64 tensor."""
    if isinstance(top_k, int):
        return torch.full((b, l), top_k, dtype=torch.long, device=device)
    if top_k.ndim == 1 and top_k.shape[0] == l:
        return top_k.to(device=device, dtype=torch.long).expand(b, l)
    if top_k.ndim == 2 and tuple(top_k.shape) == (b, l):
        return top_k.to(device=device, dtype=torch.long)
    raise ValueError(f"top_k tensor must have shape (L,)=({l},) or (B, L)=({b}, {l}), got {tuple(top_k.shape)}")


def select_topk(
    scores: torch.Tensor,
    top_k: int | torch.Tensor,
    *,
    q_start: int = 0,
    leak_future: bool = False,
) -> Selection:
    """Per query, the k highest-scoring tokens among s <= t (all past tokens when t+1 <= k).

    scores: (B, Lq, Lk) for queries q_start .. q_start+Lq-1 (future entries may be -inf or anything:
            they are masked here unless ``leak_future``)
    top_k:  int, or per-query (Lq,) / (B, Lq) integer tensor
    leak_future: reproduce the seed's bug: no causal guard, a query may select future tokens.
    returns Selection with K = max(top_k) slots.
    """
    check_tensor("scores", scores, 3)
    b, lq, lk = scores.shape
    check_top_k(top_k, lk)
    k_t = _per_query_k(top_k, b, lq, scores.device)
    k_max = int(k_t.max())
    t = torch.arange(q_start, q_start + lq, device=scores.device)
    scores = scores.float()
    if leak_future:
        available = torch.full_like(t, lk)
    else:
        future = torch.arange(lk, device=scores.device)[None, :] > t[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        available = t + 1
    idx = torch.topk(scores, k_max, dim=-1, sorted=True).indices
    n_sel = torch.minimum(k_t, available[None, :])  # (B, Lq)
    valid = torch.arange(k_max, device=scores.device)[None, None, :] < n_sel[..., None]
    idx = idx.masked_fill(~valid, -1)
    return Selection(idx=idx, valid=valid)


def indexer_topk(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int | torch.Tensor,
    *,
    chunk: int = 256,
    leak_future: bool = False,
) -> Selection:
    """Indexer scores + top-k in query chunks: memory O(L * chunk), never a full L x L tensor.

    q_idx: (B, L, H_I, d_I), k_idx: (B, L, d_I), w: (B, L, H_I); top_k: int or (L,)/(B, L) tensor.
    returns Selection with idx/valid of shape (B, L, max k).
    """
    check_positive_int("chunk", chunk)
    b, l = q_idx.shape[:2]
    check_top_k(top_k, l)
    k_t = _per_query_k(top_k, b, l, q_idx.device)
    parts_idx, parts_valid = [], []
    k_max = int(k_t.max())
    with torch.no_grad():
        for c0 in range(0, l, chunk):
            c1 = min(c0 + chunk, l)
            sc = indexer_scores(q_idx[:, c0:c1], k_idx, w[:, c0:c1], causal=not leak_future, q_start=c0)
            sel = select_topk(sc, k_t[:, c0:c1], q_start=c0, leak_future=leak_future)
            pad = k_max - sel.k_max
            if pad:  # a chunk whose own max k is smaller: pad to the global K
                sel = Selection(
                    idx=torch.nn.functional.pad(sel.idx, (0, pad), value=-1),
                    valid=torch.nn.functional.pad(sel.valid, (0, pad), value=False),
                )
            parts_idx.append(sel.idx)
            parts_valid.append(sel.valid)
    return Selection(idx=torch.cat(parts_idx, 1), valid=torch.cat(parts_valid, 1))


def selection_to_mask(sel: Selection, seq_len: int) -> torch.Tensor:
    """Dense boolean mask (B, L, seq_len) with True at the selected positions (small L, plots, the
    masked reference). Padded slots point nowhere: they are counted out, not scattered as False, since a
    False scattered to index 0 could overwrite a real selection of position 0."""
    check_tensor("sel.idx", sel.idx, 3)
    b, l, _ = sel.idx.shape
    counts = torch.zeros(b, l, seq_len, dtype=torch.int32, device=sel.idx.device)
    counts.scatter_add_(2, sel.idx.clamp(min=0), sel.valid.to(torch.int32))
    return counts > 0
