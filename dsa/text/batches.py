"""Deterministic language-model batches, so dense and sparse runs see exactly the same data.

Training batches are random windows of the token stream, but the randomness depends ONLY on
``(seed, step)``: each call builds a fresh ``torch.Generator`` seeded from a hash of the pair. So two
samplers with the same seed give identical batches whatever else happened (other RNG use, the order in
which steps are asked for, a resumed run, another device). Evaluation batches are not random at all:
evenly spaced windows over the whole split.
"""

from __future__ import annotations

import hashlib

import torch

from dsa.checks import check_positive_int


def _check_tokens(tokens: torch.Tensor) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must have an integer dtype, got {tokens.dtype}")
    return tokens.long()


def _check_seq_len(seq_len: int, n_tokens: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TypeError(f"seq_len must be an int, got {type(seq_len).__name__}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    # A window needs seq_len inputs plus one more token for the last target.
    if seq_len + 1 > n_tokens:
        raise ValueError(f"seq_len + 1 must be <= len(tokens)={n_tokens}, got seq_len={seq_len}")


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = tokens[s : s+seq_len], y = tokens[s+1 : s+seq_len+1] for each start s. Both (len(starts), seq_len)."""
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    chunk = tokens[idx.to(tokens.device)]
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed that depends only on (seed, step).

    A hash rather than ``seed + step``: with addition, (seed=1, step=0) and (seed=0, step=1) would give the
    same batch, so two "different seed" runs would share most of their data, shifted by one step.
    """
    digest = hashlib.blake2b(f"dsa-batches:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class BatchSampler:
    """Random training windows, a pure function of (seed, step).

    tokens: (N,) integer token stream (kept as int64, on its device)
    seq_len: window length L; needs L + 1 <= N
    batch_size: B
    seed: any int
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int) -> None:
        self.tokens = _check_tokens(tokens)
        _check_seq_len(seq_len, self.tokens.numel())
        check_positive_int("batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # Number of valid window starts: s in [0, N - L - 1] so that s + L (the last target) exists.
        self.n_starts = self.tokens.numel() - seq_len

    def starts(self, step: int) -> torch.Tensor:
        """(B,) int64 window starts of ``step`` (drawn with replacement, on the CPU)."""
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        # A fresh CPU generator per call: nothing outside (seed, step) can influence the draw, and CPU
        # generation gives the same numbers whatever device the tokens live on.
        g = torch.Generator(device="cpu").manual_seed(step_seed(self.seed, step))
        return torch.randint(0, self.n_starts, (self.batch_size,), generator=g, dtype=torch.long)

    def batch(self, step: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, L) int64, y[:, t] = x[:, t+1] for t < L-1 (the next token of the stream)."""
        x, y = _windows(self.tokens, self.starts(step), self.seq_len)
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def __repr__(self) -> str:
        return (f"BatchSampler(n_tokens={self.tokens.numel()}, seq_len={self.seq_len}, "
                f"batch_size={self.batch_size}, seed={self.seed})")


def eval_starts(n_tokens: int, seq_len: int, n_windows: int) -> torch.Tensor:
    """(n_windows,) int64 evenly spaced window starts covering [0, n_tokens - seq_len - 1]."""
    last = n_tokens - seq_len - 1
    if n_windows == 1:
        return torch.zeros(1, dtype=torch.long)
    # Integer arithmetic (no float rounding): start_i = floor(i * last / (n - 1)), first 0, final `last`.
    i = torch.arange(n_windows, dtype=torch.long)
    return (i * last) // (n_windows - 1)


def eval_batches(
    tokens: torch.Tensor, seq_len: int, batch_size: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of ``n_batches`` (x, y) pairs, each (B, L) int64, no randomness involved.

    The B * n_batches windows are evenly spaced over the whole stream (first starts at 0, last ends at
    the final token), so every evaluation sees the same text. When B * n_batches * L exceeds the stream
    the windows overlap, which is harmless for a loss estimate.
    """
    tokens = _check_tokens(tokens)
    _check_seq_len(seq_len, tokens.numel())
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_batches", n_batches)
    starts = eval_starts(tokens.numel(), seq_len, batch_size * n_batches)
    x, y = _windows(tokens, starts, seq_len)
    return [(x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size])
            for i in range(n_batches)]
