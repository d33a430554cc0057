"""Attention references in plain PyTorch (any device, fp32/bf16): dense causal, sparse by gathering the
selected K/V rows (chunked over queries), and sparse by masking a dense product (small L only).

Layouts: q (B, H, L, d); k (B, H_kv, L, d); v (B, H_kv, L, d_v) with H % H_kv == 0 (grouped-query
attention); d_v may differ from d (DeepSeek's MLA: d = 576, d_v = 512) and the output has d_v. The selected
indices idx (B, L, K) (-1 = unused slot) are shared by every head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import FLOAT_DTYPES, check_positive_int, check_tensor
from .topk import Selection, selection_to_mask


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Validates shapes (v may have its own head dim d_v) and returns the group size G = H / H_kv."""
    check_tensor("q", q, 4, FLOAT_DTYPES)
    check_tensor("k", k, 4, FLOAT_DTYPES)
    check_tensor("v", v, 4, FLOAT_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share (B, H_kv, L), got {tuple(k.shape)} and {tuple(v.shape)}")
    b, h, l, d = q.shape
    if k.shape[0] != b or k.shape[2] != l or k.shape[3] != d:
        raise ValueError(f"k shape {tuple(k.shape)} does not fit q shape {tuple(q.shape)} as (B, H_kv, L, d)")
    if h % k.shape[1]:
        raise ValueError(f"n_heads ({h}) must be a multiple of n_kv_heads ({k.shape[1]})")
    return h // k.shape[1]


def _check_selection(idx: torch.Tensor, valid: torch.Tensor | None, b: int, l: int) -> torch.Tensor:
    check_tensor("idx", idx, 3, (torch.int64, torch.int32))
    if idx.shape[0] != b or idx.shape[1] != l:
        raise ValueError(f"idx must have shape (B, L, K)=({b}, {l}, K), got {tuple(idx.shape)}")
    if valid is None:
        valid = idx >= 0
    elif valid.shape != idx.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of idx's shape {tuple(idx.shape)}")
    if bool(((idx >= l) & valid).any()):
        raise ValueError(f"idx holds positions >= L={l}")
    return valid


def expand_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, H_kv, L, d) -> (B, H, L, d) by repeating each KV head over its query group."""
    g = n_heads // k.shape[1]
    return k if g == 1 else k.repeat_interleave(g, dim=1)


def dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """Causal softmax attention via SDPA. q (B, H, L, d); k, v (B, H_kv, L, d) -> (B, H, L, d)."""
    _check_qkv(q, k, v)
    h = q.shape[1]
    return F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), is_causal=True, scale=scale)


def sparse_attention_gather(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    chunk: int = 128,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its selected rows only, by gathering K/V in query chunks.

    q: (B, H, L, d); k: (B, H_kv, L, d); v: (B, H_kv, L, d_v); idx: (B, L, K) int (-1 = unused); valid: (B, L, K)
    bool. Memory O(chunk * K * H_kv * (d + d_v)), never L x L. Softmax in float32 (float64 for float64 inputs);
    output in q's dtype.
    returns out (B, H, L, d_v) [and lse (B, H, L) float32 (float64 for float64 inputs), -inf for a query with no selected token].
    """
    g = _check_qkv(q, k, v)
    check_positive_int("chunk", chunk)
    b, h, l, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    valid = _check_selection(idx, valid, b, l)
    scale = d**-0.5 if scale is None else scale
    kt = k.transpose(1, 2)  # (B, L, H_kv, d): rows to gather
    vt = v.transpose(1, 2)
    bi = torch.arange(b, device=q.device)[:, None, None]
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 accumulation, fp64 kept for fp64 checks
    outs, lses = [], []
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        ic = idx[:, c0:c1].long().clamp(min=0)  # (B, C, K)
        vc = valid[:, c0:c1]
        kg = kt[bi, ic]  # (B, C, K, H_kv, d)
        vg = vt[bi, ic]
        qc = q[:, :, c0:c1].reshape(b, hkv, g, c1 - c0, d)
        s = torch.einsum("bhgcd,bckhd->bhgck", qc.to(acc), kg.to(acc)) * scale
        s = s.masked_fill(~vc[:, None, None], float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (B, H_kv, G, C)
        p = torch.exp(s - lse.unsqueeze(-1).clamp(min=torch.finfo(acc).min))
        p = torch.where(vc[:, None, None], p, torch.zeros((), device=p.device))
        o = torch.einsum("bhgck,bckhd->bhgcd", p, vg.to(acc))
        outs.append(o.reshape(b, h, c1 - c0, dv).to(q.dtype))
        lses.append(lse.reshape(b, h, c1 - c0))
    out = torch.cat(outs, dim=2)
    if return_lse:
        return out, torch.cat(lses, dim=2)
    return out


def sparse_attention_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """The same function as :func:`sparse_attention_gather`, by a dense product with an L x L mask.

    This is also the seeds' approach (SDPA + boolean mask): all dense FLOPs are spent, none saved.
    q: (B, H, L, d); k, v: (B, H_kv, L, d); idx/valid: (B, L, K) -> (B, H, L, d).
    A query with no selected token gets a zero output (SDPA would give NaN).
    """
    _check_qkv(q, k, v)
    b, h, l, _ = q.shape
    valid = _check_selection(idx, valid, b, l)
    mask = selection_to_mask(Selection(idx.long(), valid), l)  # (B, L, L)
    empty = ~mask.any(-1)
    mask = mask | empty[..., None]  # keep SDPA finite; those rows are zeroed below
    out = F.scaled_dot_product_attention(
        q, expand_kv(k, h), expand_kv(v, h), attn_mask=mask[:, None], scale=scale
    )
    return out.masked_fill(empty[:, None, :, None], 0.0)


def seed_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """The seeds' exact recipe: ``attn_mask = where(top_k_mask, 0, -inf)`` and SDPA without ``is_causal``.

    mask: (B, L, L) bool top-k mask. Kept as the benchmark baseline and to show the leak.
    """
    h = q.shape[1]
    attn = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), attn_mask=attn[:, None], scale=scale)
