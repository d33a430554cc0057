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
    c = cos[: x.shape[seq_dim]].reshape(shape)
    s = sin[: x.shape[seq_dim]].reshape(shape)
    xf = x.float()
    x1, x2 = xf[..., : r // 2], xf[..., r // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * c + rotated * s).to(x.dtype)


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
    c = cos[positions].reshape(shape)
    s = sin[positions].reshape(shape)
    xf = x.float()
    x1, x2 = xf[..., : r // 2], xf[..., r // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * c + rotated * s).to(x.dtype)
