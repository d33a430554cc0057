"""Model configuration (a dataclass validated at construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dsa.checks import check_number
from dsa.layers.config import AttentionConfig, MLAConfig, SparseConfig
from dsa.ops.dispatch import IMPLS

ATTENTION_KINDS = ("dense", "dsa")


@dataclass
class ModelConfig:
    """A small decoder-only LM whose attention is ``dense`` (causal SDPA) or ``dsa`` (indexer + top-k +
    sparse attention); everything else is identical between the two. Attention layouts: MHA (default),
    GQA / MQA (``n_kv_heads``), MLA (``mla``); head counts and sizes independent of d_model."""

    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = GQA; 1 = MQA
    head_dim: int | None = None  # None = d_model // n_heads
    v_head_dim: int | None = None  # None = head_dim
    mla: MLAConfig | None = None  # DeepSeek's latent K/V (a dict is accepted, as read from a record)
    d_ff: int | None = None  # None = SwiGLU width ~8/3 d_model rounded up to 32
    max_seq_len: int = 256
    attention: str = "dense"
    top_k: int = 64
    k_policy: str = "fixed"  # fixed | mass | entropy (dsa.ops.adaptive); adaptive rules cap k at top_k
    k_mass: float = 0.9  # target indexer softmax mass of the "mass" policy
    k_min: int = 1
    indexer_heads: int = 4
    indexer_dim: int = 32
    indexer_rope_dim: int = 16
    indexer_precision: str = "bf16"  # the selection's scores: bf16 | fp8 (dsa.layers.SparseConfig)
    leak_future: bool = False  # the seeds' bug, reproduced on purpose: selection may pick future tokens
    impl: str = "auto"  # every op: auto (Triton on CUDA, the reference elsewhere) | reference | triton
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "indexer_heads", "indexer_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(self.mla, dict):
            self.mla = MLAConfig(**self.mla)
        if self.n_kv_heads is None:
            self.n_kv_heads = 1 if self.mla is not None else self.n_heads
        if self.d_ff is None:
            self.d_ff = 32 * -(-(8 * self.d_model // 3) // 32)
        if not 1 <= self.top_k <= self.max_seq_len:
            raise ValueError(f"top_k must be in [1, max_seq_len={self.max_seq_len}], got {self.top_k}")
        if self.leak_future and self.attention != "dsa":
            raise ValueError("leak_future only applies to attention='dsa'")
        self.attention_config()  # the layer's own checks (heads, head sizes, RoPE)
        if self.mla is None and self.head_dim is None:
            self.head_dim = self.d_model // self.n_heads
        # the selection's values are checked for dense models too: a bad one must not pass unnoticed
        # because the attention it belongs to is off
        self.sparse_config()
        check_number("rope_base", self.rope_base, low=0, low_open=True)
        check_number("norm_eps", self.norm_eps, low=0, low_open=True)

    def attention_config(self) -> AttentionConfig:
        return AttentionConfig(
            d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            v_head_dim=self.v_head_dim, mla=self.mla, max_seq_len=self.max_seq_len, rope_base=self.rope_base,
            impl=self.impl,
        )

    def sparse_config(self) -> SparseConfig:
        return SparseConfig(
            top_k=self.top_k, indexer_heads=self.indexer_heads, indexer_dim=self.indexer_dim,
            indexer_rope_dim=self.indexer_rope_dim, k_policy=self.k_policy, k_mass=self.k_mass, k_min=self.k_min,
            leak_future=self.leak_future, indexer_precision=self.indexer_precision,
        )

    def to_dict(self) -> dict:
        return asdict(self)
