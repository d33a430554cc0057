"""Lightning-indexer kernels: top-k selection without an L x L tensor, and scores at selected positions
with their backward.

``indexer_topk_threshold``: a threshold search on recomputed score tiles (Triton), memory O(L * (k + NT)):
  pass R   per-row max/min of I[t, s<=t];
  pass C*  per-row counts of I >= NT thresholds spread over the current bracket [lo, hi); the bracket
           keeps the invariant count(I >= lo) >= need > count(I >= hi), need = min(k_t, t+1), and shrinks
           (NT+1)x per pass; it stops when the boundary lo <= I < hi holds <= ``boundary`` entries, or the
           bracket is narrower than fp32 resolution (ties: any of them is a correct choice);
  pass E   emits every s with I >= hi (all selected) and the boundary entries with their scores;
  finish   a small torch.topk over the boundary (<= ``boundary`` wide) picks the remaining need - count(>=hi).
Rows with t+1 <= k take every past token (hi = -inf). Selected indices come in ascending position order for
the sure part, then the boundary picks (not sorted by score; the set is what the attention uses).
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit, next_pow2


def _kernels():
    from . import _indexer_kernels as m

    return jit(m.idx_pass_kernel), jit(m.idx_at_fwd_kernel), jit(m.idx_at_bwd_kernel)


def _pad_heads(q_idx, w, hp):
    """q_idx (B, L, H_I, d_I), w (B, L, H_I) zero-padded to hp >= H_I heads (a padded head has weight 0 and adds
    nothing to a score), contiguous. The score pass takes any head count; padding costs hp / H_I in work."""
    h = q_idx.shape[2]
    if hp != h:
        pad = (0, 0, 0, hp - h)
        if q_idx.dtype.itemsize == 1:  # torch pads no float8 tensor: pad its bytes (0x00 is +0.0)
            q_idx = torch.nn.functional.pad(q_idx.view(torch.uint8), pad).view(q_idx.dtype)
        else:
            q_idx = torch.nn.functional.pad(q_idx, pad)
        w = torch.nn.functional.pad(w, (0, hp - h))
    return q_idx.contiguous(), w.contiguous()


# Bytes of the q tiles of one head block of the score pass: 64 query rows x 512 (heads x d_I) bf16 elements, the
# largest all-heads-unrolled tiles that launched on an H200 (8 x 64 and 4 x 128: 196,608 and 229,376 of the
# 232,448 bytes of shared memory at the 64 x 128 score tile for sm_90a; 64 x 128 asked for ~2.2 MB). The
# pipeliner keeps two stages of every unrolled head's tile, so shared memory grows with the block, not with H_I.
HEAD_BLOCK_BYTES = 64 * 512 * 2


def _head_block(hp: int, block_m: int, di_pad: int, elem_bytes: int) -> int:
    """Heads per block of the score pass: the largest divisor of hp whose block_m x di_pad q tiles take at most
    HEAD_BLOCK_BYTES (at least 1). hp itself (one block: every head unrolled) for the sizes that fit whole."""
    fit = max(1, HEAD_BLOCK_BYTES // (block_m * di_pad * elem_bytes))
    return max(d for d in range(1, min(hp, fit) + 1) if hp % d == 0)


def min_dot_k(dtype: torch.dtype) -> int:
    """The smallest K of a tl.dot on ``dtype`` operands: 32 for one-byte (e4m3: Hopper's FP8 wgmma takes K = 32
    per instruction and Triton refuses less), 16 otherwise. Padded columns load zeros and add nothing."""
    return 32 if dtype.itemsize == 1 else 16


def _pass_meta(mode: int, hp: int, di: int, dtype: torch.dtype, block_m: int, block_n: int, nt: int, num_warps: int,
              interp: bool, ks_scaled: bool = False) -> dict:
    """The compile-time arguments (constexprs, warps, stages) of ``idx_pass_kernel`` for qp (B, L, hp, di) of
    ``dtype``: one place for the launch and the ahead-of-time resource check (scripts/check_kernel_resources.py).
    ks_scaled: FP8 scores, each key's column multiplied by its scale (the operands e4m3, or their bf16 copy)."""
    di_pad = max(min_dot_k(dtype), next_pow2(di))
    hb = _head_block(hp, block_m, di_pad, dtype.itemsize)
    return dict(HP=hp, HB=hb, DI=di, DI_PAD=di_pad, NT=nt, BLOCK_M=block_m, BLOCK_N=block_n, MODE=mode,
                IEEE=dtype == torch.float32, INTERP=interp, FP8=ks_scaled,
                F8OPS=dtype.itemsize == 1, num_warps=num_warps, num_stages=2)


def _run_pass(mode, qp, kc, wp, thr, cnt, lo, hi, out, bnd, bndv, rmax, rmin, kmax, block_m, block_n, nt,
              rows=None, num_warps=4, k_scale=None):
    """One launch of the score pass; k_scale (B, L) fp32: FP8 scores (see ``_indexer_kernels``)."""
    kern, _, _ = _kernels()
    b, l, hp, di = qp.shape
    row0, row_end = rows or (0, l)
    grid = (triton_cdiv(row_end - row0, block_m), b)
    ks = k_scale if k_scale is not None else rmax  # not read without FP8
    kern[grid](
        qp, kc, wp, thr, cnt, lo, hi, out, bnd, bndv, rmax, rmin, ks,
        qp.stride(0), qp.stride(1), kc.stride(0), kc.stride(1), wp.stride(0), wp.stride(1),
        cnt.stride(0), cnt.stride(1), lo.stride(0), out.stride(0), out.stride(1), ks.stride(0),
        l, kmax, row0, row_end,
        **_pass_meta(mode, hp, di, qp.dtype, block_m, block_n, nt, num_warps, interpret_mode(),
                     ks_scaled=k_scale is not None),
    )


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@torch.no_grad()
def indexer_topk_threshold(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    k_t: torch.Tensor,
    *,
    nt: int = 16,
    boundary: int = 256,
    max_passes: int = 12,
    block_m: int | None = None,
    block_n: int = 64,
    stats: dict | None = None,
) -> torch.Tensor:
    """Causal indexer top-k with a per-query k, by a threshold search (see the module docstring).

    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I); k_t (B, L) int64 in [1, L].
    returns (B, L, max k) int32 positions, -1 in unused slots (the set of :func:`dsa.ops.indexer_topk`; ties
    broken differently, positions not sorted by score). Inputs are checked by the op."""
    b, l, h, di = q_idx.shape
    if nt % 4:
        raise ValueError(f"nt must be a multiple of 4, got {nt}")
    dev = q_idx.device
    kmax = int(k_t.max())
    hp = next_pow2(h)
    if w.dtype != torch.float32:
        w = w.float()
    qp, wp = _pad_heads(q_idx, w, hp)
    kc = k_idx.to(q_idx.dtype).contiguous()
    if block_m is None:
        block_m = 64 if not interpret_mode() else 16
    f32 = dict(device=dev, dtype=torch.float32)
    t = torch.arange(l, device=dev)
    avail = (t + 1).expand(b, l)
    need = torch.minimum(k_t, avail)
    take_all = need >= avail
    rmax = torch.empty(b, l, **f32)
    rmin = torch.empty(b, l, **f32)
    dummy_f = torch.empty(1, 1, nt, **f32)
    dummy_i = torch.empty(1, 1, nt, device=dev, dtype=torch.int32)
    dummy_l = torch.empty(1, 1, device=dev, dtype=torch.int32)
    args = dict(kmax=kmax, block_m=block_m, block_n=block_n, nt=nt)
    n_pass = 0
    if bool(take_all.all()):
        lo = torch.full((b, l), float("-inf"), **f32)
        hi = lo.clone()
    else:
        _run_pass(0, qp, kc, wp, dummy_f, dummy_i, rmax, rmax, dummy_l, dummy_l, dummy_f, rmax, rmin, **args)
        n_pass += 1
        lo = rmin.clone()
        hi = torch.nextafter(rmax, torch.full_like(rmax, float("inf")))
        cnt_lo = avail.to(torch.int64).clone()
        cnt_hi = torch.zeros(b, l, dtype=torch.int64, device=dev)
        frac = torch.arange(1, nt + 1, **f32) / (nt + 1)
        thr = torch.empty(b, l, nt, **f32)
        cnt = torch.empty(b, l, nt, device=dev, dtype=torch.int32)
        scale = torch.maximum(rmax.abs(), rmin.abs()).clamp(min=1e-30)
        for _ in range(max_passes):
            width_ok = (hi - lo) > scale * 2e-6
            active = ~take_all & ((cnt_lo - cnt_hi) > boundary) & width_ok
            if not bool(active.any()):
                break
            thr.copy_(lo[..., None] + (hi - lo)[..., None] * frac)
            _run_pass(1, qp, kc, wp, thr, cnt, rmax, rmax, dummy_l, dummy_l, dummy_f, rmax, rmin, **args)
            n_pass += 1
            c = cnt.to(torch.int64)
            ge = c >= need[..., None]  # thresholds that still keep >= need entries (a prefix, c decreasing)
            n_ge = ge.sum(-1)  # thresholds in the prefix
            j_lo = (n_ge - 1).clamp(min=0)
            new_lo = torch.where(n_ge > 0, thr.gather(-1, j_lo[..., None])[..., 0], lo)
            new_clo = torch.where(n_ge > 0, c.gather(-1, j_lo[..., None])[..., 0], cnt_lo)
            j_hi = n_ge.clamp(max=nt - 1)
            new_hi = torch.where(n_ge < nt, thr.gather(-1, j_hi[..., None])[..., 0], hi)
            new_chi = torch.where(n_ge < nt, c.gather(-1, j_hi[..., None])[..., 0], cnt_hi)
            lo = torch.where(active, new_lo, lo)
            hi = torch.where(active, new_hi, hi)
            cnt_lo = torch.where(active, new_clo, cnt_lo)
            cnt_hi = torch.where(active, new_chi, cnt_hi)
        lo = torch.where(take_all, float("-inf"), lo)
        hi = torch.where(take_all, float("-inf"), hi)
    cb = max(kmax, boundary)  # buffer width: every sure entry (< need <= kmax) and the boundary fit
    out = torch.full((b, l, cb), -1, device=dev, dtype=torch.int32)
    bnd = torch.full((b, l, cb), -1, device=dev, dtype=torch.int32)
    bndv = torch.full((b, l, cb), float("-inf"), **f32)
    cnt2 = torch.zeros(b, l, nt, device=dev, dtype=torch.int32)
    # Compiled variants of the pass may round a score differently in the last bits (a different reduction
    # order): widen the bracket by a few ulps of the row's scale so that no entry at lo or hi is lost.
    if not bool(take_all.all()):
        lo = torch.where(take_all, lo, lo - scale * 4e-6)
        hi = torch.where(take_all, hi, hi + scale * 4e-6)
    _run_pass(2, qp, kc, wp, dummy_f, cnt2, lo, hi, out, bnd, bndv, rmax, rmin, **{**args, "kmax": cb})
    n_pass += 1
    n_sure = cnt2[..., 0].to(torch.int64)
    n_bnd = cnt2[..., 1].to(torch.int64)
    quota = (need - n_sure).clamp(min=0)
    # boundary picks: the top `quota` boundary scores when the boundary is small; when it is large the bracket
    # is below fp32 resolution (ties), so its first `quota` entries are as good as any.
    nb = boundary
    qmax = int(quota.max()) if quota.numel() else 0
    pos = torch.arange(cb, device=dev)
    if qmax > 0:
        if qmax <= nb:
            top = torch.topk(bndv[..., :nb], qmax, dim=-1, sorted=True).indices  # sorted: a row takes a prefix
            small = (n_bnd <= nb)[..., None]
            pick = torch.where(small, top, pos[:qmax].expand_as(top))
        else:
            pick = pos[:qmax].expand(b, l, qmax)
            if bool((n_bnd <= nb).any()):
                top = torch.topk(bndv[..., :nb], nb, dim=-1, sorted=True).indices
                top = torch.nn.functional.pad(top, (0, qmax - nb), value=0)
                pick = torch.where((n_bnd <= nb)[..., None], top, pick)
        chosen = bnd.gather(-1, pick)  # (B, L, qmax)
        rel = (pos[None, None, :] - n_sure[..., None]).clamp(0, qmax - 1)
        from_b = torch.gather(chosen, -1, rel)
        in_b = (pos[None, None, :] >= n_sure[..., None]) & (pos[None, None, :] < need[..., None])
        out = torch.where(in_b, from_b, out)
    out = out[..., :kmax]
    # Rows whose boundary outgrew the buffer that is ranked exactly (a bracket stopped at fp32 resolution
    # over a plateau of equal scores, e.g. the exact zeros where every head's ReLU is off, or widened past
    # the limit by the ulp margin): re-select them exactly from their full score rows. They are few, and the
    # selection stays exact instead of taking arbitrary boundary entries.
    over = ~take_all & (n_bnd > nb)
    n_fallback = int(over.sum())
    if n_fallback:
        out = _exact_rows(out, over, need, qp[..., :h, :], kc, wp[..., :h])
    valid = pos[None, None, :kmax] < need[..., None]
    if stats is not None:
        stats.update(passes=n_pass, max_boundary=int(n_bnd.max()), max_sure=int(n_sure.max()),
                     fallback_rows=n_fallback)
    return torch.where(valid, out, torch.full_like(out, -1))


def _exact_rows(out: torch.Tensor, rows: torch.Tensor, need: torch.Tensor, q_idx: torch.Tensor,
                k_idx: torch.Tensor, w: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Replaces the selection of the flagged rows by an exact causal top-need from their full score rows.

    out (B, L, kmax) int32; rows (B, L) bool; need (B, L); q_idx (B, L, H_I, d_I); k_idx (B, L, d_I);
    w (B, L, H_I). Memory O(chunk * H_I * L)."""
    kmax = out.shape[-1]
    pos = torch.arange(kmax, device=out.device)
    s = torch.arange(k_idx.shape[1], device=out.device)
    for b in range(rows.shape[0]):
        (t_all,) = rows[b].nonzero(as_tuple=True)
        for c0 in range(0, t_all.numel(), chunk):
            t_c = t_all[c0:c0 + chunk]
            lg = torch.einsum("nhd,kd->nhk", q_idx[b, t_c].float(), k_idx[b].float()).relu_()
            sc = torch.einsum("nhk,nh->nk", lg, w[b, t_c].float())
            sc = sc.masked_fill(s[None, :] > t_c[:, None], float("-inf"))
            # a stable sort: tied scores take the first positions, as every other top-k here does
            top = torch.sort(sc, dim=-1, descending=True, stable=True).indices[:, :kmax].to(out.dtype)
            out[b, t_c] = torch.where(pos[None, :] < need[b, t_c][:, None], top, torch.full_like(top, -1))
    return out


# ----------------------------------------------------------------------------------------------------
# Scores at selected positions, with backward (for the indexer's KL loss).


# Bytes of the [heads, d_I] q tile that one program of the scores-at kernels holds at once: 128 x 128 bf16. Up to
# that the whole tile launched before head blocks (sm_90a: 99 KB of shared memory and 236 spilled bytes in the
# backward at 128 x 128, 83 KB and 48 bytes at 64 x 128), and keeps its code: a block more gathers the keys and
# adds its dk by atomics once more. Shared memory grows with the tile (~132 KB at 256 x 128 in the backward).
AT_HEAD_BLOCK_BYTES = 128 * 128 * 2


def _at_meta(h: int, di: int, dtype: torch.dtype, interp: bool) -> dict:
    """The compile-time arguments of ``idx_at_fwd_kernel`` / ``idx_at_bwd_kernel`` for q_idx (B, L, h, di) of
    ``dtype`` (shared by the launches and scripts/check_kernel_resources.py). HP: the heads padded to a power
    of two >= 16 (the M of tl.dot); HB: heads per block, a power of two >= 16 that divides HP."""
    hp, di_pad = max(16, next_pow2(h)), max(min_dot_k(dtype), next_pow2(di))
    fit = AT_HEAD_BLOCK_BYTES // (di_pad * dtype.itemsize)  # heads whose q rows fit the budget
    hb = min(hp, max(16, 1 << (fit.bit_length() - 1)))  # a power of two, so that it divides hp
    return dict(H=h, HP=hp, HB=hb, DI=di, DI_PAD=di_pad, BLOCK_K=32 if interp else 64,
                IEEE=dtype == torch.float32, INTERP=interp, num_warps=4)


def _scores_at_fwd(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, idx32: torch.Tensor) -> torch.Tensor:
    """I[t, idx[t, j]] for contiguous q_idx (B, L, H_I, d_I), k_idx (B, Lk, d_I), w (B, L, H_I) of one dtype and
    idx32 (B, L, K) int32 -> (B, L, K) fp32, -inf at unused slots."""
    _, fwd, _ = _kernels()
    b, l, h, di = q_idx.shape
    ksel = idx32.shape[-1]
    out = torch.empty(b, l, ksel, device=q_idx.device, dtype=torch.float32)
    fwd[(l, b)](
        q_idx, k_idx, w, idx32, out,
        q_idx.stride(0), q_idx.stride(1), k_idx.stride(0), k_idx.stride(1), w.stride(0), w.stride(1),
        idx32.stride(0), idx32.stride(1),
        ksel, **_at_meta(h, di, q_idx.dtype, interpret_mode()),
    )
    return out


def _scores_at_bwd(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, idx32: torch.Tensor,
                   go: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_scores_at_fwd` for go (B, L, K) fp32 contiguous: dq, dk, dw in their inputs' dtypes."""
    _, _, bwd = _kernels()
    b, l, h, di = q_idx.shape
    ksel = idx32.shape[-1]
    dq = torch.empty(q_idx.shape, device=q_idx.device, dtype=torch.float32)
    dk = torch.zeros(k_idx.shape, device=k_idx.device, dtype=torch.float32)
    dw = torch.empty(w.shape, device=w.device, dtype=torch.float32)
    bwd[(l, b)](
        q_idx, k_idx, w, idx32, go, dq, dk, dw,
        q_idx.stride(0), q_idx.stride(1), k_idx.stride(0), k_idx.stride(1), w.stride(0), w.stride(1),
        idx32.stride(0), idx32.stride(1), dk.stride(0), dk.stride(1),
        ksel, **_at_meta(h, di, q_idx.dtype, interpret_mode()),
    )
    return dq.to(q_idx.dtype), dk.to(k_idx.dtype), dw.to(w.dtype)



def indexer_scores_at_triton(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor,
                             idx: torch.Tensor) -> torch.Tensor:
    """Indexer scores at the selected positions: (B, L, K) fp32, I[t, idx[t, j]], -inf at unused slots.

    q_idx (B, L, H_I, d_I), k_idx (B, Lk, d_I), w (B, L, H_I) of one dtype, idx (B, L, K) int (-1 = unused).
    Differentiable w.r.t. q_idx, k_idx and w (Triton forward and backward). Inputs are checked by the op."""
    from .registered import indexer_scores_at_op  # noqa: PLC0415 (the custom op: one node under torch.compile)

    return indexer_scores_at_op(q_idx.contiguous(), k_idx.contiguous(), w.contiguous(),
                                idx.to(torch.int32).contiguous())
