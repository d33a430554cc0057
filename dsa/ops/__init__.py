"""The public ops of DSA: one entry per op, each with ``impl="auto" | "reference" | "triton"``.

``auto`` runs the Triton kernel on CUDA tensors and the plain-PyTorch reference elsewhere (the rule lives in
:mod:`dsa.ops.dispatch`); the references are the specification and the kernels (``dsa.ops.kernels``) never
import them. Inputs are checked here, the same for every impl.

Layouts: q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v); indexer q_idx (B, L, H_I, d_I),
k_idx (B, L, d_I), w (B, L, H_I); selections idx (B, L, K) int32 with -1 in unused slots. The decode ops
(:mod:`dsa.ops.decode`) take T new queries at positions q_pos (B, T) against a cache of S rows.
"""

from .adaptive import KPolicy, adaptive_k, k_from_scores
from .attention import DSAResult, dense_attention, dsa_attention, expand_kv, seed_masked_attention, sparse_attention
from .decode import decode_dense_attention, decode_indexer_scores, decode_indexer_topk, decode_sparse_attention
from .dispatch import IMPLS, resolve_impl
from .flops import attention_flops, indexer_flops
from .indexer import indexer_scores, indexer_scores_at
from .indexer_loss import dense_indexer_kl, indexer_recall, sparse_indexer_kl
from .topk import causal_lengths, indexer_topk, select_topk, selection_to_mask, topk_positions

__all__ = [
    "IMPLS",
    "DSAResult",
    "KPolicy",
    "adaptive_k",
    "attention_flops",
    "causal_lengths",
    "dense_attention",
    "decode_dense_attention",
    "decode_indexer_scores",
    "decode_indexer_topk",
    "decode_sparse_attention",
    "dense_indexer_kl",
    "dsa_attention",
    "expand_kv",
    "indexer_flops",
    "indexer_recall",
    "indexer_scores",
    "indexer_scores_at",
    "indexer_topk",
    "k_from_scores",
    "resolve_impl",
    "seed_masked_attention",
    "select_topk",
    "selection_to_mask",
    "sparse_attention",
    "sparse_indexer_kl",
    "topk_positions",
]
