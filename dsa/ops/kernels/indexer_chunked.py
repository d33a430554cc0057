"""Causal indexer top-k through chunks of stored scores: a Triton score kernel writes the scores of a chunk
of query rows (C x L fp32) and :func:`radix_topk` selects in them. The score kernel (:func:`score_rows_auto`):
from HN_MIN_HEADS indexer heads the heads-as-N kernel (``idx_scores_hn_kernel``: a few queries' heads as the
product's N, keys streamed), else the score pass (``idx_pass_kernel`` mode 3: per key tile one product per
head). Memory O(C * L + L * k), never L x L; the scores are computed once (``indexer_topk_threshold``
recomputes them in every one of its threshold passes) at the price of writing and reading them back once.
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit, next_pow2
from .indexer import _pad_heads, _run_pass, min_dot_k
from .radix_topk import radix_topk

# default chunk: about 2 GiB of fp32 scores. Larger chunks mean fewer launches, each paying the tail of its
# longest rows: on an H100 at L = 64K, k = 2048 the whole selection took 34.4 / 25.7 / 23.1 ms with 1 / 2 / 4 GiB
# chunks (data/bench/h100-selection-stage-tuning-2.json); 2 GiB keeps the scores within 2x the (L, k) int64 output
SCORE_BYTES = 2**31
# query rows x keys per program, warps, of the score pass: the fastest of 8 tiles on an H100 at L = 32K and 64K
# (data/bench/h100-selection-stage-tuning.json: 2.0 ms at 32K vs 2.7 ms for 64 x 64)
SCORE_TILE = (64, 128, 4)
# queries x keys per program, warps, of the heads-as-N score kernel (score_rows_hn): a first guess that keeps its
# [keys, queries x heads] fp32 product at 64 x 128, as the score pass's accumulator; at 64 x 128 on an H200 it
# ran at 862-924 TFLOP/s in FP8 (59-63% of the FP8 matmul rate), 563-614 in bf16, at L = 16K-128K
# (data/bench/indexer/h200-indexer-hn.json)
HN_TILE = (2, 64, 4)
# the heads-as-N kernel from this many (padded) indexer heads on: at 64 heads x 128 it was 4.2-5.0x (FP8) and
# 2.9-3.4x (bf16) faster than the score pass on the H200 (same record), at 4 x 64 1.26-1.43x (L = 64K, 128K:
# data/bench/indexer/h200-indexer-4x64.json); below 4 heads not timed (its product's N = queries x heads
# narrows and every program streams every key for a few queries)
HN_MIN_HEADS = 4


def default_chunk(l: int, block_m: int, batch: int = 1) -> int:
    """Query rows per chunk: about SCORE_BYTES of fp32 scores over the batch, a multiple of block_m, at
    least block_m."""
    return max(block_m, (SCORE_BYTES // (4 * l * batch)) // block_m * block_m)


@torch.no_grad()
def indexer_topk_chunked(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int,
    *,
    chunk: int | None = None,
    k_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal indexer top-k, one k for every query: the set of :func:`dsa.ops.indexer_topk` (positions
    ascending, the first ones among tied scores). q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I);
    top_k int in [1, L]; chunk: query rows whose scores are stored at once (default: about 2 GiB of scores
    over the batch; rounded up to the score tile); k_scale (B, L) fp32: FP8 scores (q_idx, k_idx e4m3 values,
    in e4m3 or bf16; w with the query scales folded in; ``dsa.ops.quantize``). Returns (B, L, top_k) int32, -1
    in unused slots. Inputs are checked by the op."""
    b, l, h, _ = q_idx.shape
    dev = q_idx.device
    qp, wp = _pad_heads(q_idx, w.float(), next_pow2(h))
    kc = k_idx.to(q_idx.dtype).contiguous()
    block_m = score_tile()[0]
    chunk = default_chunk(l, block_m, b) if chunk is None else -(-chunk // block_m) * block_m
    chunk = min(chunk, -(-l // block_m) * block_m)
    scores = torch.empty(b, chunk, l, device=dev, dtype=torch.float32)
    idx = torch.empty(b, l, top_k, device=dev, dtype=torch.int32)
    for t0 in range(0, l, chunk):
        t1 = min(l, t0 + chunk)
        score_rows_auto(qp, kc, wp, scores, t0, t1, k_scale=k_scale)
        lens = torch.arange(t0 + 1, t1 + 1, device=dev, dtype=torch.int32)
        cols = max(t1, top_k)  # the columns past a row's length are never read
        for bi in range(b):  # a 2-D view per batch row: radix_topk reads it in place
            idx[bi, t0:t1] = radix_topk(scores[bi, : t1 - t0, :cols], top_k, lens, out_dtype=torch.int32)
    return idx


def score_rows_auto(qp: torch.Tensor, kc: torch.Tensor, wp: torch.Tensor, scores: torch.Tensor, t0: int, t1: int,
                    k_scale: torch.Tensor | None = None) -> None:
    """:func:`score_rows` (the arguments and the scores written) by the faster kernel for qp's HP padded heads:
    :func:`score_rows_hn` from HN_MIN_HEADS heads on (HP a power of two, as ``_pad_heads`` makes it), else the
    score pass."""
    fn = score_rows_hn if qp.shape[2] >= HN_MIN_HEADS else score_rows
    fn(qp, kc, wp, scores, t0, t1, k_scale=k_scale)


def score_rows_hn(qp: torch.Tensor, kc: torch.Tensor, wp: torch.Tensor, scores: torch.Tensor, t0: int, t1: int,
                  tile: tuple[int, int, int] | None = None, k_scale: torch.Tensor | None = None) -> None:
    """:func:`score_rows` by ``idx_scores_hn_kernel`` (a few queries' heads as the product's N dimension, keys
    streamed): the same scores written in the same places, for the same arguments (HP a power of two).
    tile: (queries, keys, warps) per program, default HN_TILE (queries a power of two, raised by hn_meta)."""
    from . import _indexer_kernels as m  # noqa: PLC0415

    bq, block_n, warps = (2, 16, 4) if interpret_mode() else (tile or HN_TILE)
    b, l, hp, di = qp.shape
    ks = k_scale.float().contiguous() if k_scale is not None else wp  # not read without FP8
    meta = hn_meta(hp, di, qp.dtype, bq, block_n, warps, interpret_mode(), ks_scaled=k_scale is not None)
    grid = (-(-(t1 - t0) // meta["BQ"]), b)
    jit(m.idx_scores_hn_kernel)[grid](
        qp, kc, wp, scores, ks,
        qp.stride(0), qp.stride(1), kc.stride(0), kc.stride(1), wp.stride(0), wp.stride(1),
        scores.stride(0), scores.stride(1), ks.stride(0),
        l, t0, t1, **meta,
    )


def hn_meta(hp: int, di: int, dtype: torch.dtype, bq: int, block_n: int, num_warps: int, interp: bool,
            ks_scaled: bool = False) -> dict:
    """The compile-time arguments of ``idx_scores_hn_kernel`` (one place for the launch and the ahead-of-time
    resource check, scripts/check_kernel_resources.py): bq raised until bq * hp >= 16 (tl.dot's N)."""
    if hp & (hp - 1) or bq & (bq - 1):
        raise ValueError(f"heads ({hp}) and queries per program ({bq}) must be powers of two")
    return dict(HP=hp, DI=di, DI_PAD=max(min_dot_k(dtype), next_pow2(di)), BQ=max(bq, 16 // hp), BLOCK_N=block_n,
                IEEE=dtype == torch.float32, INTERP=interp, FP8=ks_scaled, F8OPS=dtype.itemsize == 1,
                num_warps=num_warps, num_stages=2)


@torch.no_grad()
def indexer_scores_triton(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor,
                          k_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The causal L x L indexer scores by :func:`score_rows_auto`'s kernel: q_idx (B, L, H_I, d_I), k_idx
    (B, L, d_I), w (B, L, H_I), k_scale (B, L) fp32 or None (FP8, as :func:`indexer_topk_chunked`) -> (B, L, L) float32,
    -inf for s > t. Forward only."""
    b, l, h, _ = q_idx.shape
    qp, wp = _pad_heads(q_idx, w.float(), next_pow2(h))
    kc = k_idx.to(q_idx.dtype).contiguous()
    rows = -(-l // score_tile()[0]) * score_tile()[0]
    scores = torch.full((b, rows, l), float("-inf"), device=q_idx.device, dtype=torch.float32)
    score_rows_auto(qp, kc, wp, scores, 0, l, k_scale=k_scale)
    return scores[:, :l]


def score_tile(tile: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The (query rows, keys, warps) per program of the score pass: ``tile`` or SCORE_TILE, a small fixed
    tile in the interpreter. Chunks start at multiples of its query rows."""
    return (16, 64, 4) if interpret_mode() else (tile or SCORE_TILE)


def score_rows(qp: torch.Tensor, kc: torch.Tensor, wp: torch.Tensor, scores: torch.Tensor, t0: int, t1: int,
               tile: tuple[int, int, int] | None = None, k_scale: torch.Tensor | None = None) -> None:
    """Writes the causal indexer scores of query rows t0 <= t < t1 into ``scores[:, t - t0, :t + 1]`` (the rest
    of each row is left as it was). qp (B, L, HP, d_I) with any HP (zero-padded heads allowed), kc (B, L,
    d_I), wp (B, L, HP) fp32 (zero weights on padded heads), scores (B, >= t1 - t0, L) fp32; t0 a multiple
    of the tile's query rows. tile: (query rows, keys, warps) per program, default SCORE_TILE. k_scale (B, L)
    fp32: FP8 scores (each key column times its scale)."""
    block_m, block_n, warps = score_tile(tile)
    dev = scores.device
    unused = torch.empty(1, 1, 1, device=dev, dtype=torch.float32)  # arguments the score mode does not touch
    unused_i = torch.empty(1, 1, 1, device=dev, dtype=torch.int32)
    _run_pass(3, qp, kc, wp, unused, unused_i, unused[0], unused[0], scores, unused_i, unused, unused[0],
              unused[0], kmax=0, block_m=block_m, block_n=block_n, nt=4, rows=(t0, t1), num_warps=warps,
              k_scale=None if k_scale is None else k_scale.float().contiguous())
