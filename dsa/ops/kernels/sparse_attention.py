"""Sparse attention over selected K/V rows: the Triton forward + backward, and the per-slot probabilities.

Layouts: q (B, H, L, d_qk); k (B, H_kv, L, d_qk); v (B, H_kv, L, d_v) with H % H_kv == 0 (grouped-query
attention; d_v may differ from d_qk, as in DeepSeek's MLA: 576 / 512); idx32 (B, L, K) int32, contiguous,
-1 at unused slots, shared by every head. The specification is :func:`dsa.sparse_attention.
sparse_attention_gather`; this module is Triton only (CUDA tensors, or CPU under TRITON_INTERPRET=1): the
input checks and the choice between kernel and reference belong to the caller.
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit, next_pow2

# Bytes of one gathered K (+ V) block a program holds: 64 rows of d = 128 (bf16, K and V) in the forward,
# half that in the backward (which also keeps dS, dP and the dK/dV blocks). Larger head dims take fewer rows
# per block so that the MLA head (576 -> 1024 padded, plus 512) does not outgrow the GPU's shared memory.
_FWD_BLOCK_BYTES = 64 * 256 * 2
_BWD_BLOCK_BYTES = 32 * 256 * 2
# The backward keeps dq, [G_PAD, D_PAD] fp32, in registers: at the MLA head dims ptxas (sm_90, bf16, 16
# heads) spills ~1 KB per thread with 4 warps and 64 B with 8, so the largest heads take 8 warps.
_BWD_WIDE_HEADS = 1024  # D_PAD + DV_PAD from which the backward runs 8 warps


def _kernels():
    from . import _sparse_attn_kernels as m

    return jit(m.sparse_attn_fwd_kernel), jit(m.sparse_attn_bwd_kernel), jit(m.sparse_attn_probs_kernel)


def _lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _pad(n: int) -> int:
    """A head dim padded to a power of two of at least 16 (the smallest tl.dot size)."""
    return max(16, next_pow2(n))


def _block_k(budget: int, row_bytes: int, largest: int) -> int:
    """Rows per gathered block: ``largest`` halved while a block outgrows ``budget`` bytes, at least 16."""
    block = largest
    while block > 16 and block * row_bytes > budget:
        block //= 2
    return block


def _shared_constexprs(q: torch.Tensor, k: torch.Tensor) -> dict:
    """The constexprs of every kernel here: group size G, score dim D (each with its padding), precision."""
    g = q.shape[1] // k.shape[1]
    d = q.shape[-1]
    return dict(G=g, G_PAD=_pad(g), D=d, D_PAD=_pad(d), IEEE=q.dtype == torch.float32, INTERP=interpret_mode())


def _fwd(q, k, v, idx32, scale, block_k=None, num_warps=4):
    """q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v) -> o (B, H, L, d_v), lse (B, H, L) fp32."""
    fwd_kernel, _, _ = _kernels()
    b, h, l, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    o = torch.empty(b, h, l, dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(b, h, l, device=q.device, dtype=torch.float32)
    row_bytes = (_pad(d) + _pad(dv)) * q.element_size()
    block_k = block_k or _block_k(_FWD_BLOCK_BYTES, row_bytes, 64 if q.element_size() < 4 else 32)
    fwd_kernel[(l, b * hkv)](
        q, k, v, idx32, o, lse, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx32.stride(0), idx32.stride(1),
        o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1),
        hkv, idx32.shape[-1],
        DV=dv, DV_PAD=_pad(dv), BLOCK_K=block_k, num_warps=num_warps, **_shared_constexprs(q, k),
    )
    return o, lse


def _bwd(q, k, v, idx32, o, lse, do, scale, block_k=None, num_warps=None):
    """The gradients (dq, dk, dv) in the dtypes of (q, k, v); dk, dv accumulate in fp32 by atomics."""
    _, bwd_kernel, _ = _kernels()
    b, h, l, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    do = _lastdim_contig(do)
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, L): rowsum(dO * O) = rowsum(P * dP)
    gq = torch.empty_like(q)
    gk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
    gv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
    row_bytes = (_pad(d) + _pad(dv)) * q.element_size()
    block_k = block_k or _block_k(_BWD_BLOCK_BYTES, row_bytes, 32 if q.element_size() < 4 else 16)
    num_warps = num_warps or (8 if _pad(d) + _pad(dv) >= _BWD_WIDE_HEADS else 4)
    bwd_kernel[(l, b * hkv)](
        q, k, v, idx32, do, lse, delta, gq, gk, gv, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        idx32.stride(0), idx32.stride(1),
        do.stride(0), do.stride(1), do.stride(2),
        lse.stride(0), lse.stride(1),
        gq.stride(0), gq.stride(1), gq.stride(2),
        gk.stride(0), gk.stride(1), gk.stride(2),
        gv.stride(0), gv.stride(1), gv.stride(2),
        hkv, idx32.shape[-1],
        DV=dv, DV_PAD=_pad(dv), BLOCK_K=block_k, num_warps=num_warps, **_shared_constexprs(q, k),
    )
    return gq, gk.to(k.dtype), gv.to(v.dtype)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx32: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its selected K/V rows (the same rows for every head; GQA), in Triton.

    q (B, H, L, d_qk); k (B, H_kv, L, d_qk); v (B, H_kv, L, d_v); idx32 (B, L, K) int32 contiguous, -1 at
    unused slots; scale: the softmax scale (float). fp32, bf16 or fp16, one dtype for q, k, v; inputs whose
    last dim is strided are copied. Differentiable w.r.t. q, k, v (lse carries no gradient). Inputs are
    checked by the op (:func:`dsa.ops.sparse_attention`); the call goes through the custom op
    ``dsa::sparse_attention`` (one node under torch.compile).
    returns o (B, H, L, d_v) in q's dtype and lse (B, H, L) fp32, -inf for a query with no selected key.
    """
    from .registered import sparse_attention_op  # noqa: PLC0415

    return sparse_attention_op(_lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v), idx32, float(scale))


@torch.no_grad()
def sparse_attention_probs(
    q: torch.Tensor, k: torch.Tensor, idx32: torch.Tensor, lse: torch.Tensor, scale: float, *, block_k=None
) -> torch.Tensor:
    """The sparse attention probabilities per selected slot, averaged over the H query heads (no grad).

    q (B, H, L, d_qk); k (B, H_kv, L, d_qk); idx32 (B, L, K) int32 contiguous, -1 at unused slots; lse
    (B, H, L) fp32 as :func:`sparse_attention` returned it for these q, k, idx32 and scale.
    returns p (B, L, K) fp32: p[b, t, j] = mean_h exp(scale * q[b, h, t] . k[b, h // G, idx32[b, t, j]]
    - lse[b, h, t]), 0 at unused slots and for queries whose lse is -inf. Each row with a selected key sums
    to 1: the indexer's sparse KL target, in O(L * K) memory instead of a dense score product.
    """
    _, _, probs_kernel = _kernels()
    b, h, l, d = q.shape
    hkv, ksel = k.shape[1], idx32.shape[-1]
    q, k, lse = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(lse.float())
    p = torch.empty(b, l, ksel, device=q.device, dtype=torch.float32)
    # 32 rows, not 64: at d = 128 (bf16, 16 heads) 64 rows take all 255 registers, 32 take 128 (ptxas, sm_90)
    block_k = block_k or _block_k(_FWD_BLOCK_BYTES, _pad(d) * q.element_size(), 32)
    nkb = -(-ksel // block_k)
    probs_kernel[(l, b * nkb)](
        q, k, idx32, lse, p, float(scale), 1.0 / h,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        idx32.stride(0), idx32.stride(1),
        lse.stride(0), lse.stride(1),
        p.stride(0), p.stride(1),
        hkv, ksel, nkb,
        # two stages, not three: the pipelined head loop at fp32 and d_qk 576 needs 262 KB of shared memory
        # with three (more than the 227 KB of an H100/H200), 131 KB with two
        BLOCK_K=block_k, num_warps=4, num_stages=2, **_shared_constexprs(q, k),
    )
    return p
