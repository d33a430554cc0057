"""Sparse attention over selected K/V rows: Triton forward + backward (the op is dsa.ops.sparse_attention).

Layouts as in :mod:`dsa.ops.attention`: q (B, H, L, d); k, v (B, H_kv, L, d); idx (B, L, K) int
(-1 = unused slot) shared by every head; valid (B, L, K) bool (optional).
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit, next_pow2


def _kernels():
    from . import _sparse_attn_kernels as m

    return jit(m.sparse_attn_fwd_kernel), jit(m.sparse_attn_bwd_kernel)


def _lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _fwd(q, k, v, idx32, scale, block_k=None, num_warps=4):
    fwd_kernel, _ = _kernels()
    b, h, l, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    ksel = idx32.shape[-1]
    o = torch.empty_like(q)
    lse = torch.empty(b, h, l, device=q.device, dtype=torch.float32)
    block_k = block_k or (64 if q.element_size() < 4 else 32)
    grid = (l, b * hkv)
    fwd_kernel[grid](
        q, k, v, idx32, o, lse, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx32.stride(0), idx32.stride(1),
        o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1),
        hkv, ksel,
        G=g, G_PAD=max(16, next_pow2(g)), D=d, D_PAD=max(16, next_pow2(d)),
        BLOCK_K=block_k, IEEE=q.dtype == torch.float32, INTERP=interpret_mode(), num_warps=num_warps,
    )
    return o, lse


def _bwd(q, k, v, idx32, o, lse, do, scale, block_k=None, num_warps=4):
    _, bwd_kernel = _kernels()
    b, h, l, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    ksel = idx32.shape[-1]
    do = _lastdim_contig(do)
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, L)
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
    dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
    block_k = block_k or (32 if q.element_size() < 4 else 16)
    grid = (l, b * hkv)
    bwd_kernel[grid](
        q, k, v, idx32, do, lse, delta, dq, dk, dv, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx32.stride(0), idx32.stride(1),
        do.stride(0), do.stride(1), do.stride(2),
        lse.stride(0), lse.stride(1),
        dq.stride(0), dq.stride(1), dq.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        hkv, ksel,
        G=g, G_PAD=max(16, next_pow2(g)), D=d, D_PAD=max(16, next_pow2(d)),
        BLOCK_K=block_k, IEEE=q.dtype == torch.float32, INTERP=interpret_mode(), num_warps=num_warps,
    )
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx32: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its selected K/V rows (the same rows for every head; GQA/MQA).

    q (B, H, L, d); k, v (B, H_kv, L, d); idx32 (B, L, K) int32 contiguous, -1 = unused; scale float.
    returns out (B, H, L, d) in q's dtype and lse (B, H, L) fp32 (-inf for a query with no selection);
    differentiable w.r.t. q, k, v. Inputs are checked by the op (:func:`dsa.ops.sparse_attention`)."""
    from .registered import sparse_attention_op as op  # noqa: PLC0415 (the custom op: one node under torch.compile)

    return op(_lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v), idx32, float(scale))
