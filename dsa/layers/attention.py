"""Drop-in attention layers: hidden states (B, L, d_model) in, hidden states out.

:class:`DenseAttention` runs causal SDPA; :class:`DSAAttention` runs DeepSeek Sparse Attention (lightning
indexer, top-k, sparse attention over the selected rows) and, on request, the indexer's KL loss. Both take
the layouts of :class:`AttentionConfig`: MHA, GQA, MQA and MLA (DSA runs MLA in MQA mode: every head on the
one latent K/V). Every op goes through :mod:`dsa.ops` with the config's ``impl``: on CUDA with 'auto' the
Triton kernels run, elsewhere the references.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dsa.layers.rope import apply_rope, apply_rope_at, rope_cos_sin

from .. import ops
from ..ops.quantize import fp8_cache_dtype
from .cache import LayerCache
from .config import AttentionConfig, SparseConfig
from .indexer import IndexerConfig, LightningIndexer
from .norm import RMSNorm

INDEXER_LOSSES = (None, "dense", "sparse")


@dataclass
class AttentionAux:
    """What one attention layer reports besides its output."""

    indexer_kl: torch.Tensor | None = None  # scalar float32
    recall: dict | None = None
    selection: torch.Tensor | None = None  # (B, L, K) int32, -1 = unused
    tensors: dict = field(default_factory=dict)


@dataclass
class QKV:
    """q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v) and the softmax scale."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float


class _Projections(nn.Module):
    """Hidden states -> queries, keys, values of one layout; attention output -> hidden states."""

    def __init__(self, cfg: AttentionConfig, mqa_mode: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.mqa_mode = mqa_mode  # MLA only: the absorbed form
        m = cfg.mla
        if m is None:
            self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.qk_dim, bias=False)
            self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.qk_dim, bias=False)
            self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.v_dim, bias=False)
            rope_dim = cfg.qk_dim
        else:
            q_out = cfg.n_heads * (m.nope_dim + m.rope_dim)
            if m.q_rank:
                self.wq_a = nn.Linear(cfg.d_model, m.q_rank, bias=False)
                self.q_norm = RMSNorm(m.q_rank)
                self.wq = nn.Linear(m.q_rank, q_out, bias=False)
            else:
                self.wq = nn.Linear(cfg.d_model, q_out, bias=False)
            self.wkv_a = nn.Linear(cfg.d_model, m.kv_rank + m.rope_dim, bias=False)
            self.kv_norm = RMSNorm(m.kv_rank)
            self.wkv_b = nn.Linear(m.kv_rank, cfg.n_heads * (m.nope_dim + m.v_dim), bias=False)
            rope_dim = m.rope_dim
        self.wo = nn.Linear(cfg.n_heads * cfg.v_dim, cfg.d_model, bias=False)
        cos, sin = rope_cos_sin(cfg.max_seq_len, rope_dim, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> QKV:
        """x: (B, L, D) -> QKV, all three in the queries' dtype (under autocast the RMSNorm of MLA's latent
        comes back in float32 while the projections give bf16). positions: (B, L) absolute positions of the
        tokens (decoding with a cache), default 0..L-1; with positions MLA always takes the absorbed form (its
        cache holds the latent rows)."""
        t = self._standard(x, positions) if self.cfg.mla is None else self._mla(x, positions)
        return QKV(t.q, t.k.to(t.q.dtype), t.v.to(t.q.dtype), t.scale)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor | None, seq_dim: int) -> torch.Tensor:
        if positions is None:
            return apply_rope(x, self.cos[: x.shape[seq_dim]], self.sin[: x.shape[seq_dim]], seq_dim=seq_dim)
        return apply_rope_at(x, self.cos, self.sin, positions, seq_dim=seq_dim)

    def _standard(self, x: torch.Tensor, positions: torch.Tensor | None) -> QKV:
        c = self.cfg
        b, l, _ = x.shape
        q = self._rope(self.wq(x).view(b, l, c.n_heads, c.qk_dim).transpose(1, 2), positions, 2)
        k = self._rope(self.wk(x).view(b, l, c.kv_heads, c.qk_dim).transpose(1, 2), positions, 2)
        v = self.wv(x).view(b, l, c.kv_heads, c.v_dim).transpose(1, 2)
        return QKV(q, k, v, c.qk_dim**-0.5)

    def _mla(self, x: torch.Tensor, positions: torch.Tensor | None) -> QKV:
        c, m = self.cfg, self.cfg.mla
        b, l, _ = x.shape
        qx = self.q_norm(self.wq_a(x)) if m.q_rank else x
        q = self.wq(qx).view(b, l, c.n_heads, m.nope_dim + m.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([m.nope_dim, m.rope_dim], dim=-1)
        q_rope = self._rope(q_rope, positions, 2)
        kv = self.wkv_a(x)
        latent = self.kv_norm(kv[..., : m.kv_rank])  # (B, L, kv_rank)
        k_rope = self._rope(kv[..., m.kv_rank:], positions, 1)  # (B, L, rope_dim): shared by every head
        scale = (m.nope_dim + m.rope_dim) ** -0.5  # the MHA form's scale, kept by the absorbed form
        w_uk, _ = self._up_weights()
        if self.mqa_mode or positions is not None:
            q_lat = torch.einsum("bhln,hnr->bhlr", q_nope, w_uk)  # absorb W_uk into the queries
            k = torch.cat([latent, k_rope], dim=-1)[:, None]  # (B, 1, L, kv_rank + rope_dim)
            return QKV(torch.cat([q_lat, q_rope], dim=-1), k, k[..., : m.kv_rank], scale)
        kvh = self.wkv_b(latent).view(b, l, c.n_heads, m.nope_dim + m.v_dim).transpose(1, 2)
        k_nope, v = kvh.split([m.nope_dim, m.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(b, c.n_heads, l, m.rope_dim)], dim=-1)
        return QKV(torch.cat([q_nope, q_rope], dim=-1), k, v, scale)

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_uk (H, nope_dim, kv_rank), W_uv (H, v_dim, kv_rank): views of wkv_b's weight."""
        m = self.cfg.mla
        w = self.wkv_b.weight.view(self.cfg.n_heads, m.nope_dim + m.v_dim, m.kv_rank)
        return w[:, : m.nope_dim], w[:, m.nope_dim:]

    def output(self, o: torch.Tensor, absorbed: bool | None = None) -> torch.Tensor:
        """o: (B, H, L, d_v of the form that ran) -> (B, L, D). absorbed: MLA ran in the MQA form (default:
        the layer's mode; decoding always does)."""
        if self.cfg.mla is not None and (self.mqa_mode if absorbed is None else absorbed):
            o = torch.einsum("bhlr,hvr->bhlv", o, self._up_weights()[1])  # latent -> per-head values
        b, h, l, dv = o.shape
        return self.wo(o.transpose(1, 2).reshape(b, l, h * dv))


class DenseAttention(nn.Module):
    """Causal softmax attention over every past token (SDPA). forward: x (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = _Projections(cfg, mqa_mode=cfg.mla is not None and cfg.mla.dense_mode == "mqa")

    def forward(
        self, x: torch.Tensor, *, keep_tensors: bool = False, cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AttentionAux]:
        """x: (B, L, D) -> ((B, L, D), AttentionAux).

        cache, positions: decode with a cache (:meth:`init_cache`): the L new tokens of sequence b sit at
        positions[b] ((B, L) integer); their keys and values are written there and each attends to the cached
        rows at or before its position.
        """
        _check_hidden(x, self.cfg)
        if cache is not None:
            return self._decode(x, cache, positions)
        t = self.proj(x)
        aux = AttentionAux(tensors=_detached(t) if keep_tensors else {})
        return self.proj.output(ops.dense_attention(t.q, t.k, t.v, scale=t.scale)), aux


    def _decode(self, x: torch.Tensor, cache: LayerCache, positions: torch.Tensor) -> tuple[torch.Tensor, AttentionAux]:
        t = self.proj(x, positions)
        cache.write(t.k, t.v, positions)
        if _from_start(positions):  # a prompt into an empty cache: the full-sequence (prefill) kernels
            return self.proj.output(ops.dense_attention(t.q, t.k, t.v, scale=t.scale), absorbed=True), AttentionAux()
        kc, vc = _cached(cache, positions)
        o = ops.decode_dense_attention(t.q, kc, vc, positions, scale=t.scale, impl=self.cfg.impl)
        return self.proj.output(o, absorbed=True), AttentionAux()

    def init_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerCache:
        """An empty cache of this layer's layout for ``batch_size`` sequences of up to ``max_len`` tokens."""
        return _empty_cache(self.cfg, batch_size, max_len, dtype, device)


class DSAAttention(nn.Module):
    """DeepSeek Sparse Attention. forward: x (B, L, d_model) -> (B, L, d_model).

    The indexer reads a detached copy of x: it learns only from its KL loss, as in DeepSeek-V3.2.
    """

    def __init__(self, cfg: AttentionConfig, sparse: SparseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sparse_cfg = sparse
        self.proj = _Projections(cfg, mqa_mode=True)
        self.indexer = LightningIndexer(IndexerConfig(cfg.d_model, sparse.indexer_heads, sparse.indexer_dim,
                                                      sparse.indexer_rope_dim))
        if sparse.indexer_rope_dim:
            ci, si = rope_cos_sin(cfg.max_seq_len, sparse.indexer_rope_dim, cfg.rope_base)
        else:
            ci = si = torch.zeros(0)
        self.register_buffer("cos_idx", ci, persistent=False)
        self.register_buffer("sin_idx", si, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        *,
        sparse: bool = True,
        indexer_loss: str | None = None,
        recall: bool = False,
        keep_tensors: bool = False,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AttentionAux]:
        """x: (B, L, D) -> ((B, L, D), AttentionAux).

        cache, positions: decode with a cache (see :meth:`DenseAttention.forward`); the indexer keys are
        cached too and each new token selects its top-k among the cached positions at or before its own
        (aux.selection (B, L, min(top_k, cached rows))).
        sparse: False runs dense attention with the same weights (DeepSeek's dense stage);
        indexer_loss: None, 'dense' (KL against the full attention, the warm-up) or 'sparse' (KL on the
        selected set); recall: measure the dense attention mass on the selection (reference, slow).
        """
        _check_hidden(x, self.cfg)
        if indexer_loss not in INDEXER_LOSSES:
            raise ValueError(f"indexer_loss must be one of {INDEXER_LOSSES}, got {indexer_loss!r}")
        if cache is not None:
            if indexer_loss is not None or recall or keep_tensors:
                raise ValueError("indexer_loss, recall and keep_tensors are training-time options: not with a cache")
            return self._decode(x, cache, positions, sparse)
        impl = self.cfg.impl
        t = self.proj(x)
        aux = AttentionAux()
        need_index = sparse or indexer_loss is not None or recall or keep_tensors
        lse = None
        if need_index:
            qi, ki, wi = self.indexer_outputs(x)
            aux.selection = ops.indexer_topk(qi, ki, wi, self._top_k(qi, ki, wi), impl=impl,
                                             leak_future=self.sparse_cfg.leak_future,
                                             precision=self.sparse_cfg.indexer_precision)
        if sparse:
            res = ops.sparse_attention(t.q, t.k, t.v, aux.selection, scale=t.scale, impl=impl,
                                       return_lse=indexer_loss == "sparse")  # the KL target reuses it
            o, lse = res if indexer_loss == "sparse" else (res, None)
        else:
            o = ops.dense_attention(t.q, t.k, t.v, scale=t.scale)
        q_d, k_d = t.q.detach(), t.k.detach()
        if indexer_loss == "dense":
            aux.indexer_kl = ops.dense_indexer_kl(q_d, k_d, qi, ki, wi, scale=t.scale, impl="reference")
        elif indexer_loss == "sparse":
            aux.indexer_kl = ops.sparse_indexer_kl(q_d, k_d, qi, ki, wi, aux.selection, lse=lse, scale=t.scale,
                                                   impl=impl)
        if recall:
            aux.recall = ops.indexer_recall(q_d, k_d, aux.selection, scale=t.scale)
        if keep_tensors:
            aux.tensors = {**_detached(t), "q_idx": qi.detach(), "k_idx": ki.detach(), "w": wi.detach()}
        return self.proj.output(o), aux

    def indexer_outputs(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I), from a detached x.
        positions: (B, L) absolute positions (decoding), default 0..L-1."""
        l = x.shape[1]
        if not self.cos_idx.numel():
            return self.indexer(x.detach())
        if positions is None:
            return self.indexer(x.detach(), self.cos_idx[:l], self.sin_idx[:l])
        return self.indexer(x.detach(), self.cos_idx, self.sin_idx, positions=positions)

    def _decode(
        self, x: torch.Tensor, cache: LayerCache, positions: torch.Tensor, sparse: bool
    ) -> tuple[torch.Tensor, AttentionAux]:
        if self.sparse_cfg.k_policy != "fixed" or self.sparse_cfg.leak_future:
            raise ValueError("decoding with a cache takes k_policy='fixed' without leak_future, got "
                             f"k_policy={self.sparse_cfg.k_policy!r}, leak_future={self.sparse_cfg.leak_future}")
        impl = self.cfg.impl
        t = self.proj(x, positions)
        qi, ki, wi = self.indexer_outputs(x, positions)
        cache.write(t.k, t.v, positions, ki)
        aux = AttentionAux()
        if _from_start(positions):  # a prompt into an empty cache: the full-sequence (prefill) ops
            if sparse:
                aux.selection = ops.indexer_topk(qi, ki, wi, min(self.sparse_cfg.top_k, x.shape[1]), impl=impl,
                                                 precision=self.sparse_cfg.indexer_precision)
                o = ops.sparse_attention(t.q, t.k, t.v, aux.selection, scale=t.scale, impl=impl)
            else:
                o = ops.dense_attention(t.q, t.k, t.v, scale=t.scale)
            return self.proj.output(o, absorbed=True), aux
        kc, vc = _cached(cache, positions)
        if sparse:
            k_idx, k_scale = cache.indexer_keys(kc.shape[2])  # FP8: the stored e4m3 keys and their scales
            aux.selection = ops.decode_indexer_topk(qi, k_idx, wi, self.sparse_cfg.top_k, positions, k_scale=k_scale,
                                                    impl=impl)
            o = ops.decode_sparse_attention(t.q, kc, vc, aux.selection, scale=t.scale, impl=impl)
        else:
            o = ops.decode_dense_attention(t.q, kc, vc, positions, scale=t.scale, impl=impl)
        return self.proj.output(o, absorbed=True), aux

    def init_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerCache:
        """An empty cache (keys, values, indexer keys) for ``batch_size`` sequences of up to ``max_len`` tokens;
        with the FP8 indexer the keys in e4m3 (or their exact bf16 copy on a GPU without it) and their scales."""
        c = _empty_cache(self.cfg, batch_size, max_len, dtype, device)
        fp8 = self.sparse_cfg.indexer_precision == "fp8"
        idx_dtype = fp8_cache_dtype(device) if fp8 else dtype
        c.k_idx = torch.zeros(batch_size, max_len, self.indexer.cfg.head_dim, dtype=idx_dtype, device=device)
        if fp8:  # ones: a row not written yet is never read, but a scale stays positive
            c.k_idx_scale = torch.ones(batch_size, max_len, dtype=torch.float32, device=device)
        return c

    def _top_k(self, qi: torch.Tensor, ki: torch.Tensor, wi: torch.Tensor) -> int | torch.Tensor:
        """The fixed k (capped at L), or the adaptive policy's per-query k (B, L)."""
        s = self.sparse_cfg
        k = min(s.top_k, qi.shape[1])
        if s.k_policy == "fixed":
            return k
        policy = ops.KPolicy(s.k_policy, top_k=k, mass=s.k_mass, k_min=min(s.k_min, k))
        return ops.adaptive_k(qi, ki, wi, policy)


def _check_hidden(x: torch.Tensor, cfg: AttentionConfig) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != cfg.d_model:
        raise ValueError(f"hidden states must be (B, L, d_model={cfg.d_model}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"hidden states must be floating point, got {x.dtype}")
    if not 1 <= x.shape[1] <= cfg.max_seq_len:
        raise ValueError(f"sequence length {x.shape[1]} must be in [1, max_seq_len={cfg.max_seq_len}]")


def _empty_cache(cfg: AttentionConfig, b: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerCache:
    """Zeros in the layout of :class:`LayerCache`: MLA keeps its latent rows (kv_rank + rope_dim) only."""
    if cfg.mla is not None:
        m = cfg.mla
        return LayerCache(torch.zeros(b, 1, max_len, m.kv_rank + m.rope_dim, dtype=dtype, device=device), None,
                          m.kv_rank)
    k = torch.zeros(b, cfg.kv_heads, max_len, cfg.qk_dim, dtype=dtype, device=device)
    v = torch.zeros(b, cfg.kv_heads, max_len, cfg.v_dim, dtype=dtype, device=device)
    return LayerCache(k, v, cfg.v_dim)


def _from_start(positions: torch.Tensor) -> bool:
    """Every sequence starts at position 0: the new tokens are whole sequences (positions 0..T-1), which the
    full-sequence ops compute with their prefill kernels (the same function as the decode ops)."""
    return not bool(positions[:, 0].any())


def _cached(cache: LayerCache, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached keys and values up to the last new position, (B, H_kv, S, d): rows past it are never read."""
    used = int(positions.max()) + 1
    return cache.k[:, :, :used], cache.values()[:, :, :used]


def _detached(t: QKV) -> dict:
    return {"q": t.q.detach(), "k": t.k.detach(), "v": t.v.detach()}
