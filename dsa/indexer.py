"""The lightning indexer: I[t,s] = sum_j w[t,j] * ReLU(q_I[t,j] . k_I[s]).

One indexer key per token, shared by all H_I indexer heads (MQA-style, as in DeepSeek-V3.2), per-token
head weights ``w`` from a linear layer of the hidden state, optional RoPE on the first ``rope_dim`` dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .checks import FLOAT_DTYPES, check_same, check_tensor
from .rope import apply_rope


def indexer_scores(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    *,
    causal: bool = True,
    q_start: int = 0,
) -> torch.Tensor:
    """Indexer scores for a block of queries against all keys, in float32.

    q_idx: (B, Lq, H_I, d_I) indexer queries for positions q_start .. q_start+Lq-1
    k_idx: (B, Lk, d_I) one indexer key per token
    w:     (B, Lq, H_I) per-token head weights
    returns (B, Lq, Lk) float32; with ``causal`` the entries s > t are -inf (never selectable).
    """
    check_tensor("q_idx", q_idx, 4, FLOAT_DTYPES)
    check_tensor("k_idx", k_idx, 3, FLOAT_DTYPES)
    check_tensor("w", w, 3, FLOAT_DTYPES)
    check_same("q_idx.shape[-1] (d_I)", q_idx.shape[-1], "k_idx.shape[-1]", k_idx.shape[-1])
    check_same("w.shape[-1] (H_I)", w.shape[-1], "q_idx.shape[2]", q_idx.shape[2])
    logits = torch.einsum("bqhd,bkd->bqhk", q_idx.float(), k_idx.float()).relu_()
    scores = torch.einsum("bqhk,bqh->bqk", logits, w.float())
    if causal:
        lq, lk = scores.shape[1], scores.shape[2]
        t = torch.arange(q_start, q_start + lq, device=scores.device)[:, None]
        s = torch.arange(lk, device=scores.device)[None, :]
        scores = scores.masked_fill(s > t, float("-inf"))
    return scores


@dataclass(frozen=True)
class IndexerConfig:
    d_model: int
    n_heads: int = 4  # H_I
    head_dim: int = 32  # d_I
    rope_dim: int = 16  # RoPE on the first rope_dim of d_I dims (0 = none); V3.2 uses 64 of 128

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"indexer {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rope_dim <= self.head_dim or self.rope_dim % 2:
            raise ValueError(f"indexer rope_dim must be even and in [0, head_dim], got {self.rope_dim}")


class LightningIndexer(nn.Module):
    """Projects hidden states to indexer queries, the shared indexer key and the head weights."""

    def __init__(self, cfg: IndexerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.head_dim, bias=False)
        # V3.2 normalises the shared key; it keeps ReLU logits on one scale across tokens.
        self.k_norm = nn.LayerNorm(cfg.head_dim)
        self.wh = nn.Linear(cfg.d_model, cfg.n_heads, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) -> q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I).

        ``cos``/``sin``: (L, rope_dim) tables, needed when rope_dim > 0.
        """
        b, l, _ = x.shape
        c = self.cfg
        q = self.wq(x).view(b, l, c.n_heads, c.head_dim)
        k = self.k_norm(self.wk(x))
        if c.rope_dim:
            if cos is None or sin is None:
                raise ValueError("cos/sin tables are required when the indexer's rope_dim > 0")
            r = c.rope_dim
            q = torch.cat([apply_rope(q[..., :r], cos, sin, seq_dim=1), q[..., r:]], dim=-1)
            k = torch.cat([apply_rope(k[..., :r], cos, sin, seq_dim=1), k[..., r:]], dim=-1)
        # Scale as V3.2 does: H_I^-1/2 on the head weights and the softmax scale d_I^-1/2.
        w = self.wh(x) * (c.n_heads**-0.5 * c.head_dim**-0.5)
        return q, k, w

    def num_flops_per_token_pair(self) -> int:
        """Multiply-adds per (query, key) pair of the score itself: H_I dot products of d_I, plus the weights."""
        return 2 * self.cfg.n_heads * self.cfg.head_dim + 2 * self.cfg.n_heads


def indexer_flops(seq_len: int, n_heads: int, head_dim: int, causal: bool = True) -> float:
    """Forward FLOPs of the indexer scores over a causal L x L triangle (projections excluded)."""
    pairs = seq_len * (seq_len + 1) / 2 if causal else seq_len * seq_len
    return pairs * (2 * n_heads * head_dim + 2 * n_heads)


def attention_flops(seq_len: int, n_heads: int, head_dim: int, keys_per_query: float | None = None) -> float:
    """Forward FLOPs of softmax attention (QK^T and PV): 4*H*d per (query, key) pair.

    ``keys_per_query`` None means dense causal (L(L+1)/2 pairs); a number k means L*k pairs (sparse).
    """
    pairs = seq_len * (seq_len + 1) / 2 if keys_per_query is None else seq_len * keys_per_query
    return pairs * 4 * n_heads * head_dim


__all__ = [
    "IndexerConfig",
    "LightningIndexer",
    "attention_flops",
    "indexer_flops",
    "indexer_scores",
]

