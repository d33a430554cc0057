"""FLOP counts of the indexer and of attention, per causal triangle (projections excluded), and the HBM bytes
of the indexer top-k over stored scores."""

from __future__ import annotations


def indexer_flops(seq_len: int, n_heads: int, head_dim: int, causal: bool = True) -> float:
    """Forward FLOPs of the indexer scores over a causal L x L triangle."""
    pairs = seq_len * (seq_len + 1) / 2 if causal else seq_len * seq_len
    return pairs * (2 * n_heads * head_dim + 2 * n_heads)


def attention_flops(seq_len: int, n_heads: int, head_dim: int, keys_per_query: float | None = None,
                    v_head_dim: int | None = None) -> float:
    """Forward FLOPs of softmax attention (QK^T and PV): 2*H*(d_qk + d_v) per (query, key) pair.

    ``keys_per_query`` None means dense causal (L(L+1)/2 pairs); a number k means sum_t min(t+1, k) pairs."""
    if keys_per_query is None:
        pairs = seq_len * (seq_len + 1) / 2
    else:
        k = min(keys_per_query, seq_len)
        pairs = k * (k + 1) / 2 + (seq_len - k) * k
    return pairs * 2 * n_heads * (head_dim + (v_head_dim or head_dim))


def attention_pair_flops(n_heads: int, d_qk: int, d_v: int, backward: bool = False) -> int:
    """FLOPs per causal (query, key) pair of softmax attention. Forward: S = QKᵀ and O = PV, 2·H·(d_qk + d_v).
    Backward (flash-style, S recomputed): S, dK, dQ over d_qk and dP, dV over d_v, 2·H·(3·d_qk + 2·d_v)."""
    return 2 * n_heads * ((3 * d_qk + 2 * d_v) if backward else (d_qk + d_v))


def sparse_pair_bytes(n_kv_heads: int, d_qk: int, d_v: int, backward: bool = False, elem: int = 2) -> int:
    """Device-memory bytes per selected (query, key) pair of a gathering sparse attention (each query gathers
    its own rows; the heads of a group share them): one K and one V row per KV head (elem bytes each).
    Backward: the rows gathered again, plus fp32 read-modify-write of the dK/dV rows (atomics)."""
    row = n_kv_heads * (d_qk + d_v)
    return row * elem + (row * elem + 2 * 4 * row if backward else 0)


def indexer_pair_flops(n_heads: int, head_dim: int) -> int:
    """Indexer FLOPs per causal (query, key) pair: the H_I dot products of d_I and the weighted head sum."""
    return 2 * n_heads * head_dim + 2 * n_heads


def topk_bytes_per_row(n: int, k: int, *, sample: int = 512, digit_rounds: int = 2) -> dict[str, float]:
    """HBM bytes the chunked indexer top-k moves for one query row of n = t + 1 valid fp32 scores (the sampled
    path of ``dsa.ops.kernels.radix_topk``; a cost model, not a measurement).

    score_write: the score pass stores the row (4 n); then the selection: sample_read (SAMPLE / 8 runs of 8
    keys, one 32-byte sector each), row_read (the bracket gather reads the row once: 4 n), cand_write (the
    candidates, about k plus the expected bracket, key and position: 8 bytes each), cand_read (``digit_rounds``
    8-bit histogram rounds over their keys plus one pass over keys and the selected positions), out_write
    (4 k). A row with n <= k only writes its positions. ``one_read`` = 4 n; ``selection`` = everything but
    the score write; ``selection_over_read`` = selection / one_read."""
    if n <= k:
        sel = 4.0 * n
        return dict(score_write=4.0 * n, sample_read=0.0, row_read=0.0, cand_write=0.0, cand_read=0.0,
                    out_write=sel, one_read=4.0 * n, selection=sel, selection_over_read=1.0)
    r = k * sample / n  # the sample rank where the k-th score is expected
    bracket = min(n, (2 * (3 * r**0.5 + 3) + 2) / sample * n)
    cand = min(n, k + bracket)
    parts = dict(score_write=4.0 * n, sample_read=32.0 * sample / 8, row_read=4.0 * n, cand_write=8.0 * cand,
                 cand_read=4.0 * cand * digit_rounds + 4.0 * cand + 4.0 * k, out_write=4.0 * k)
    sel = sum(v for name, v in parts.items() if name != "score_write")
    return dict(parts, one_read=4.0 * n, selection=sel, selection_over_read=sel / (4.0 * n))


def fused_topk_bytes_per_row(n: int, k: int, *, sample: int = 512, digit_rounds: int = 2) -> dict[str, float]:
    """HBM bytes of the selection fused into the score pass (``dsa.ops.kernels.indexer_fused``) for one row of
    n = t + 1 scores (a cost model): no score is stored; the pass appends the c candidates (about k plus the
    bracket of a ``sample``-key sample) to a list, position and score (cand_write = 8 c), the radix top-k
    selects in the c scores (:func:`topk_bytes_per_row` of c, its ``selection``), and the k positions are read
    back from the list (4 k). Same keys as :func:`topk_bytes_per_row` (score_write 0; ``one_read`` = 4 n of
    the row that is never stored)."""
    if n <= k:
        return topk_bytes_per_row(n, k, sample=sample, digit_rounds=digit_rounds) | {"score_write": 0.0}
    r = k * sample / n
    cand = min(n, k + (2 * (3 * r**0.5 + 3) + 2) / sample * n)
    inner = topk_bytes_per_row(int(cand), k, sample=sample, digit_rounds=digit_rounds)
    parts = dict(score_write=0.0, sample_read=inner["sample_read"], row_read=inner["row_read"],
                 cand_write=8.0 * cand + inner["cand_write"], cand_read=inner["cand_read"] + 4.0 * k,
                 out_write=inner["out_write"])
    sel = sum(v for name, v in parts.items() if name != "score_write")
    return dict(parts, one_read=4.0 * n, selection=sel, selection_over_read=sel / (4.0 * n))


def topk_bytes(seq_len: int, k: int, *, sample: int = 512, digit_rounds: int = 2, fused: bool = False
               ) -> dict[str, float]:
    """:func:`topk_bytes_per_row` (``fused``: :func:`fused_topk_bytes_per_row`) summed over the rows of a
    causal L x L triangle (rows t = 0 .. L-1, evaluated at 64 evenly spaced rows and scaled: the terms are
    smooth in n)."""
    pts = [max(1, round((i + 0.5) * seq_len / 64)) for i in range(64)]
    per_row = fused_topk_bytes_per_row if fused else topk_bytes_per_row
    rows = [per_row(n, k, sample=sample, digit_rounds=digit_rounds) for n in pts]
    tot = {key: sum(r[key] for r in rows) * seq_len / len(pts) for key in rows[0] if key != "selection_over_read"}
    tot["selection_over_read"] = tot["selection"] / tot["one_read"]
    return tot
