"""Adaptive top-k: a per-query k chosen from the indexer's own score distribution (the seeds' exp3 question).

Policies, each mapping indexer scores to a (B, L) integer k in [k_min, t+1]:
- ``fixed``:   k = min(top_k, t+1) (the baseline)
- ``mass``:    the smallest k whose top-k covers ``mass`` of softmax(I[t, :t+1])
- ``entropy``: k = ceil(exp(H(softmax(I[t, :t+1])))), the distribution's effective number of tokens,
               scaled by ``entropy_scale``
Both adaptive rules are clipped to [k_min, k_max]; k_max bounds the cost (and the K of the gather).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_positive_int
from .checks import check_finite, check_indexer
from .indexer import indexer_scores_reference

POLICIES = ("fixed", "mass", "entropy")


@dataclass(frozen=True)
class KPolicy:
    name: str = "fixed"
    top_k: int = 64  # the fixed k, and the default k_max of adaptive rules
    mass: float = 0.9
    entropy_scale: float = 1.0
    k_min: int = 1
    k_max: int | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"k policy must be one of {POLICIES}, got {self.name!r}")
        check_positive_int("top_k", self.top_k)
        check_positive_int("k_min", self.k_min)
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"mass must be in (0, 1], got {self.mass}")
        if self.entropy_scale <= 0:
            raise ValueError(f"entropy_scale must be > 0, got {self.entropy_scale}")
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")


def k_from_scores(scores: torch.Tensor, policy: KPolicy, q_start: int = 0) -> torch.Tensor:
    """Per-query k from indexer scores.

    scores: (B, C, Lk) float, queries q_start .. q_start+C-1, future entries -inf (causal).
    returns (B, C) int64 with 1 <= k <= t+1.
    """
    b, c, lk = scores.shape
    t = torch.arange(q_start, q_start + c, device=scores.device)
    avail = (t + 1).clamp(max=lk)[None, :].expand(b, c)
    k_max = min(policy.k_max or policy.top_k, lk)
    if policy.name == "fixed":
        return torch.minimum(torch.full_like(avail, min(policy.top_k, lk)), avail)
    p = scores.float().softmax(-1)
    if policy.name == "mass":
        srt = p.sort(-1, descending=True).values
        # smallest k with cumulative mass >= target: count the prefixes still below it, plus one
        k = (srt.cumsum(-1) < policy.mass - 1e-6).sum(-1) + 1
    else:
        ent = -(p * p.clamp(min=1e-30).log()).sum(-1)
        k = torch.ceil(ent.exp() * policy.entropy_scale).long()
    k = k.clamp(min=policy.k_min, max=k_max)
    return torch.minimum(k, avail)


@torch.no_grad()
def adaptive_k(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, policy: KPolicy, *, chunk: int = 256
) -> torch.Tensor:
    """Per-query k for a whole sequence, in query chunks (memory O(L * chunk)).

    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) -> (B, L) int64.
    """
    check_positive_int("chunk", chunk)
    check_indexer(q_idx, k_idx, w)
    for name, t in (("q_idx", q_idx), ("k_idx", k_idx), ("w", w)):
        check_finite(name, t)
    l = q_idx.shape[1]
    parts = []
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        sc = indexer_scores_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], q_start=c0)
        parts.append(k_from_scores(sc, policy, q_start=c0))
    return torch.cat(parts, 1)
