"""Decode-step kernels (Triton; the public ops are in :mod:`dsa.ops.decode`, which check the inputs).

- :func:`decode_attention_triton`: split-K attention of new queries over selected cached rows (sparse) or over
  every cached row up to the query (dense flash decoding); the splits are merged by their log-sum-exp.
- :func:`decode_indexer_scores_triton`, :func:`decode_indexer_topk_triton`: the indexer scores of new queries
  over the cached indexer keys (bf16, or FP8: e4m3 operands and a per-key scale), then the top-k among the
  positions s <= q_pos (:func:`decode_selection`: the radix top-k in one or two stages, or torch.topk's k-th
  score for one row).
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit, next_pow2
from .indexer import min_dot_k
from .radix_topk import radix_topk, radix_topk_split, torch_topk_positions

# programs to aim for when splitting the rows of one query: about two waves on an H100/H200 (132 SMs)
TARGET_PROGRAMS = 264
# The decode top-k over R rows of S scores, by the fastest measured on an H200 (k = 2048, MLA and MQA alike;
# data/bench/decode/topk/h200-decode-topk-2.json, ms at S = 32K / 128K): one row -> torch.topk's k-th score and
# a compaction (0.11 / 0.13, against 0.23 / 0.71 for the radix top-k: one program for the whole row); rows of
# at least SPLIT_MIN_CHUNKS chunks of 4k scores -> the two-stage radix top-k (128K, 16 chunks: 0.38 / 0.49 at
# B = 16 / 64, against 0.76 / 0.80 one-stage, 0.64 / 1.07 by torch.topk); else the one-stage radix top-k (32K,
# 4 chunks: 0.24 / 0.25 against 0.27 / 0.32 in two stages). Between 4 and 16 chunks not measured.
SPLIT_MIN_CHUNKS = 8


def _kernels() -> dict:
    from . import _decode_kernels as m

    return {n: jit(getattr(m, n)) for n in ("decode_attn_kernel", "decode_index_scores_kernel")}


def _tiles(g: int, d: int, dv: int, elem_bytes: int = 2) -> tuple[int, int, int, int]:
    """(BLOCK_H, BLOCK_D, BLOCK_K, num_warps): a head block of at least 16 (tl.dot's smallest M), up to 64 heads
    of one K/V when the value rows are short, 16 for MLA's 512-wide values (the accumulator is BLOCK_H x DV).
    fp32 rows at MLA's width take half the key block: 32 x 512 fp32 value tiles, pipelined, need 310 KB of
    shared memory (measured on an H200, whose limit is 227 KB)."""
    dv_pad = max(16, next_pow2(dv))
    block_h = max(16, min(next_pow2(g), 64 if dv_pad <= 128 else 16))
    block_d = max(16, min(64, next_pow2(d)))
    block_k = (16 if elem_bytes >= 4 else 32) if dv_pad >= 256 else 64
    warps = 8 if dv_pad >= 256 or block_h >= 64 else 4
    return block_h, block_d, block_k, warps


def n_splits(programs: int, ksel: int, block_k: int, splits: int | None = None) -> int:
    """Splits of the rows of one query: enough programs to fill the GPU, never fewer than BLOCK_K rows each."""
    most = max(1, -(-ksel // block_k))
    if splits is not None:
        return max(1, min(splits, most))
    return max(1, min(most, -(-TARGET_PROGRAMS // max(1, programs))))


def merge_splits(o: torch.Tensor, m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """o (R, H, N, DV) normalised partials, m, l (R, H, N) base-2 running max and sum -> (R, H, DV) float32."""
    m_max = m.amax(-1, keepdim=True)
    m_safe = torch.where(torch.isinf(m_max), torch.zeros_like(m_max), m_max)
    wgt = l * torch.exp2(m - m_safe)  # an empty split: l = 0, weight 0
    tot = wgt.sum(-1, keepdim=True)
    return (o * wgt[..., None]).sum(2) / torch.where(tot > 0, tot, torch.ones_like(tot))


@torch.no_grad()
def decode_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor | None, q_pos: torch.Tensor | None,
    scale: float, *, splits: int | None = None,
) -> torch.Tensor:
    """q (B, H, T, d_qk), k (B, H_kv, S, d_qk), v (B, H_kv, S, d_v) with unit last strides; idx (B, T, K) int32
    (sparse) or None with q_pos (B, T) (dense, every row s <= q_pos) -> (B, H, T, d_v) in q's dtype.
    splits: the split-K count (default: enough programs to fill the GPU)."""
    b, h, t, d = q.shape
    hkv, s_len, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // hkv
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    block_h, block_d, block_k, warps = _tiles(g, d, dv, q.element_size())
    nhb = -(-g // block_h)
    dense = idx is None
    ksel = s_len if dense else idx.shape[-1]
    if dense:
        pos = q_pos.to(torch.int32).contiguous()
        idx_t = pos  # unused by the dense kernel; a valid pointer
        sib = sit = 0
    else:
        idx_t = idx.contiguous()
        pos = torch.zeros(b, t, dtype=torch.int32, device=q.device)
        sib, sit = idx_t.stride(0), idx_t.stride(1)
    ns = n_splits(b * t * hkv * nhb, ksel, block_k, splits)
    split = -(-ksel // ns)
    split = -(-split // block_k) * block_k  # whole blocks per split
    ns = -(-ksel // split)
    op = torch.empty(b * t, h, ns, dv, device=q.device, dtype=torch.float32)
    mp = torch.empty(b * t, h, ns, device=q.device, dtype=torch.float32)
    lp = torch.empty_like(mp)
    _kernels()["decode_attn_kernel"][(b * t * ns * hkv * nhb,)](
        q, k, v, idx_t, pos, op, mp, lp, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        sib, sit,
        t, hkv, nhb, ksel, split, ns,
        G=g, BLOCK_H=block_h, D=d, BLOCK_D=block_d, DV=dv, DV_PAD=max(16, next_pow2(dv)), BLOCK_K=block_k,
        DENSE=dense, INTERP=interpret_mode(), num_warps=warps,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 exact: tl.dot would round fp32 to TF32
    )
    out = merge_splits(op, mp, lp)  # (B*T, H, DV)
    return out.view(b, t, h, dv).transpose(1, 2).to(q.dtype)


@torch.no_grad()
def decode_indexer_scores_triton(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, q_pos: torch.Tensor, *,
    k_scale: torch.Tensor | None = None, block_s: int = 64,
) -> torch.Tensor:
    """q_idx (B, T, H_I, d_I), k_idx (B, S, d_I), w (B, T, H_I), q_pos (B, T) -> (B, T, S) float32 scores,
    -inf past q_pos. Computes in the keys' dtype (bf16 keys: bf16 products, fp32 accumulation).
    k_scale (B, S) fp32: FP8 scores, q_idx and k_idx hold e4m3 values (as e4m3, or their bf16 copies), w the
    head weights times the query scales; each key's score is multiplied by its scale after the head sum."""
    b, t, h_i, d_i = q_idx.shape
    s_len = k_idx.shape[1]
    q_idx = q_idx.to(k_idx.dtype).contiguous()
    k_idx = k_idx if k_idx.stride(-1) == 1 else k_idx.contiguous()
    w = w.contiguous()
    pos = q_pos.to(torch.int32).contiguous()
    out = torch.empty(b, t, s_len, device=q_idx.device, dtype=torch.float32)
    ks = k_scale if k_scale is not None else out  # a valid pointer, not read without FP8
    _kernels()["decode_index_scores_kernel"][(b * t, -(-s_len // block_s))](
        q_idx, k_idx, w, pos, ks, out,
        q_idx.stride(0), q_idx.stride(1), q_idx.stride(2),
        k_idx.stride(0), k_idx.stride(1),
        w.stride(0), w.stride(1), ks.stride(0),
        t, s_len,
        HI=h_i, HI_PAD=max(16, next_pow2(h_i)), DI=d_i, DI_PAD=max(min_dot_k(k_idx.dtype), next_pow2(d_i)),
        BLOCK_S=block_s, FP8=k_scale is not None, F8OPS=k_idx.dtype.itemsize == 1,
        INTERP=interpret_mode(), num_warps=4, PREC="ieee" if k_idx.dtype == torch.float32 else "tf32",
    )
    return out


@torch.no_grad()
def decode_indexer_topk_triton(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, k: int, q_pos: torch.Tensor, *,
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scores of :func:`decode_indexer_scores_triton` (FP8 with ``k_scale``), then the top-k of each query
    among its first q_pos + 1 rows (the selection :func:`decode_selection` picks: the same positions by each)
    -> (B, T, k) int32 positions ascending, -1 in unused slots; k <= S."""
    scores = decode_indexer_scores_triton(q_idx, k_idx, w, q_pos, k_scale=k_scale)
    lengths = (q_pos.to(torch.int32) + 1).clamp(max=k_idx.shape[1])
    how = decode_selection(scores.numel() // scores.shape[-1], scores.shape[-1], k)  # B x T rows of S scores
    if how == "radix":
        return radix_topk(scores, k, lengths, out_dtype=torch.int32)
    return (torch_topk_positions if how == "torch" else radix_topk_split)(scores, k, lengths)


def decode_selection(rows: int, n: int, k: int) -> str:
    """Which top-k a decode step runs over ``rows`` rows of ``n`` scores: 'torch' (one row), 'split' (rows of
    at least SPLIT_MIN_CHUNKS chunks of 4k scores) or 'radix' (see SPLIT_MIN_CHUNKS for the measurements).
    All three return the same positions (radix_topk's contract)."""
    if rows == 1:
        return "torch"
    return "split" if n >= SPLIT_MIN_CHUNKS * 4 * k else "radix"
