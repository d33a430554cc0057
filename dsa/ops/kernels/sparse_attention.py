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

# Rows per gathered K (+ V) block: as many as fit a byte budget (64 rows of d = 128, bf16, K and V, in the
# forward; half that in the backward, which also keeps dS, dP and the dK/dV blocks). The MLA head (576 + 512,
# bf16) takes 32 rows forward and 16 backward.
_FWD_BLOCK_BYTES = 64 * 256 * 2
_BWD_BLOCK_BYTES = 32 * 256 * 2
# Query heads per program: a group larger than this (MLA in MQA mode: 128 heads on one K/V) is split over
# several programs per query. 64 rows keep the forward's [BLOCK_H, d_v] fp32 accumulator (512 wide in MLA)
# and the backward's [BLOCK_H, d_qk] dQ in registers at 8 warps.
_MAX_BLOCK_H = 64
# The backward at the MLA head dims keeps dQ [BLOCK_H, 576] fp32 and the dK/dV blocks: 64 heads ask for 381 KB
# of shared memory (sm_90a, bf16; scripts/check_kernel_resources.py), 32 heads in two stages for 137 KB.
_MAX_BLOCK_H_BWD_WIDE = 32
# The backward keeps dQ [BLOCK_H, d_qk] fp32 in registers: from this many score + value dims (padded) it runs
# 8 warps, and the forward with its [BLOCK_H, d_v] accumulator too.
_WIDE_HEADS = 1024
# dK/dV by atomics (one fp32 atomic add per gathered element and head block) or by the inverted key -> queries
# index (a program per key row, no atomics, deterministic). The inverted kernel re-reads q and dO of every
# head of the group per (query, key) pair: measured on an H200 at k = 2048 (data/bench/mla/) it is slower in
# every layout, 1.5x at MHA 16 (G = 1, 16K), 9x at GQA 16/2, 41x at MQA 64 x 128, 20x at MLA 128 (4K), so
# atomics beat it everywhere; the inverted index is there for runs that need bitwise-repeatable grads.
# 'headsum': dQ by the dQ kernel alone, dK/dV by a kernel per (query, block of slots, KV head) that sums the
# G heads of the group in registers before its atomics (sparse_attn_dkv_headsum_kernel: its docstring gives
# the atomic bytes per pair of each strategy). Timed on an H200 at MLA 128 x 576/512, k = 2048 (v a view of
# k; data/bench/mla/h200-mla-headsum.json): the backward 1.5% faster at 16K, 5.6% at 32K, with 7.6x fewer
# atomic bytes. 'auto' takes it there only (G >= HEADSUM_MIN_GROUP with v a view of k), where it was timed.
DKV_DEFAULT = "auto"
HEADSUM_MIN_GROUP = 128
DKV_MODES = ("auto", "atomic", "inverted", "headsum")
# The wide heads' tiles, from the H200 sweep at MLA 128 x 576/512, L = 16K (data/bench/mla/h200-mla-tiles-16k):
# forward 64 heads x 32 rows (173 TFLOP/s; 16 rows: 113), backward 32 heads x 32 rows (68; 16 rows: 51).
_WIDE_BLOCK_K = {"fwd": 32, "bwd": 32}
# The headsum dK/dV kernel's tiles (BLOCK_H, BLOCK_K, warps, stages), chosen without a GPU by compiling for
# sm_90a (scripts/check_kernel_resources.py --only attention --all-tiles; not timed yet). Its registers hold
# the fp32 accumulators of a whole [BLOCK_K, d] key block across the head loop, so BLOCK_K decides the fit:
# - MLA 128 x 576/512 with v a view of k (the layer's path): BLOCK_K 64 is the smallest M of Hopper's wgmma
#   and its [64, 512 + 64] accumulators take 144 of 255 registers at 8 warps; 8 heads per step (16 rows of
#   the interleaved [dO; q] tile) leave 176 B spilled, mostly outside the loop (16 heads: 300 B, 32: 936 B;
#   4 warps cannot hold the accumulators; 16 warps get 128 registers and spill more). 131 KB shared memory.
#   The mma.sync alternative (16 heads x 32 rows) spills nothing: scripts/gpu/gpu_complete.sh mlabwd times both.
# - MLA dims with v apart: two [BLOCK_K, 512] accumulators; 32 rows (mma.sync) x 16 heads, no spill.
# - narrow heads (the other layouts): 32 heads x 64 rows, 8 warps, no spill (MQA 64 x 128: 170 registers).
# - fp32 (tests, small sizes): 16 heads x 16 rows.
_HEADSUM_TILE = {("wide", True): (8, 64, 8, 2), ("wide", False): (16, 32, 8, 2), "narrow": (32, 64, 8, 2),
                 "fp32": (16, 16, 8, 2)}


def _kernels():
    from . import _sparse_attn_kernels as m

    return (jit(m.sparse_attn_fwd_kernel), jit(m.sparse_attn_bwd_kernel), jit(m.sparse_attn_probs_kernel),
            jit(m.sparse_attn_dkv_inv_kernel), jit(m.sparse_attn_dkv_headsum_kernel),
            jit(m.sparse_attn_probs_query_kernel))


def _lastdim_contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _pad(n: int) -> int:
    """A head dim padded to a power of two of at least 16 (the smallest tl.dot size)."""
    return max(16, next_pow2(n))


def split_dim(d: int) -> tuple[int, int]:
    """The score dim as two tl.dot widths (D1, D2): D1 the largest power of two <= d (at least 16), D2 the
    rest padded to a power of two of at least 16, 0 when there is no rest. 576 -> (512, 64), 128 -> (128, 0),
    40 -> (32, 16): no product is padded beyond the next 16-multiple of its own part."""
    d1 = max(16, 1 << (int(d).bit_length() - 1))
    rest = d - d1
    return d1, (_pad(rest) if rest > 0 else 0)


def _block_k(budget: int, row_bytes: int, largest: int) -> int:
    """Rows per gathered block: ``largest`` halved while a block outgrows ``budget`` bytes, at least 16."""
    block = largest
    while block > 16 and block * row_bytes > budget:
        block //= 2
    return block


def v_from_k(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether v is k's first D1 columns (MLA's latent as both key and value: ``v = k[..., :d_latent]``), so
    that the kernels can use each gathered K block as the V block."""
    d1 = split_dim(k.shape[-1])[0]
    return v.shape[-1] == d1 < k.shape[-1] and v.data_ptr() == k.data_ptr() and v.stride() == k.stride() \
        and v.dtype == k.dtype


def auto_dkv(group: int, v_is_k_view: bool) -> str:
    """The dK/dV strategy 'auto' takes for `group` query heads per K/V head: 'headsum' at MLA-like layouts
    (a group of at least HEADSUM_MIN_GROUP reading V from K, where it was timed faster), else 'atomic'."""
    return "headsum" if v_is_k_view and group >= HEADSUM_MIN_GROUP else "atomic"


def attn_meta(g: int, d: int, dv: int, dtype: torch.dtype, pass_: str, *, block_h=None, block_k=None,
              num_warps=None, num_stages=None, interp: bool = False, shared_kv: bool = False) -> dict:
    """The compile-time arguments of the forward (pass_ 'fwd') or backward ('bwd') kernel for a group of g
    query heads per K/V head, score dim d, value dim dv: G, BLOCK_H (heads per program), D = D1 + D2,
    DV_PAD, BLOCK_K, dot precision, num_warps [, num_stages]. The launch code and
    scripts/check_kernel_resources.py both take the tile from here."""
    d1, d2 = split_dim(d)
    elem = torch.empty((), dtype=dtype).element_size()
    wide = d1 + d2 + _pad(dv) >= _WIDE_HEADS
    most = _MAX_BLOCK_H_BWD_WIDE if wide and pass_ == "bwd" else _MAX_BLOCK_H
    block_h = block_h or min(_pad(g), most)
    row_bytes = (d1 + d2 + _pad(dv)) * elem
    if wide and elem < 4:
        block_k = block_k or _WIDE_BLOCK_K[pass_]
    elif pass_ == "fwd":
        block_k = block_k or _block_k(_FWD_BLOCK_BYTES * (2 if wide else 1), row_bytes, 64 if elem < 4 else 32)
    else:
        block_k = block_k or _block_k(_BWD_BLOCK_BYTES, row_bytes, 32 if elem < 4 else 16)
    meta = dict(G=g, BLOCK_H=block_h, D=d, D1=d1, D2=max(d2, 16), HAS_TAIL=d2 > 0, DV=dv, DV_PAD=_pad(dv),
                BLOCK_K=block_k, PREC="ieee" if dtype == torch.float32 else "tf32", INTERP=interp,
                V_FROM_K=shared_kv, num_warps=num_warps or (8 if wide else 4))
    if num_stages is not None or wide:
        meta["num_stages"] = num_stages or 2
    return meta


def dkv_meta(g: int, d: int, dv: int, dtype: torch.dtype, *, block_h=None, block_k=None, num_warps=None,
             num_stages=None, interp: bool = False, shared_kv: bool = False, aligned: bool = False) -> dict:
    """The compile-time arguments of the headsum dK/dV kernel (sparse_attn_dkv_headsum_kernel) for a group of
    g query heads per K/V head, score dim d, value dim dv: attn_meta's, at _HEADSUM_TILE's defaults (wide: MLA's
    576/512; narrow: the rest) unless given. BLOCK_H heads per step of the kernel's loop over the group,
    BLOCK_K selected slots per program; ALIGNED (aligned): every q and dO row starts on 16 bytes (see
    rows_aligned), which lets the kernel load both through one pointer tile with vector loads."""
    d1, d2 = split_dim(d)
    wide = d1 + d2 + _pad(dv) >= _WIDE_HEADS
    elem = torch.empty((), dtype=dtype).element_size()
    key = "fp32" if elem == 4 else ("wide", shared_kv) if wide else "narrow"
    bh, bk, warps, stages = _HEADSUM_TILE[key]
    block_h, block_k = block_h or min(_pad(g), bh), block_k or bk
    # tl.dot's smallest size is 16: the latent path's products run over 2 * BLOCK_H interleaved rows
    if block_h < (8 if shared_kv else 16) or block_k < 16:
        raise ValueError(f"headsum tile: block_h >= {8 if shared_kv else 16} and block_k >= 16, got block_h "
                         f"{block_h}, block_k {block_k}")
    meta = attn_meta(g, d, dv, dtype, "bwd", block_h=block_h, block_k=block_k,
                     num_warps=num_warps or warps, num_stages=num_stages or stages, interp=interp,
                     shared_kv=shared_kv)
    return dict(meta, ALIGNED=aligned)


def rows_aligned(*xs: torch.Tensor) -> bool:
    """Whether every row (last dim) of each tensor, at any index of the other dims, starts on a 16-byte
    boundary: 16-byte aligned data and strides of whole 16-byte units."""
    return all(x.data_ptr() % 16 == 0 and all(s * x.element_size() % 16 == 0 for s in x.stride()[:-1])
               for x in xs)


def _leading_strides(*xs: torch.Tensor) -> tuple[int, ...]:
    """The stride arguments of the launches: every stride of each tensor but its last (unit) one, in order."""
    return tuple(st for x in xs for st in x.stride()[:-1])


def _meta(q, k, v, pass_, **tile) -> tuple[dict, int]:
    meta = attn_meta(q.shape[1] // k.shape[1], q.shape[-1], v.shape[-1], q.dtype, pass_, interp=interpret_mode(),
                     shared_kv=v_from_k(k, v), **tile)
    return meta, -(-meta["G"] // meta["BLOCK_H"])


def _fwd(q, k, v, idx32, scale, block_k=None, num_warps=None, block_h=None, num_stages=None):
    """q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v) -> o (B, H, L, d_v), lse (B, H, L) fp32."""
    fwd_kernel = _kernels()[0]
    b, h, l, _ = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    o = torch.empty(b, h, l, dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(b, h, l, device=q.device, dtype=torch.float32)
    meta, nhb = _meta(q, k, v, "fwd", block_h=block_h, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
    fwd_kernel[(l * nhb, b * hkv)](
        q, k, v, idx32, o, lse, scale,
        *_leading_strides(q, k, v, idx32, o, lse),
        hkv, idx32.shape[-1], nhb,
        **meta,
    )
    return o, lse


def inverted_index(idx32: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection inverted: for each key row, the queries that selected it, in query order.

    idx32 (B, L, K) int32, -1 at unused slots -> (inv_t (N,) int32: query positions, grouped by (batch, key);
    start (B * seq_len + 1,) int32: the queries of key s of batch b are inv_t[start[b*L+s] : start[b*L+s+1]]).
    A key listed twice by one query appears twice (it weighs twice). Deterministic: a stable sort.
    """
    b, l, k = idx32.shape
    flat = idx32.reshape(b, l * k).long()
    row0 = torch.arange(b, device=idx32.device, dtype=torch.long)[:, None] * seq_len
    key = torch.where(flat >= 0, flat + row0, b * seq_len).reshape(-1)  # unused slots sort to the end
    sk, perm = torch.sort(key, stable=True)
    inv_t = ((perm % (l * k)) // k).to(torch.int32)
    bounds = torch.arange(b * seq_len + 1, device=idx32.device, dtype=torch.long)
    start = torch.searchsorted(sk, bounds).to(torch.int32)
    return inv_t, start


def _dkv_inverted(q, k, v, idx32, do, lse, delta, scale, gk, gv, block_t=None):
    """dK, dV by the inverted index (written once per row, no atomics) into gk, gv (k's and v's dtype)."""
    dkv_kernel = _kernels()[3]
    b, h, l, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    inv_t, start = inverted_index(idx32, l)
    block_t = block_t or max(1, min(32, 8192 // max(_pad(d), _pad(dv))))
    dkv_kernel[(l, b * hkv)](
        q, k, v, do, lse, delta, inv_t, start, gk, gv, scale,
        *_leading_strides(q, k, v, do, lse, gk, gv),
        l, hkv,
        G=h // hkv, D=d, D_PAD=next_pow2(d), DV=dv, DV_PAD=next_pow2(dv), BLOCK_T=block_t, num_warps=4,
    )


def _dq(q, k, v, idx32, do, lse, delta, scale, gq, gk=None, gv=None, **tile) -> None:
    """dQ into gq (q's shape and dtype) by sparse_attn_bwd_kernel; with gk, gv (fp32, zero-filled, k's and
    v's shapes) also dK/dV by its atomics (one per element and head block), else dQ only."""
    bwd_kernel = _kernels()[1]
    b, _, l, _ = q.shape
    hkv = k.shape[1]
    atomic = gk is not None
    gk, gv = (gk, gv) if atomic else (gq, gq)  # dQ only: the dK/dV pointers are never used
    meta, nhb = _meta(q, k, v, "bwd", **tile)
    bwd_kernel[(l * nhb, b * hkv)](
        q, k, v, idx32, do, lse, delta, gq, gk, gv, scale,
        *_leading_strides(q, k, v, idx32, do, lse, gq, gk, gv),
        hkv, idx32.shape[-1], nhb,
        DKV_ATOMIC=atomic, **meta,
    )


def _dkv_headsum(q, k, v, idx32, do, lse, delta, scale, **tile) -> tuple[torch.Tensor, torch.Tensor]:
    """(dk (B, H_kv, L, d_qk), dv (B, H_kv, L, d_v)) in k's and v's dtypes by sparse_attn_dkv_headsum_kernel
    (the G heads summed before the atomics), for q (B, H, L, d_qk), do (B, H, L, d_v), lse and delta
    (B, H, L) fp32; tile: dkv_meta's knobs. When v is a view of k's first columns (v_from_k), dk holds dV too
    and dv is zeros: the latent's gradient (k's plus v's, as autograd sums them through the view) is the same,
    rounded once instead of twice."""
    kernel = _kernels()[4]
    b, h, l, d = q.shape
    hkv, dv, ksel = k.shape[1], v.shape[-1], idx32.shape[-1]
    meta = dkv_meta(h // hkv, d, dv, q.dtype, interp=interpret_mode(), shared_kv=v_from_k(k, v),
                    aligned=rows_aligned(q, do), **tile)
    gk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
    gv = gk if meta["V_FROM_K"] else torch.zeros(v.shape, device=v.device, dtype=torch.float32)
    nkb = -(-ksel // meta["BLOCK_K"])
    kernel[(l * nkb, b * hkv)](
        q, k, v, idx32, do, lse, delta, gk, gv, scale,
        *_leading_strides(q, k, v, idx32, do, lse, gk, gv),
        hkv, ksel, nkb,
        **meta,
    )
    if meta["V_FROM_K"]:
        return gk.to(k.dtype), torch.zeros_like(v)
    return gk.to(k.dtype), gv.to(v.dtype)


DELTA_CHUNK_ELEMENTS = 2**28  # whole fp32 copies of dO and O: 64 GiB at MLA 128 x 512, L = 128K (an H200's OOM)


def _row_dot(do: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """do, o (B, H, L, d_v) -> (B, H, L) float32 sum over d_v of do * o in fp32, a chunk of L at a time."""
    b, h, l, dv = o.shape
    step = max(1, DELTA_CHUNK_ELEMENTS // max(1, b * h * dv))
    out = torch.empty(b, h, l, device=o.device, dtype=torch.float32)
    for s in range(0, l, step):
        out[:, :, s:s + step] = (do[:, :, s:s + step].float() * o[:, :, s:s + step].float()).sum(-1)
    return out


def _bwd(q, k, v, idx32, o, lse, do, scale, block_k=None, num_warps=None, block_h=None, dkv=None,
         num_stages=None, dkv_tile=None):
    """The gradients (dq, dk, dv) in the dtypes of (q, k, v); do (B, H, L, d_v) the output's gradient.
    dkv (default DKV_DEFAULT): 'auto' (see auto_dkv), 'atomic' (dK/dV accumulate in fp32 by atomics in the dQ
    kernel), 'inverted' (a second kernel over the inverted index; deterministic) or 'headsum' (a second kernel
    summing the heads before its atomics; with v a view of k, dk then carries dV and dv is zeros, see
    _dkv_headsum).
    block_k, num_warps, block_h, num_stages: the dQ kernel's tile; dkv_tile: the headsum kernel's (a dict
    of the same knobs, see dkv_meta)."""
    dkv = dkv or DKV_DEFAULT
    if dkv not in DKV_MODES:
        raise ValueError(f"dkv must be one of {', '.join(map(repr, DKV_MODES))}, got {dkv!r}")
    if dkv == "auto":
        dkv = auto_dkv(q.shape[1] // k.shape[1], v_from_k(k, v))
    do = _lastdim_contig(do)
    delta = _row_dot(do, o)  # (B, H, L): rowsum(dO * O) = rowsum(P * dP)
    gq = torch.empty_like(q)
    tile = dict(block_h=block_h, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
    if dkv == "atomic":
        gk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        gv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        _dq(q, k, v, idx32, do, lse, delta, scale, gq, gk, gv, **tile)
        return gq, gk.to(k.dtype), gv.to(v.dtype)
    _dq(q, k, v, idx32, do, lse, delta, scale, gq, **tile)
    if dkv == "headsum":
        return (gq, *_dkv_headsum(q, k, v, idx32, do, lse, delta, scale, **(dkv_tile or {})))
    gk, gv = torch.empty_like(k), torch.empty_like(v)
    _dkv_inverted(q, k, v, idx32, do, lse, delta, scale, gk, gv)
    return gq, gk, gv


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


# The probabilities kernel: 'slots' (a program per (query, block of slots), the query's head tiles reloaded
# per block: 1073 ms at MLA-MQA 128K on an H200, 37 TFLOP/s, data/bench/map/profile/) or 'query' (a program per
# query over all its slots, the head tiles loaded once: not yet timed; the GPU stage `probs` times both)
PROBS_KERNEL = "slots"
PROBS_KERNELS = ("slots", "query")


@torch.no_grad()
def sparse_attention_probs(
    q: torch.Tensor, k: torch.Tensor, idx32: torch.Tensor, lse: torch.Tensor, scale: float, *, block_k=None,
    block_h=None, kernel: str | None = None,
) -> torch.Tensor:
    """The sparse attention probabilities per selected slot, averaged over the H query heads (no grad).

    q (B, H, L, d_qk); k (B, H_kv, L, d_qk); idx32 (B, L, K) int32 contiguous, -1 at unused slots; lse
    (B, H, L) fp32 as :func:`sparse_attention` returned it for these q, k, idx32 and scale.
    returns p (B, L, K) fp32: p[b, t, j] = mean_h exp(scale * q[b, h, t] . k[b, h // G, idx32[b, t, j]]
    - lse[b, h, t]), 0 at unused slots and for queries whose lse is -inf. Each row with a selected key sums
    to 1: the indexer's sparse KL target, in O(L * K) memory instead of a dense score product.
    kernel: 'slots' or 'query' (default PROBS_KERNEL): the same probabilities up to fp32 summation order;
    block_k, block_h: slots and heads per block (default: the launch's own; tuning and tests only).
    """
    kernel = kernel or PROBS_KERNEL
    if kernel not in PROBS_KERNELS:
        raise ValueError(f"kernel must be one of {PROBS_KERNELS}, got {kernel!r}")
    b, h, l, _ = q.shape
    hkv, ksel = k.shape[1], idx32.shape[-1]
    q, k, lse = _lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(lse.float())
    p = torch.empty(b, l, ksel, device=q.device, dtype=torch.float32)
    args = (q, k, idx32, lse, p, float(scale), 1.0 / h, *_leading_strides(q, k, idx32, lse, p), hkv, ksel)
    if kernel == "query":
        _probs_by_query(q, k, args, block_k, block_h)
        return p
    meta, nhb = _meta(q, k, k, "fwd", block_h=block_h)
    meta = {n: meta[n] for n in ("G", "BLOCK_H", "D", "D1", "D2", "HAS_TAIL", "PREC", "INTERP")}  # no V
    # 32 rows, not 64: at d = 128 (bf16, 16 heads) 64 rows take all 255 registers, 32 take 128 (ptxas, sm_90)
    block_k = block_k or _block_k(_FWD_BLOCK_BYTES, (meta["D1"] + meta["D2"]) * q.element_size(), 32)
    nkb = -(-ksel // block_k)
    _kernels()[2][(l, b * nkb)](
        *args, nkb, nhb,
        # two stages, not three: the pipelined head loop at fp32 and d_qk 576 needs 262 KB of shared memory
        # with three (more than the 227 KB of an H100/H200), 131 KB with two
        BLOCK_K=block_k, num_warps=4, num_stages=2, **meta,
    )
    return p


def _probs_by_query(q, k, args: tuple, block_k=None, block_h=None) -> None:
    """Launches ``sparse_attn_probs_query_kernel`` (one program per query) on sparse_attention_probs's
    arguments, at the forward's tiles: it holds the forward's q tiles and gathers its key blocks, without the
    value accumulator."""
    meta, nhb = _meta(q, k, k, "fwd", block_k=block_k, block_h=block_h)
    keep = ("G", "BLOCK_H", "D", "D1", "D2", "HAS_TAIL", "BLOCK_K", "PREC", "INTERP", "num_warps", "num_stages")
    b, _, l, _ = q.shape
    _kernels()[5][(l, b)](*args, nhb, **{n: meta[n] for n in keep if n in meta})
