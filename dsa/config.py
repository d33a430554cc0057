"""Model configuration (a dataclass validated at construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ATTENTION_KINDS = ("dense", "dsa")
SPARSE_IMPLS = ("auto", "gather", "masked", "triton")


@dataclass
class ModelConfig:
    """A small decoder-only LM whose attention is ``dense`` (causal SDPA) or ``dsa`` (indexer + top-k +
    sparse attention); everything else is identical between the two."""

    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = grouped-query attention
    d_ff: int | None = None  # None = SwiGLU width ~8/3 d_model rounded up to 32
    max_seq_len: int = 256
    attention: str = "dense"
    top_k: int = 64
    k_policy: str = "fixed"  # fixed | mass | entropy (dsa.adaptive); adaptive rules cap k at top_k
    k_mass: float = 0.9  # target indexer softmax mass of the "mass" policy
    k_min: int = 1
    indexer_heads: int = 4
    indexer_dim: int = 32
    indexer_rope_dim: int = 16
    leak_future: bool = False  # the seeds' bug, reproduced on purpose: selection may pick future tokens
    sparse_impl: str = "auto"  # auto: the Triton kernel on CUDA when present, else the gather reference
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    chunk: int = 128  # query chunk of the references (memory O(chunk * L))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.sparse_impl not in SPARSE_IMPLS:
            raise ValueError(f"sparse_impl must be one of {SPARSE_IMPLS}, got {self.sparse_impl!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "indexer_heads",
                     "indexer_dim", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim d_model/n_heads ({self.d_model // self.n_heads}) must be even for RoPE")
        if self.d_ff is None:
            self.d_ff = 32 * -(-(8 * self.d_model // 3) // 32)
        if not 1 <= self.top_k <= self.max_seq_len:
            raise ValueError(f"top_k must be in [1, max_seq_len={self.max_seq_len}], got {self.top_k}")
        if self.k_policy not in ("fixed", "mass", "entropy"):
            raise ValueError(f"k_policy must be fixed, mass or entropy, got {self.k_policy!r}")
        if self.leak_future and self.attention != "dsa":
            raise ValueError("leak_future only applies to attention='dsa'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)
