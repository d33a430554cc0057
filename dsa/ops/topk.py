"""Top-k selection of past tokens per query, with the causal guard (and the seeds' leak, on purpose).

A selection is a (B, L, K) int32 tensor of key positions, -1 in unused slots: the format FlashMLA and the
Hugging Face DeepSeek-V3.2 code use. The reference lists a query's positions by descending score; the
Triton top-k (one k) by ascending position. Both take the first positions among tied scores, so they select
the same set; the per-query-k threshold kernel may break ties otherwise.
"""

from __future__ import annotations

import torch

from ..checks import FLOAT_DTYPES, check_tensor, check_top_k
from .checks import check_finite, check_indexer, exporting, values_checked
from .dispatch import resolve_impl
from .indexer import indexer_scores_fp8_reference, indexer_scores_reference
from .memory import chunk_rows
from .quantize import IndexerFP8, check_precision, fp8_operands, quantize_indexer


def per_query_k(top_k: int | torch.Tensor, b: int, l: int, device: torch.device) -> torch.Tensor:
    """Broadcast ``top_k`` (int, (L,) or (B, L)) to a (B, L) int64 tensor."""
    if isinstance(top_k, int):
        return torch.full((b, l), top_k, dtype=torch.long, device=device)
    if top_k.ndim == 1 and top_k.shape[0] == l:
        return top_k.to(device=device, dtype=torch.long).expand(b, l)
    if top_k.ndim == 2 and tuple(top_k.shape) == (b, l):
        return top_k.to(device=device, dtype=torch.long)
    raise ValueError(f"top_k tensor must have shape (L,)=({l},) or (B, L)=({b}, {l}), got {tuple(top_k.shape)}")


def _k_max(top_k: int | torch.Tensor) -> int:
    return top_k if isinstance(top_k, int) else int(top_k.max())


def select_topk_reference(
    scores: torch.Tensor, top_k: int | torch.Tensor, *, q_start: int = 0, leak_future: bool = False
) -> torch.Tensor:
    """scores (B, Lq, Lk) for queries q_start.. -> (B, Lq, max k) int32 positions by descending score, tied
    scores by ascending position."""
    b, lq, lk = scores.shape
    k_t = per_query_k(top_k, b, lq, scores.device)
    k_max = _k_max(top_k)
    t = torch.arange(q_start, q_start + lq, device=scores.device)
    scores = scores.float()
    if leak_future:
        available = torch.full_like(t, lk)
    else:
        future = torch.arange(lk, device=scores.device)[None, :] > t[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        available = (t + 1).clamp(max=lk)
    if exporting():
        # the ONNX exporters have no stable sort; ONNX's TopK ranks equal values by lower index (its spec),
        # the stable sort's order, and onnxruntime follows it (tests/inference/test_export.py). The k_max
        # -inf columns padded on rank after every real position and let one graph take rows shorter than k.
        padded = torch.nn.functional.pad(scores, (0, k_max), value=float("-inf"))
        idx = torch.topk(padded, k_max, dim=-1).indices
    else:
        # a stable sort: ties (ReLU's exact zeros, -inf) go to the first positions, as the Triton top-k breaks
        # them, and a past -inf ranks before the masked future, which torch.topk's arbitrary order did not ensure
        idx = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k_max]
    n_sel = torch.minimum(k_t, available[None, :])  # (B, Lq)
    unused = torch.arange(k_max, device=scores.device)[None, None, :] >= n_sel[..., None]
    return idx.masked_fill(unused, -1).to(torch.int32)


def select_topk(
    scores: torch.Tensor,
    top_k: int | torch.Tensor,
    *,
    q_start: int = 0,
    leak_future: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Per query, the k highest-scoring tokens among s <= t (all past tokens when t+1 <= k).

    scores: (B, Lq, Lk) for queries q_start .. q_start+Lq-1 (future entries may hold anything: they are
            masked here unless ``leak_future``); NaN is refused (ValueError), -inf ranks last.
    top_k:  int, or per-query (Lq,) / (B, Lq) integer tensor (reference only)
    leak_future: reproduce the seeds' bug: no causal guard, a query may select future tokens.
    returns (B, Lq, max k) int32 positions, -1 in unused slots.
    """
    check_tensor("scores", scores, 3)
    b, lq, lk = scores.shape
    check_top_k(top_k, lk)
    if isinstance(q_start, bool) or not isinstance(q_start, int) or q_start < 0:
        raise ValueError(f"q_start must be an int >= 0, got {q_start!r}")
    if values_checked() and bool(scores.isnan().any()):
        raise ValueError("scores holds NaN values: the top-k cannot rank them")
    why = None if isinstance(top_k, int) else "the Triton top-k takes one k for every query"
    if resolve_impl(impl, scores, op="select_topk", unsupported=why) == "reference":
        return select_topk_reference(scores, top_k, q_start=q_start, leak_future=leak_future)
    rows = torch.full((lq,), lk, device=scores.device, dtype=torch.int32) if leak_future else \
        torch.arange(q_start + 1, q_start + lq + 1, device=scores.device, dtype=torch.int32).clamp(max=lk)
    from dsa.ops.kernels.radix_topk import radix_topk  # noqa: PLC0415 (checked above: no second pass of checks)

    return radix_topk(scores.float(), top_k, rows.expand(b, lq).contiguous(), out_dtype=torch.int32)


def _check_positions_args(scores: torch.Tensor, k: int, lengths: torch.Tensor | None) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1:
        raise ValueError("scores must be a tensor with at least one dimension (..., N)")
    check_tensor("scores", scores, scores.dim(), FLOAT_DTYPES)
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    check_top_k(k, scores.shape[-1], name="k")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError("lengths must be an integer tensor of shape scores.shape[:-1]")
        if tuple(lengths.shape) != tuple(scores.shape[:-1]):
            raise ValueError(f"lengths must have shape {tuple(scores.shape[:-1])} (scores.shape[:-1]), "
                             f"got {tuple(lengths.shape)}")
        if values_checked() and lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > scores.shape[-1]):
            raise ValueError(f"lengths must lie in [0, N={scores.shape[-1]}]")
    if values_checked() and bool(scores.isnan().any()):
        raise ValueError("scores holds NaN values: the top-k cannot rank them")


def causal_lengths(l: int, device: torch.device | str | None = None, batch: int | None = None) -> torch.Tensor:
    """Valid prefix of each row of a causal (L, L) score matrix: t + 1 for query t. (L,) or (batch, L) int32."""
    t = torch.arange(1, l + 1, device=device, dtype=torch.int32)
    return t if batch is None else t.expand(batch, l).contiguous()


def topk_positions_reference(scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """torch.topk over the valid prefix of each row, positions ascending. Shapes as :func:`topk_positions`
    (int64 out)."""
    n = scores.shape[-1]
    if lengths is None:
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k].sort(dim=-1).values
    lengths = lengths.to(scores.device)
    pos = torch.arange(n, device=scores.device)
    valid = pos < lengths[..., None]
    masked = scores.masked_fill(~valid, float("-inf"))
    # a stable sort ranks a valid -inf (position < length) before the invalid fills at the same value
    idx = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
    ok = torch.arange(k, device=scores.device) < lengths[..., None].clamp(max=k)
    # among a short row's k picks the invalid ones are the -inf fills: keep the valid positions only
    idx = torch.where(valid.gather(-1, idx), idx, torch.full_like(idx, n))
    idx = idx.sort(dim=-1).values
    return torch.where(ok, idx, torch.full_like(idx, -1))


def topk_positions(
    scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None, *, out_dtype: torch.dtype = torch.int64,
    impl: str = "auto", chunk: int | None = None,
) -> torch.Tensor:
    """Positions of the k largest scores of each row, among its first ``lengths`` entries.

    scores (..., N) float; k int in [1, N]; lengths (...) integer, default N (a causal L x L matrix:
    :func:`causal_lengths`). Returns (..., k) ``out_dtype`` positions in ascending order; a row with fewer
    than k valid entries returns all of them and -1 in the remaining slots. NaN is refused; -0.0 ties +0.0.
    Triton: the radix top-k (``dsa.ops.kernels.radix_topk``, ties: the first positions). chunk (an int
    >= k): Triton in two stages, each row's chunks of that many scores first (more programs for few long
    rows, as in decode); the same positions. The reference ignores it.
    """
    _check_positions_args(scores, k, lengths)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < k):
        raise ValueError(f"chunk must be an int >= k ({k}), got {chunk!r}")
    if resolve_impl(impl, scores, op="topk_positions") == "reference":
        return topk_positions_reference(scores, k, lengths).to(out_dtype)
    from dsa.ops.kernels.radix_topk import radix_topk, radix_topk_split  # noqa: PLC0415

    if chunk is None:
        return radix_topk(scores, k, lengths, out_dtype=out_dtype)
    return radix_topk_split(scores, k, lengths, chunk=chunk).to(out_dtype)


@torch.no_grad()
def indexer_topk_reference(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, top_k: int | torch.Tensor, *,
    leak_future: bool = False, chunk: int | None = None, precision: str = "bf16",
) -> torch.Tensor:
    """Indexer scores + top-k in query chunks. Shapes as :func:`indexer_topk`."""
    if exporting() and isinstance(top_k, int):
        # one block: a traced graph would freeze a chunk loop's bounds at the example's length
        sc = indexer_scores_reference(q_idx, k_idx, w, causal=not leak_future)
        return select_topk_reference(sc, top_k, leak_future=leak_future)
    b, l, h_i, _ = q_idx.shape
    z = quantize_indexer(q_idx, k_idx, w) if precision == "fp8" else None
    k_t = per_query_k(top_k, b, l, q_idx.device)
    k_max = _k_max(top_k)
    chunk = chunk or chunk_rows(b * h_i * l, l)  # (B, rows, H_I, L) float32 logits per chunk: never L x L
    parts = []
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        if z is None:
            sc = indexer_scores_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], causal=not leak_future, q_start=c0)
        else:
            zc = IndexerFP8(z.q[:, c0:c1], z.k, z.w[:, c0:c1], z.k_scale)
            sc = indexer_scores_fp8_reference(zc, causal=not leak_future, q_start=c0)
        sel = select_topk_reference(sc, k_t[:, c0:c1], q_start=c0, leak_future=leak_future)
        parts.append(torch.nn.functional.pad(sel, (0, k_max - sel.shape[-1]), value=-1))
    return torch.cat(parts, 1)


@torch.no_grad()
def indexer_topk(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int | torch.Tensor,
    *,
    leak_future: bool = False,
    impl: str = "auto",
    precision: str = "bf16",
) -> torch.Tensor:
    """The causal top-k of the indexer scores per query, never an L x L tensor.

    q_idx: (B, L, H_I, d_I), k_idx: (B, L, d_I), w: (B, L, H_I); top_k: int, or (L,) / (B, L) per-query k.
    returns (B, L, max k) int32 positions, -1 in unused slots (a query t keeps min(k_t, t+1) positions).
    Non-finite indexer inputs are refused (their scores could not be ranked). Triton: a fixed k selects in
    stored chunks of scores (radix top-k, ``dsa.ops.kernels.indexer_chunked``); a per-query k by a threshold
    search on recomputed score tiles (``dsa.ops.kernels.indexer``). The seeds' ``leak_future`` runs only in the
    reference.
    precision: 'bf16' (scores in the inputs' dtype) or 'fp8' (DeepSeek-V3.2's FP8 indexer: Hadamard rotation,
    e4m3 with per-token scales, :mod:`dsa.ops.quantize`; d_I a power of two). FP8 on Triton takes one k for
    every query; e4m3 products natively on sm_89+, the same values in bf16 on older GPUs
    (:func:`dsa.ops.quantize.fp8_dot_supported`).
    """
    check_indexer(q_idx, k_idx, w)
    check_top_k(top_k, q_idx.shape[1])
    fp8 = check_precision(precision) == "fp8"
    for name, t in (("q_idx", q_idx), ("k_idx", k_idx), ("w", w)):
        check_finite(name, t)
    why = "leak_future exists only in the reference" if leak_future else None
    if fp8 and not isinstance(top_k, int):
        why = why or "the FP8 Triton top-k takes one k for every query"
    if resolve_impl(impl, q_idx, k_idx, w, op="indexer_topk", unsupported=why) == "reference":
        return indexer_topk_reference(q_idx, k_idx, w, top_k, leak_future=leak_future, precision=precision)
    if fp8:
        from dsa.ops.kernels.registered import indexer_topk_fp8_op  # noqa: PLC0415

        z = quantize_indexer(q_idx, k_idx, w)
        return indexer_topk_fp8_op(*fp8_operands(z), z.w, z.k_scale, top_k)
    if isinstance(top_k, int):
        from dsa.ops.kernels.registered import indexer_topk_op as kernel  # noqa: PLC0415

        return kernel(q_idx, k_idx, w, top_k)
    from dsa.ops.kernels.indexer import indexer_topk_threshold  # noqa: PLC0415

    return indexer_topk_threshold(q_idx, k_idx, w, per_query_k(top_k, *q_idx.shape[:2], q_idx.device))


def selection_counts(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    """idx (B, L, K) -> (B, L, seq_len) int32: how often each position is selected (a repeated position
    counts as often as it appears, as the gather reference and the kernels count it)."""
    check_tensor("idx", idx, 3)
    b, l, _ = idx.shape
    counts = torch.zeros(b, l, seq_len, dtype=torch.int32, device=idx.device)
    return counts.scatter_add_(2, idx.long().clamp(min=0), (idx >= 0).to(torch.int32))


def selection_to_mask(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    """idx (B, L, K) -> dense bool mask (B, L, seq_len), True at the selected positions (small L, plots,
    the masked reference). Unused slots are counted out, not scattered as False: a False scattered to
    position 0 could overwrite a real selection of position 0."""
    return selection_counts(idx, seq_len) > 0
