"""One attention layer's inference cache: the keys, values and indexer keys of every token seen so far.

The layers write the new tokens' rows at their positions and read the rows before them; the model keeps the
per-sequence lengths (:class:`dsa.model.cache.ModelCache`). Layouts, rows at absolute positions 0..max_len-1:

- MHA / GQA / MQA: k (B, H_kv, max_len, d_qk) after RoPE, v (B, H_kv, max_len, d_v);
- MLA: DeepSeek's latent cache, one row of kv_rank + rope_dim per token (the normalised latent, then the
  rotated RoPE key), k (B, 1, max_len, kv_rank + rope_dim); the values are its first kv_rank dims (``v`` None);
- DSA: also the indexer keys k_idx (B, max_len, d_I) (bf16 or the model's dtype; an FP8 cache would store
  them here with their scales and score them in :func:`dsa.ops.decode_indexer_topk`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerCache:
    k: torch.Tensor  # (B, H_kv, max_len, d_qk)
    v: torch.Tensor | None  # (B, H_kv, max_len, d_v); None: MLA, values = k[..., :v_dim]
    v_dim: int
    k_idx: torch.Tensor | None = None  # (B, max_len, d_I), DSA only

    def values(self) -> torch.Tensor:
        """(B, H_kv, max_len, d_v): v, or the latent part of MLA's rows (a view, no copy)."""
        return self.v if self.v is not None else self.k[..., : self.v_dim]

    def write(self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor,
              k_idx: torch.Tensor | None = None) -> None:
        """Store the new rows: k (B, H_kv, T, d_qk), v (B, H_kv, T, d_v) (ignored for MLA: part of k),
        k_idx (B, T, d_I), each token j of sequence b at positions[b, j] ((B, T) integer)."""
        bi = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k.transpose(1, 2)[bi, positions] = k.transpose(1, 2).to(self.k.dtype)
        if self.v is not None:
            self.v.transpose(1, 2)[bi, positions] = v.transpose(1, 2).to(self.v.dtype)
        if self.k_idx is not None:
            self.k_idx[bi, positions] = k_idx.to(self.k_idx.dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_idx) if t is not None)
