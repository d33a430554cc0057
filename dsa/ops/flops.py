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
