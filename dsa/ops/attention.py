"""Attention ops: dense causal attention (SDPA), sparse attention over selected K/V rows, and DSA (indexer
top-k, then sparse attention) as one call.

Layouts: q (B, H, L, d_qk); k (B, H_kv, L, d_qk); v (B, H_kv, L, d_v) with H % H_kv == 0 (MHA, GQA, MQA;
MLA in MQA mode is one latent K/V head with d_qk = d_latent + d_rope, d_v = d_latent); a selection idx
(B, L, K) int32 (-1 = unused slot) is shared by every head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..checks import check_positive_int
from .checks import check_qkv, check_scale, check_selection, exporting
from .dispatch import resolve_impl
from .memory import chunk_rows
from .topk import indexer_topk, selection_counts

# On CPU at small L the masked reference (one dense product) is several times faster than gathering,
# whose scattered backward dominates; both compute the same function (tests/ops/test_attention.py).
MASKED_MAX_LEN_CPU = 512


def expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, H_kv, L, d) -> (B, H, L, d) by repeating each K/V head over its query group."""
    g = n_heads // k.shape[1]
    return k if g == 1 else k.repeat_interleave(g, dim=1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention via SDPA (PyTorch picks cuDNN / flash / math). q (B, H, L, d_qk);
    k (B, H_kv, L, d_qk); v (B, H_kv, L, d_v) -> (B, H, L, d_v)."""
    check_qkv(q, k, v)
    check_scale(scale)
    h = q.shape[1]
    return F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), is_causal=True, scale=scale)


def sparse_attention_gather(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *, scale: float, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification: each query attends to its gathered rows, in query chunks (never L x L).

    Shapes as :func:`sparse_attention`. Softmax in float32 (float64 for float64 inputs).
    returns out (B, H, L, d_v) in q's dtype, lse (B, H, L) float32/64, -inf for a query with no selection.
    """
    b, h, l, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    g = h // hkv
    chunk = chunk or chunk_rows(b * h * idx.shape[-1], l)  # (B, H, rows, K) float32 scores per chunk
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # (B, L, H_kv, d): rows to gather
    bi = torch.arange(b, device=q.device)[:, None, None]
    acc = torch.promote_types(q.dtype, torch.float32)
    outs, lses = [], []
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        ic = idx[:, c0:c1].long()
        ok = (ic >= 0)[:, None, None]  # (B, 1, 1, C, K)
        kg, vg = kt[bi, ic.clamp(min=0)], vt[bi, ic.clamp(min=0)]  # (B, C, K, H_kv, d)
        qc = q[:, :, c0:c1].reshape(b, hkv, g, c1 - c0, d)
        s = torch.einsum("bhgcd,bckhd->bhgck", qc.to(acc), kg.to(acc)) * scale
        s = s.masked_fill(~ok, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (B, H_kv, G, C)
        p = torch.where(ok, torch.exp(s - lse.unsqueeze(-1).clamp(min=torch.finfo(acc).min)), 0.0)
        o = torch.einsum("bhgck,bckhd->bhgcd", p, vg.to(acc))
        outs.append(o.reshape(b, h, c1 - c0, dv).to(q.dtype))
        lses.append(lse.reshape(b, h, c1 - c0))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _selection_bias(idx: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, seq_len) float32 log-counts of the selection (-inf where not selected: a position selected
    twice weighs twice, as in the gather), and the (B, L) rows that select nothing."""
    counts = selection_counts(idx, seq_len)
    return counts.float().log(), counts.sum(-1) == 0


def sparse_attention_masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """The same function as :func:`sparse_attention_gather` by a dense product with an L x L bias (the
    seeds' approach: every dense FLOP is spent). A query with no selected token gets zeros (SDPA: NaN)."""
    h, l = q.shape[1], q.shape[2]
    bias, empty = _selection_bias(idx, l)
    bias = bias.masked_fill(empty[..., None], 0.0).to(q.dtype)  # keep SDPA finite; those rows are zeroed below
    out = F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), attn_mask=bias[:, None], scale=scale)
    return out.masked_fill(empty[:, None, :, None], 0.0)


@torch.no_grad()
def _masked_lse(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, scale: float) -> torch.Tensor:
    """log-sum-exp of each query's selected scores, (B, H, L) float32, -inf for an empty selection."""
    s = torch.einsum("bhtd,bhsd->bhts", q.float(), expand_kv(k, q.shape[1]).float()) * scale
    return (s + _selection_bias(idx, q.shape[2])[0][:, None]).logsumexp(-1)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its selected K/V rows only (the same rows for every head).

    q (B, H, L, d_qk); k (B, H_kv, L, d_qk); v (B, H_kv, L, d_v); idx (B, L, K) int32/int64, -1 = unused; a
    position listed twice weighs twice (every impl). scale: default d_qk^-1/2. returns out (B, H, L, d_v) in q's dtype
    [and lse (B, H, L) float32, -inf for a query with no selected key; no gradient flows through lse]. Differentiable
    w.r.t. q, k, v.
    """
    check_qkv(q, k, v)
    check_scale(scale)
    b, _, l, d = q.shape
    check_selection(idx, b, l, l)
    scale = d**-0.5 if scale is None else float(scale)
    if resolve_impl(impl, q, k, v, idx, op="sparse_attention") == "triton":
        from dsa.ops.kernels.sparse_attention import sparse_attention as kernel  # noqa: PLC0415

        o, lse = kernel(q, k, v, idx.to(torch.int32).contiguous(), scale)
        return (o, lse) if return_lse else o
    # traced for export: one product over the whole square, not a chunk loop frozen at the example's length
    if (q.device.type == "cpu" and l <= MASKED_MAX_LEN_CPU) or exporting():
        o = sparse_attention_masked(q, k, v, idx, scale=scale)
        return (o, _masked_lse(q, k, idx, scale)) if return_lse else o
    o, lse = sparse_attention_gather(q, k, v, idx, scale=scale)
    return (o, lse.detach().float()) if return_lse else o


class DSAResult(NamedTuple):
    out: torch.Tensor  # (B, H, L, d_v)
    idx: torch.Tensor  # (B, L, K) int32, -1 = unused
    lse: torch.Tensor | None  # (B, H, L) float32 when asked for


def dsa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int | torch.Tensor,
    *,
    scale: float | None = None,
    leak_future: bool = False,
    return_lse: bool = False,
    impl: str = "auto",
) -> DSAResult:
    """DeepSeek Sparse Attention: select each query's top-k past tokens by the indexer, attend over them.

    q, k, v as :func:`sparse_attention`; q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) as
    :func:`dsa.ops.indexer_topk`; top_k int or per-query (L,) / (B, L). The selection carries no gradient
    (the indexer learns from its KL loss). returns DSAResult(out, idx, lse).
    """
    if isinstance(top_k, int):
        check_positive_int("top_k", top_k)
    idx = indexer_topk(q_idx, k_idx, w, top_k, leak_future=leak_future, impl=impl)
    if return_lse:
        out, lse = sparse_attention(q, k, v, idx, scale=scale, return_lse=True, impl=impl)
        return DSAResult(out, idx, lse)
    return DSAResult(sparse_attention(q, k, v, idx, scale=scale, impl=impl), idx, None)


def seed_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """The seeds' exact recipe: ``attn_mask = where(top_k_mask, 0, -inf)`` and SDPA without ``is_causal``.

    q (B, H, L, d); k, v (B, H_kv, L, d); mask (B, L, L) bool top-k mask -> (B, H, L, d). Kept as a
    benchmark baseline and to show the leak."""
    h = q.shape[1]
    attn = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), attn_mask=attn[:, None], scale=scale)
