"""A small decoder-only LM (token embedding, RMSNorm, SwiGLU MLP, tied head) built from the drop-in
attention layers of :mod:`dsa.layers`: dense (causal SDPA) or DSA (lightning indexer + top-k + sparse
attention), everything else identical. Every attention op runs through :mod:`dsa.ops` with the config's
``impl``: on CUDA with 'auto', the Triton kernels (fast top-k, sparse attention, KL-loss kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from dsa.layers import INDEXER_LOSSES, AttentionAux, DenseAttention, DSAAttention, RMSNorm


SELECTION_FIELDS = ("top_k", "k_policy", "k_mass", "k_min", "leak_future")


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        acfg = cfg.attention_config()
        self.attn = DSAAttention(acfg, cfg.sparse_config()) if cfg.attention == "dsa" else DenseAttention(acfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor, **kw) -> tuple[torch.Tensor, AttentionAux]:
        """x: (B, L, D) -> (B, L, D). ``kw`` goes to the attention layer (a dense one takes keep_tensors)."""
        if isinstance(self.attn, DenseAttention):
            a, aux = self.attn(self.attn_norm(x), keep_tensors=kw.get("keep_tensors", False))
        else:
            a, aux = self.attn(self.attn_norm(x), **kw)
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

    @contextlib.contextmanager
    def selection_override(self, **changes) -> Iterator[TransformerLM]:
        """Temporarily change the selection of every DSA layer (``SELECTION_FIELDS`` of
        :class:`dsa.layers.SparseConfig`) and the model's config (a new object: the caller's config is never
        changed); both restored on exit."""
        unknown = set(changes) - set(SELECTION_FIELDS)
        if unknown:
            raise ValueError(f"selection_override changes only {SELECTION_FIELDS}, got {sorted(unknown)}")
        layers = [m for m in self.modules() if isinstance(m, DSAAttention)]
        old_layers, old_cfg = [m.sparse_cfg for m in layers], self.cfg
        new = [dataclasses.replace(c, **changes) for c in old_layers]  # validated by SparseConfig, before any change
        self.cfg = dataclasses.replace(old_cfg, **changes)
        for m, c in zip(layers, new):
            m.sparse_cfg = c
        try:
            yield self
        finally:
            for m, c in zip(layers, old_layers):
                m.sparse_cfg = c
            self.cfg = old_cfg

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
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {getattr(tokens, 'shape', tokens)}")
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.cfg.max_seq_len}")
        if indexer_loss not in INDEXER_LOSSES:
            raise ValueError(f"indexer_loss must be one of {INDEXER_LOSSES}, got {indexer_loss!r}")
        if indexer_loss is not None and self.cfg.attention != "dsa":
            raise ValueError("indexer_loss needs attention='dsa'")
        x = self.embed(tokens) if embeds is None else embeds
        auxes = []
        for layer in self.layers:
            x, aux = layer(x, sparse=sparse, indexer_loss=indexer_loss, recall=recall, keep_tensors=keep_tensors)
            auxes.append(aux)
        logits = F.linear(self.norm(x), self.embed.weight).float()
        kl = torch.stack([a.indexer_kl for a in auxes]).mean() if indexer_loss is not None else None
        rec = None
        if recall and auxes and auxes[0].recall is not None:
            rec = {key: sum(a.recall[key] for a in auxes) / len(auxes) for key in ("recall", "recall_all")}
        return LMOutput(logits=logits, indexer_kl=kl, recall=rec, aux=auxes)
