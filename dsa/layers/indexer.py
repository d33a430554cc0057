"""The lightning indexer module: hidden states -> indexer queries, one shared key per token, head weights.

One indexer key per token, shared by all H_I indexer heads (MQA-style, as in DeepSeek-V3.2), per-token head
weights ``w`` from a linear layer of the hidden state, optional RoPE on the first ``rope_dim`` dims. The
scores themselves are the op :func:`dsa.ops.indexer_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsa.layers.rope import apply_rope, apply_rope_at


@dataclass(frozen=True)
class IndexerConfig:
    d_model: int
    n_heads: int = 4  # H_I
    head_dim: int = 32  # d_I
    rope_dim: int = 16  # RoPE on the first rope_dim of d_I dims (0 = none); V3.2 uses 64 of 128

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"indexer {name} must be an int >= 1, got {v!r}")
        if not 0 <= self.rope_dim <= self.head_dim or self.rope_dim % 2:
            raise ValueError(f"indexer rope_dim must be even and in [0, head_dim={self.head_dim}], got {self.rope_dim}")


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
        self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) -> q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I).

        ``cos``/``sin``: (L, rope_dim) tables, needed when rope_dim > 0; with ``positions`` ((B, L) integer,
        decoding with a cache) the whole tables, indexed at those positions.
        """
        b, l, _ = x.shape
        c = self.cfg
        q = self.wq(x).view(b, l, c.n_heads, c.head_dim)
        k = self.k_norm(self.wk(x))
        if c.rope_dim:
            if cos is None or sin is None:
                raise ValueError("cos/sin tables are required when the indexer's rope_dim > 0")
            r = c.rope_dim
            if positions is None:
                q = torch.cat([apply_rope(q[..., :r], cos, sin, seq_dim=1), q[..., r:]], dim=-1)
                k = torch.cat([apply_rope(k[..., :r], cos, sin, seq_dim=1), k[..., r:]], dim=-1)
            else:
                q = torch.cat([apply_rope_at(q[..., :r], cos, sin, positions, seq_dim=1), q[..., r:]], dim=-1)
                k = torch.cat([apply_rope_at(k[..., :r], cos, sin, positions, seq_dim=1), k[..., r:]], dim=-1)
        # Scale as V3.2 does: H_I^-1/2 on the head weights and the softmax scale d_I^-1/2.
        w = self.wh(x) * (c.n_heads**-0.5 * c.head_dim**-0.5)
        return q, k, w
