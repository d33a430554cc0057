"""One attention layer's inference cache: the keys, values and indexer keys of every token seen so far.

The layers write the new tokens' rows at their positions and read the rows before them; the model keeps the
per-sequence lengths (:class:`dsa.model.cache.ModelCache`). Layouts, rows at absolute positions 0..max_len-1:

- MHA / GQA / MQA: k (B, H_kv, max_len, d_qk) after RoPE, v (B, H_kv, max_len, d_v);
- MLA: DeepSeek's latent cache, one row of kv_rank + rope_dim per token (the normalised latent, then the
  rotated RoPE key), k (B, 1, max_len, kv_rank + rope_dim); the values are its first kv_rank dims (``v`` None);
- DSA: also the indexer keys k_idx (B, max_len, d_I), in the model's dtype; with the FP8 indexer
  (``indexer_precision='fp8'``) as DeepSeek-V3.2 caches them: Hadamard-rotated e4m3 values (1 byte each; their
  exact bf16 copy on a GPU without e4m3, :func:`dsa.ops.quantize.fp8_cache_dtype`) and one fp32 scale per
  token in k_idx_scale (B, max_len), quantized once when written and scored as they are by
  :func:`dsa.ops.decode_indexer_topk` (its ``k_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.quantize import quantize_indexer_keys


@dataclass
class LayerCache:
    k: torch.Tensor  # (B, H_kv, max_len, d_qk)
    v: torch.Tensor | None  # (B, H_kv, max_len, d_v); None: MLA, values = k[..., :v_dim]
    v_dim: int
    k_idx: torch.Tensor | None = None  # (B, max_len, d_I), DSA only
    k_idx_scale: torch.Tensor | None = None  # (B, max_len) float32: the FP8 indexer's per-token key scales

    def values(self) -> torch.Tensor:
        """(B, H_kv, max_len, d_v): v, or the latent part of MLA's rows (a view, no copy)."""
        return self.v if self.v is not None else self.k[..., : self.v_dim]

    def write(self, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor,
              k_idx: torch.Tensor | None = None) -> None:
        """Store the new rows: k (B, H_kv, T, d_qk), v (B, H_kv, T, d_v) (ignored for MLA: part of k),
        k_idx (B, T, d_I) (quantized here when the cache is FP8), each token j of sequence b at
        positions[b, j] ((B, T) integer)."""
        bi = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k.transpose(1, 2)[bi, positions] = k.transpose(1, 2).to(self.k.dtype)
        if self.v is not None:
            self.v.transpose(1, 2)[bi, positions] = v.transpose(1, 2).to(self.v.dtype)
        if self.k_idx is not None and self.k_idx_scale is None:
            self.k_idx[bi, positions] = k_idx.to(self.k_idx.dtype)
        elif self.k_idx is not None:
            self._write_fp8_keys(k_idx, bi, positions)

    def _write_fp8_keys(self, k_idx: torch.Tensor, bi: torch.Tensor, positions: torch.Tensor) -> None:
        """k_idx (B, T, d_I) rotated and quantized, its e4m3 rows and scales stored at positions (B, T)."""
        vals, scale = quantize_indexer_keys(k_idx)  # per token: the rows the full forward's quantization makes
        stored = vals.to(self.k_idx.dtype)  # e4m3, or its bf16 copy (exact)
        if stored.dtype.itemsize == 1:  # as bytes: index_put on one-byte floats is not on every device
            self.k_idx.view(torch.uint8)[bi, positions] = stored.view(torch.uint8)
        else:
            self.k_idx[bi, positions] = stored
        self.k_idx_scale[bi, positions] = scale

    def indexer_keys(self, used: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``used`` rows of the indexer keys (B, used, d_I) and their scales (B, used) (None: not FP8)."""
        scale = None if self.k_idx_scale is None else self.k_idx_scale[:, :used]
        return self.k_idx[:, :used], scale

    def nbytes(self) -> int:
        tensors = (self.k, self.v, self.k_idx, self.k_idx_scale)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
