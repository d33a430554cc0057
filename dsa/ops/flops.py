"""FLOP counts of the indexer and of attention, per causal triangle (projections excluded)."""

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
