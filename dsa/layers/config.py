"""Configuration of the attention layers (dataclasses, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ops.dispatch import check_impl
from ..ops.quantize import PRECISIONS

K_POLICIES = ("fixed", "mass", "entropy")
MLA_DENSE_MODES = ("mha", "mqa")


def _positive(owner: str, **values: int | None) -> None:
    for name, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{owner} {name} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class MLAConfig:
    """DeepSeek's multi-head latent attention: one latent K/V of ``kv_rank`` dims per token plus a shared
    RoPE key of ``rope_dim``; per head a no-RoPE query/key part of ``nope_dim`` and values of ``v_dim``.
    V3.2: kv_rank 512, rope_dim 64, nope_dim 128, v_dim 128, q_rank 1536. ``dense_mode``: how dense
    attention runs it, 'mha' (per-head keys of nope_dim + rope_dim and values of v_dim, DeepSeek's prefill)
    or 'mqa' (the absorbed form: every head on the one latent K/V, d_qk = kv_rank + rope_dim, d_v = kv_rank,
    which DSA always uses). Both compute the same function."""

    kv_rank: int = 512
    rope_dim: int = 64
    nope_dim: int = 128
    v_dim: int = 128
    q_rank: int | None = None  # None: queries straight from the hidden state
    dense_mode: str = "mha"

    def __post_init__(self) -> None:
        _positive("mla", kv_rank=self.kv_rank, rope_dim=self.rope_dim, nope_dim=self.nope_dim, v_dim=self.v_dim,
                  q_rank=self.q_rank)
        if self.rope_dim % 2:
            raise ValueError(f"mla rope_dim must be even, got {self.rope_dim}")
        if self.dense_mode not in MLA_DENSE_MODES:
            raise ValueError(f"mla dense_mode must be one of {MLA_DENSE_MODES}, got {self.dense_mode!r}")


@dataclass(frozen=True)
class AttentionConfig:
    """The attention layer's shape. MHA: n_kv_heads = n_heads; GQA: fewer; MQA: 1; MLA: ``mla`` set (then
    n_kv_heads, head_dim and v_head_dim do not apply). Head counts and sizes are independent of d_model."""

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None  # None = n_heads
    head_dim: int | None = None  # None = d_model // n_heads
    v_head_dim: int | None = None  # None = head_dim
    mla: MLAConfig | None = None
    max_seq_len: int = 4096
    rope_base: float = 10000.0
    impl: str = "auto"

    def __post_init__(self) -> None:
        _positive("attention", d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                  head_dim=self.head_dim, v_head_dim=self.v_head_dim, max_seq_len=self.max_seq_len)
        check_impl(self.impl)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}), "
                             "or give head_dim")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if self.mla is None and self.qk_dim % 2:
            raise ValueError(f"head_dim ({self.qk_dim}) must be even for RoPE")

    @property
    def kv_heads(self) -> int:
        return 1 if self.mla is not None else (self.n_kv_heads or self.n_heads)

    @property
    def qk_dim(self) -> int:
        """Per-head query/key size of the standard layouts (MLA: see MLAConfig)."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def v_dim(self) -> int:
        return self.mla.v_dim if self.mla is not None else (self.v_head_dim or self.qk_dim)

    @property
    def layout(self) -> str:
        if self.mla is not None:
            return "mla"
        return "mha" if self.kv_heads == self.n_heads else ("mqa" if self.kv_heads == 1 else "gqa")


@dataclass(frozen=True)
class SparseConfig:
    """DSA's selection: the indexer's size, k and its policy (``dsa.ops.adaptive``)."""

    top_k: int = 2048
    indexer_heads: int = 4
    indexer_dim: int = 64
    indexer_rope_dim: int | None = None  # None = half of indexer_dim (V3.2: 64 of 128)
    k_policy: str = "fixed"  # fixed | mass | entropy; adaptive rules cap k at top_k
    k_mass: float = 0.9
    k_min: int = 1
    leak_future: bool = False  # the seeds' bug, reproduced on purpose: selection may pick future tokens
    # the selection's scores: 'bf16' (the indexer's dtype) or 'fp8' (V3.2: Hadamard-rotated e4m3, per-token
    # scales; indexer_dim a power of two). Selection only: the KL loss scores the selected positions from the
    # indexer's own outputs, so its gradient reaches the indexer weights in their dtype (no straight-through).
    # The FP8 Triton top-k takes one k: with an adaptive k_policy the FP8 selection runs the reference.
    indexer_precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.indexer_rope_dim is None and isinstance(self.indexer_dim, int):
            object.__setattr__(self, "indexer_rope_dim", self.indexer_dim // 4 * 2)
        _positive("dsa", top_k=self.top_k, indexer_heads=self.indexer_heads, indexer_dim=self.indexer_dim,
                  k_min=self.k_min)
        if self.indexer_precision not in PRECISIONS:
            raise ValueError(f"indexer_precision must be one of {PRECISIONS}, got {self.indexer_precision!r}")
        if self.indexer_precision == "fp8" and self.indexer_dim & (self.indexer_dim - 1):
            raise ValueError(f"indexer_precision 'fp8' needs a power-of-two indexer_dim (the Hadamard rotation), "
                             f"got {self.indexer_dim}")
        if self.k_policy not in K_POLICIES:
            raise ValueError(f"k_policy must be one of {K_POLICIES}, got {self.k_policy!r}")
        if isinstance(self.k_mass, bool) or not isinstance(self.k_mass, (int, float)) or not 0.0 < self.k_mass <= 1.0:
            raise ValueError(f"k_mass must be in (0, 1], got {self.k_mass}")
        if (isinstance(self.indexer_rope_dim, bool) or not isinstance(self.indexer_rope_dim, int)
                or not 0 <= self.indexer_rope_dim <= self.indexer_dim or self.indexer_rope_dim % 2):
            raise ValueError(f"indexer_rope_dim must be even and in [0, indexer_dim={self.indexer_dim}], "
                             f"got {self.indexer_rope_dim}")
