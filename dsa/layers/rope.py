"""Rotary position embeddings (rotate-half form), shared by attention and the indexer."""

from __future__ import annotations

import torch


def rope_cos_sin(
    seq_len: int, dim: int, base: float = 10000.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (L, dim) in float32 for positions 0..L-1; dim must be even."""
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Rotate the last dim of ``x`` by position. ``x``: (..., L, ..., r) with L at ``seq_dim``;
    ``cos``/``sin``: (L, r). Returns a tensor of x's shape and dtype."""
    r = x.shape[-1]
    shape = [1] * x.ndim
    shape[seq_dim] = x.shape[seq_dim]
    shape[-1] = r
    return _rotate(x, cos[: x.shape[seq_dim]].reshape(shape), sin[: x.shape[seq_dim]].reshape(shape))


def apply_rope_at(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, seq_dim: int
) -> torch.Tensor:
    """Rotate the last dim of ``x`` by per-sequence positions (decoding with a cache: each sequence of the batch
    continues from its own length). ``x``: (B, ..., T, ..., r) with T at ``seq_dim``; ``cos``/``sin``: the
    (max_len, r) tables; ``positions``: (B, T) integer. Returns a tensor of x's shape and dtype, the same values
    :func:`apply_rope` gives at those positions."""
    r = x.shape[-1]
    shape = [1] * x.ndim
    shape[0], shape[seq_dim], shape[-1] = positions.shape[0], positions.shape[1], r
    return _rotate(x, cos[positions].reshape(shape), sin[positions].reshape(shape))


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin in fp32, back to x's dtype; c, s broadcast against x."""
    xf = x.float()
    r = x.shape[-1]
    rotated = torch.cat([-xf[..., r // 2 :], xf[..., : r // 2]], dim=-1)
    return (xf * c + rotated * s).to(x.dtype)
