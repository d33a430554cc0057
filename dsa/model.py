"""A small decoder-only LM (token embedding, RMSNorm, RoPE, SwiGLU MLP, tied head) whose attention is
dense (causal SDPA) or DSA (lightning indexer + top-k + sparse attention), everything else identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .adaptive import KPolicy, adaptive_k
from .config import ModelConfig
from .indexer import IndexerConfig, LightningIndexer
from .indexer_loss import dense_indexer_kl, indexer_recall, sparse_indexer_kl
from .rope import apply_rope, rope_cos_sin
from .sparse_attention import dense_causal_attention, sparse_attention_gather, sparse_attention_masked
from .topk import Selection, indexer_topk

INDEXER_LOSSES = (None, "dense", "sparse")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> (..., D)."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.down(F.silu(self.gate(x)) * self.up(x))


# On CPU at small L the masked reference (one dense product) is several times faster than gathering,
# whose scattered backward dominates; both compute the same function (tests/test_attention.py).
MASKED_MAX_LEN_CPU = 512
# On CUDA the query chunk of the references grows until one chunk's (B, H, chunk, L) float32 scores reach
# this many elements (256 MiB): at chunk=128 a DSA step at L=4096 launched thousands of small kernels
# (data/bench/step-profile/). The chunk changes memory and speed only, never the result.
CUDA_CHUNK_ELEMENTS = 1 << 26


def effective_chunk(chunk: int, device: torch.device, batch: int, n_heads: int, seq_len: int) -> int:
    """The query chunk used on ``device``: ``chunk`` on CPU; on CUDA at least ``chunk``, grown to the
    memory budget CUDA_CHUNK_ELEMENTS, never past seq_len."""
    if device.type != "cuda":
        return chunk
    return max(chunk, min(seq_len, CUDA_CHUNK_ELEMENTS // max(1, batch * n_heads * seq_len)))


def resolved_sparse_impl(impl: str, device: torch.device, seq_len: int) -> str:
    """Which implementation ``impl`` ('auto' included) runs on ``device`` at ``seq_len``: 'triton' (the
    kernel, CUDA only), 'masked' or 'gather' (the references)."""
    if impl in ("auto", "triton") and device.type == "cuda":
        try:
            from . import kernels  # noqa: F401, PLC0415 (optional, GPU only)

            return "triton"
        except ImportError:
            if impl == "triton":
                raise
    if impl == "triton":
        raise RuntimeError("sparse_impl='triton' needs a CUDA device and dsa.kernels")
    if impl == "masked" or (impl == "auto" and device.type == "cpu" and seq_len <= MASKED_MAX_LEN_CPU):
        return "masked"
    return "gather"


@dataclass
class AttentionAux:
    """What one attention layer reports besides its output."""

    indexer_kl: torch.Tensor | None = None
    recall: dict | None = None
    selection: Selection | None = None
    tensors: dict = field(default_factory=dict)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)
        self.indexer = (
            LightningIndexer(IndexerConfig(cfg.d_model, cfg.indexer_heads, cfg.indexer_dim, cfg.indexer_rope_dim))
            if cfg.attention == "dsa"
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        rope_idx: tuple[torch.Tensor, torch.Tensor] | None,
        *,
        sparse: bool = True,
        indexer_loss: str | None = None,
        recall: bool = False,
        keep_tensors: bool = False,
    ) -> tuple[torch.Tensor, AttentionAux]:
        """x: (B, L, D) -> (B, L, D). ``sparse`` is ignored by a dense model; ``indexer_loss`` is None,
        'dense' (KL against the full attention) or 'sparse' (KL restricted to the selected set)."""
        cfg = self.cfg
        b, l, _ = x.shape
        hd = cfg.head_dim
        chunk = effective_chunk(cfg.chunk, x.device, b, cfg.n_heads, l)
        q = self.wq(x).view(b, l, cfg.n_heads, hd).transpose(1, 2)
        k = self.wk(x).view(b, l, cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(b, l, cfg.n_kv_heads, hd).transpose(1, 2)
        cos, sin = rope
        q = apply_rope(q, cos, sin, seq_dim=2)
        k = apply_rope(k, cos, sin, seq_dim=2)
        aux = AttentionAux()
        use_sparse = self.indexer is not None and sparse
        need_index = self.indexer is not None and (use_sparse or indexer_loss is not None or recall or keep_tensors)
        sel = None
        if need_index:
            # The indexer learns only from its KL loss: its input is cut from the LM graph.
            qi, ki, wi = self.indexer(x.detach(), *(rope_idx or (None, None)))
            with torch.no_grad():
                k_sel: int | torch.Tensor = min(cfg.top_k, l)
                if cfg.k_policy != "fixed":
                    policy = KPolicy(cfg.k_policy, top_k=k_sel, mass=cfg.k_mass, k_min=min(cfg.k_min, k_sel))
                    k_sel = adaptive_k(qi, ki, wi, policy, chunk=chunk)
                sel = indexer_topk(qi, ki, wi, k_sel, chunk=chunk, leak_future=cfg.leak_future)
            aux.selection = sel
        if use_sparse:
            impl = resolved_sparse_impl(cfg.sparse_impl, x.device, l)
            if impl == "triton":
                from .kernels import sparse_attention as sparse_attention_kernel  # noqa: PLC0415

                o = sparse_attention_kernel(q, k, v, sel.idx, sel.valid)
            elif impl == "masked":
                o = sparse_attention_masked(q, k, v, sel.idx, sel.valid)
            else:
                o = sparse_attention_gather(q, k, v, sel.idx, sel.valid, chunk=chunk)
        else:
            o = dense_causal_attention(q, k, v)
        if indexer_loss == "dense":
            aux.indexer_kl = dense_indexer_kl(q.detach(), k.detach(), qi, ki, wi, chunk=chunk)
        elif indexer_loss == "sparse":
            aux.indexer_kl = sparse_indexer_kl(q.detach(), k.detach(), qi, ki, wi, sel, chunk=chunk)
        if recall and sel is not None:
            aux.recall = indexer_recall(q.detach(), k.detach(), sel, chunk=chunk)
        if keep_tensors:
            aux.tensors = {"q": q.detach(), "k": k.detach(), "v": v.detach()}
            if need_index:
                aux.tensors.update(q_idx=qi.detach(), k_idx=ki.detach(), w=wi.detach())
        return self.wo(o.transpose(1, 2).reshape(b, l, cfg.n_heads * hd)), aux


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor, rope, rope_idx, **kw) -> tuple[torch.Tensor, AttentionAux]:
        """x: (B, L, D) -> (B, L, D)."""
        a, aux = self.attn(self.attn_norm(x), rope, rope_idx, **kw)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), aux


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V)
    indexer_kl: torch.Tensor | None  # scalar: mean over layers
    recall: dict | None  # mean over layers of indexer_recall's fields
    aux: list[AttentionAux]


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_cos_sin(cfg.max_seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        if cfg.attention == "dsa" and cfg.indexer_rope_dim:
            ci, si = rope_cos_sin(cfg.max_seq_len, cfg.indexer_rope_dim, cfg.rope_base)
        else:
            ci = si = torch.zeros(0)
        self.register_buffer("cos_idx", ci, persistent=False)
        self.register_buffer("sin_idx", si, persistent=False)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Deterministic init from ``seed``: the main weights come from one generator and the indexer's
        from another, so a dense and a DSA model with one seed start from identical shared weights."""
        g_main = torch.Generator().manual_seed(seed)
        g_idx = torch.Generator().manual_seed(seed + 1_000_003)
        out_std = 0.02 / (2 * self.cfg.n_layers) ** 0.5
        for name, p in self.named_parameters():
            g = g_idx if ".indexer." in name else g_main
            if p.ndim == 1:  # norm gains and LayerNorm bias
                p.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            std = out_std if name.endswith(("wo.weight", "down.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)

    def indexer_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".indexer." in n]

    def main_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".indexer." not in n]

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts; the tied output head is the embedding, counted once."""
        idx = sum(p.numel() for p in self.indexer_parameters())
        main = sum(p.numel() for p in self.main_parameters())
        return {"total": idx + main, "main": main, "indexer": idx, "embedding": self.embed.weight.numel()}

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        sparse: bool = True,
        indexer_loss: str | None = None,
        recall: bool = False,
        keep_tensors: bool = False,
        embeds: torch.Tensor | None = None,
    ) -> LMOutput:
        """tokens: (B, L) int64 -> LMOutput with logits (B, L, vocab_size) float32.

        sparse: use sparse attention (DSA models only; False = dense attention with the same weights).
        indexer_loss: None, 'dense' (warm-up KL) or 'sparse' (KL on the selected set).
        recall: also measure indexer recall against the dense attention of each layer.
        embeds: (B, L, D) used instead of the token embeddings (the causality probe differentiates them).
        """
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        l = tokens.shape[1]
        if l > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {l} exceeds max_seq_len={self.cfg.max_seq_len}")
        if indexer_loss not in INDEXER_LOSSES:
            raise ValueError(f"indexer_loss must be one of {INDEXER_LOSSES}, got {indexer_loss!r}")
        if indexer_loss is not None and self.cfg.attention != "dsa":
            raise ValueError("indexer_loss needs attention='dsa'")
        rope = (self.cos[:l], self.sin[:l])
        rope_idx = (self.cos_idx[:l], self.sin_idx[:l]) if self.cos_idx.numel() else None
        x = self.embed(tokens) if embeds is None else embeds
        auxes = []
        for layer in self.layers:
            x, aux = layer(x, rope, rope_idx, sparse=sparse, indexer_loss=indexer_loss, recall=recall,
                           keep_tensors=keep_tensors)
            auxes.append(aux)
        logits = F.linear(self.norm(x), self.embed.weight).float()
        kl = None
        if indexer_loss is not None:
            kl = torch.stack([a.indexer_kl for a in auxes]).mean()
        rec = None
        if recall and auxes and auxes[0].recall is not None:
            rec = {key: sum(a.recall[key] for a in auxes) / len(auxes) for key in ("recall", "recall_all")}
        return LMOutput(logits=logits, indexer_kl=kl, recall=rec, aux=auxes)
