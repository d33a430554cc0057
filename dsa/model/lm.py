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

from dsa.layers import INDEXER_LOSSES, AttentionAux, DenseAttention, DSAAttention, RMSNorm

from .cache import ModelCache
from .config import ModelConfig

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
            a, aux = self.attn(self.attn_norm(x), keep_tensors=kw.get("keep_tensors", False),
                               cache=kw.get("cache"), positions=kw.get("positions"))
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
        cache: ModelCache | None = None,
        lengths: torch.Tensor | None = None,
    ) -> LMOutput:
        """tokens: (B, L) int64 -> LMOutput with logits (B, L, vocab_size) float32.

        sparse: use sparse attention (DSA models only; False = dense attention with the same weights).
        indexer_loss: None, 'dense' (warm-up KL) or 'sparse' (KL on the selected set).
        recall: also measure indexer recall against the dense attention of each layer.
        embeds: (B, L, D) used instead of the token embeddings (the causality probe differentiates them).
        cache: a :class:`ModelCache` from :meth:`init_cache`: the L tokens continue each sequence from its
        cached length (a prompt, then one token at a time, or several); their keys, values and indexer keys are
        appended and the logits are those of the new tokens only. lengths: (B,) how many of the L tokens are
        real per sequence (right-padding, default L): the cache grows by that much; the logits at padded slots
        are not meaningful. Every sequence's cached length + L must fit in the cache's max_len.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {getattr(tokens, 'shape', tokens)}")
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.cfg.max_seq_len}")
        if indexer_loss not in INDEXER_LOSSES:
            raise ValueError(f"indexer_loss must be one of {INDEXER_LOSSES}, got {indexer_loss!r}")
        if indexer_loss is not None and self.cfg.attention != "dsa":
            raise ValueError("indexer_loss needs attention='dsa'")
        if cache is not None:
            return self._forward_cached(tokens, cache, lengths, sparse, embeds,
                                        indexer_loss is not None or recall or keep_tensors)
        if lengths is not None:
            raise ValueError("lengths applies only with a cache (right-padded prompts of different lengths)")
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

    def init_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> ModelCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens (prompt + generated), in the
        model's dtype and device unless given. max_len <= the config's max_seq_len (the RoPE tables' length)."""
        for name, v in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"max_len ({max_len}) must be <= the model's max_seq_len ({self.cfg.max_seq_len})")
        dtype = dtype or self.embed.weight.dtype
        device = torch.device(device) if device is not None else self.embed.weight.device
        layers = [blk.attn.init_cache(batch_size, max_len, dtype, device) for blk in self.layers]
        return ModelCache(layers, torch.zeros(batch_size, dtype=torch.long, device=device), max_len, id(self),
                          self.cfg.attention)

    def _forward_cached(self, tokens: torch.Tensor, cache: ModelCache, lengths: torch.Tensor | None, sparse: bool,
                        embeds: torch.Tensor | None, training_options: bool) -> LMOutput:
        """The cached path of :meth:`forward`: tokens (B, T) -> LMOutput with logits (B, T, V) float32."""
        n_new = self._check_cache_call(tokens, cache, lengths, training_options)
        t = tokens.shape[1]
        positions = cache.lengths[:, None] + torch.arange(t, device=tokens.device)[None, :]  # (B, T)
        x = self.embed(tokens) if embeds is None else embeds
        auxes = []
        for layer, lc in zip(self.layers, cache.layers):
            x, aux = layer(x, sparse=sparse, cache=lc, positions=positions)
            auxes.append(aux)
        cache.lengths += n_new
        logits = F.linear(self.norm(x), self.embed.weight).float()
        return LMOutput(logits=logits, indexer_kl=None, recall=None, aux=auxes)

    def _check_cache_call(self, tokens: torch.Tensor, cache: ModelCache, lengths: torch.Tensor | None,
                          training_options: bool) -> torch.Tensor:
        """Every bad cached call refused before any row is written; returns the (B,) new-token counts."""
        if not isinstance(cache, ModelCache):
            raise TypeError(f"cache must be a ModelCache from model.init_cache, got {type(cache).__name__}")
        if cache.owner != id(self) or len(cache.layers) != len(self.layers) or cache.attention != self.cfg.attention:
            raise ValueError("cache was made by another model: make it with this model's init_cache")
        if training_options:
            raise ValueError("indexer_loss, recall and keep_tensors are training-time options: not with a cache")
        b, t = tokens.shape
        if b != cache.batch_size:
            raise ValueError(f"tokens batch size ({b}) must equal the cache's batch_size ({cache.batch_size})")
        if tokens.device != cache.lengths.device:
            raise ValueError(f"tokens are on {tokens.device}, the cache on {cache.lengths.device}")
        if lengths is None:
            n_new = torch.full((b,), t, dtype=torch.long, device=tokens.device)
        else:
            if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or tuple(lengths.shape) != (b,):
                raise ValueError(f"lengths must be a (B,)=({b},) integer tensor, "
                                 f"got {getattr(lengths, 'shape', lengths)}")
            n_new = lengths.to(device=tokens.device, dtype=torch.long)
            if int(n_new.min()) < 0 or int(n_new.max()) > t:
                raise ValueError(f"lengths must lie in [0, T={t}] (the real tokens of each right-padded row)")
        end = int(cache.lengths.max()) + t
        if end > cache.max_len:
            raise ValueError(f"tokens run past the cache's max_len: a sequence holds {int(cache.lengths.max())} "
                             f"tokens and {t} more need {end} > max_len={cache.max_len} (a larger init_cache)")
        return n_new
