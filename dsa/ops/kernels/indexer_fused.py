"""Causal indexer top-k with the selection fused into the score pass: no score row is ever stored.

1. bracket: per band of ``band`` query rows, the scores at ``sample`` stratified positions of the band's
   common prefix (one small batched product, in torch) are sorted; the sample's order statistic below the
   rank where the k-th score is expected (r = k * sample / n, minus a margin of 3 sqrt(r) + 3 ranks, as in
   ``radix_topk``'s sample) gives a low end ``lo[t]`` that about k + a bracket of scores reach;
2. the score pass (``idx_pass_kernel`` mode 2, hi = +inf) computes each score once and appends every
   s <= t with I[t, s] >= lo[t] to the row's candidate list, position and score, in ascending position
   order (a cumulative sum per tile), for a chunk of rows at a time;
3. :func:`radix_topk` selects the k best candidates (ties: the first positions) and the positions are read
   back from the list: ascending, the set and order of ``indexer_topk_chunked``.
A row is exact when its list holds at least k candidates and fits its ``slots``; the others (a sample that
missed, about 1 in 300 rows) are re-scored in full by torch and selected exactly. Rows with t + 1 <= k, and
rows too short to sample, take lo = -inf (every past position is a candidate).

Bytes (the model ``dsa.ops.flops.topk_bytes(..., fused=True)``, k = 2048): the candidates, ~(k + bracket) x 8
written and read by the radix top-k, instead of every score written and read: 1.86 / 1.05 / 0.60 reads of the
score triangle at L = 32K / 64K / 128K, against 3.4 / 2.8 / 2.5 for the chunked path with its score write; at
16K both ~3.3 (k is a quarter of the average row: the k candidates dominate). No (chunk x L) score buffer.
The score pass's epilogue does more work per tile (two cumulative sums and scattered stores): whether that
costs more than the bytes it saves is for the GPU to say (``dsa.bench.indexer``).
"""

from __future__ import annotations

import torch

from ._common import next_pow2
from .indexer import _pad_heads, _run_pass
from .indexer_chunked import score_tile
from .radix_topk import radix_topk

# (query rows, keys, warps) per program of the fused score pass (mode 2): of the 8 tiles of dsa.bench.kernels,
# the one that spills least at 64 x 128 in fp8 for sm_90a (124 bytes, against 2776 at the chunked path's
# 64 x 128 / 4 warps: scripts/check_kernel_resources.py --all-tiles); not yet timed
FUSED_TILE = (64, 64, 8)
DEFAULT_SAMPLE = 512
DEFAULT_BAND = 256
# candidate buffer per launch: rows x slots x (position + score) bytes at most this (the chunk of rows)
CANDIDATE_BYTES = 2**30


def _margin(r: torch.Tensor) -> torch.Tensor:
    return 3.0 * r.sqrt() + 3.0


def candidate_slots(l: int, k: int, sample: int, band: int) -> int:
    """Candidate slots per row: every past position of a row that takes lo = -inf (n <= max(k, 2 sample)
    + band: the rows of the band where sampling starts), and 1.25x the expected list (k + the bracket) of the
    longest row; a multiple of 64."""
    r = k * sample / l
    expected = k + (2 * (3 * r**0.5 + 3) + 2) / sample * l
    return -(-int(max(max(k, 2 * sample) + band, 1.25 * expected)) // 64) * 64


def _pick_keys(kc: torch.Tensor, pos: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """kc (B, L, d) at positions pos (...) -> (B, ..., d) in dt (torch indexes no float8 tensor: its bytes)."""
    if kc.dtype.itemsize == 1:
        return kc.view(torch.uint8)[:, pos].view(kc.dtype).to(dt)
    return kc[:, pos].to(dt)


# elements of the (B, bands, band rows, HP, sample) fp32 logits of one step of the bracket samples (512 MiB)
_SAMPLE_ELEMS = 2**27


def bracket_low(qp, kc, wp, k_scale, top_k: int, sample: int, band: int) -> torch.Tensor:
    """lo (B, L) fp32: the low end of each row's candidate bracket (see the module docstring); -inf for rows
    that take every past position (t + 1 <= k, or before the first band whose prefix holds 2 x sample keys).
    The sample scores are an estimate (bf16 products on the GPU, fp8 operands as their bf16 values): only the
    bracket uses them, the selection is made on the score pass's own scores."""
    b, l, hp, d = qp.shape
    dev = qp.device
    lo = torch.full((b, l), float("-inf"), device=dev, dtype=torch.float32)
    start = -(-(2 * sample - 1) // band) * band  # the first band start t0 with t0 + 1 >= 2 sample
    if start >= l:
        return lo
    dt = torch.float32 if dev.type == "cpu" else (torch.bfloat16 if qp.dtype.itemsize == 1 else qp.dtype)
    n_bands = -(-(l - start) // band)
    pad = start + n_bands * band - l  # the last band's missing rows: zeros, dropped at the end
    if qp.dtype.itemsize == 1:  # torch pads no float8 tensor: pad its bytes
        qpad = torch.nn.functional.pad(qp.view(torch.uint8), (0, 0, 0, 0, 0, pad)).view(qp.dtype)
    else:
        qpad = torch.nn.functional.pad(qp, (0, 0, 0, 0, 0, pad))
    wpad = torch.nn.functional.pad(wp, (0, 0, 0, pad))
    i = torch.arange(sample, device=dev, dtype=torch.float64) + 0.5
    step = max(1, _SAMPLE_ELEMS // (b * band * hp * sample))
    for g0 in range(0, n_bands, step):
        g1 = min(n_bands, g0 + step)
        t0 = start + band * torch.arange(g0, g1, device=dev)  # (G,) band starts
        pos = (i[None, :] * (t0 + 1)[:, None] / sample).long().clamp(max=(t0[:, None]))  # (G, S) in the prefix
        rows = slice(start + band * g0, start + band * g1)
        qg = qpad[:, rows].to(dt).view(b, g1 - g0, band, hp, d)
        lg = torch.einsum("bgchd,bgsd->bgchs", qg, _pick_keys(kc, pos, dt)).float().relu_()
        sc = torch.einsum("bgchs,bgch->bgcs", lg, wpad[:, rows].view(b, g1 - g0, band, hp))
        if k_scale is not None:
            sc = sc * k_scale[:, pos][:, :, None, :]
        srt = sc.sort(-1, descending=True).values  # (B, G, band, S)
        n = (torch.arange(start + band * g0, start + band * g1, device=dev) + 1).float().view(g1 - g0, band)
        r = top_k * sample / n
        rank = (r + _margin(r)).long() + 1
        val = srt.gather(-1, rank.clamp(max=sample - 1)[None, ..., None].expand(b, -1, -1, 1))[..., 0]
        val = torch.where((n > top_k) & (rank < sample), val, float("-inf")).view(b, -1)
        t_end = min(l, start + band * g1)
        lo[:, start + band * g0:t_end] = val[:, : t_end - start - band * g0]
    return lo


def _exact_rows(q, k, w, k_scale, bi: int, t_rows: torch.Tensor, top_k: int) -> torch.Tensor:
    """The exact causal top-k of the query rows t_rows of batch row bi from their full score rows in fp32 (the
    reference formula): (R, top_k) int32 positions ascending, -1 in unused slots."""
    s = torch.arange(k.shape[1], device=k.device)
    lg = torch.einsum("rhd,sd->rhs", q[bi, t_rows].float(), k[bi].float()).relu_()
    sc = torch.einsum("rhs,rh->rs", lg, w[bi, t_rows].float())
    if k_scale is not None:
        sc = sc * k_scale[bi][None, :]
    sc = sc.masked_fill(s[None, :] > t_rows[:, None], float("-inf"))
    top = torch.sort(sc, dim=-1, descending=True, stable=True).indices[:, :top_k]
    need = (t_rows + 1).clamp(max=top_k)
    slot = torch.arange(top.shape[1], device=k.device)
    top = torch.where(slot[None, :] < need[:, None], top, k.shape[1]).sort(-1).values
    top = torch.where(slot[None, :] < need[:, None], top, -1).to(torch.int32)
    return torch.nn.functional.pad(top, (0, top_k - top.shape[1]), value=-1)


@torch.no_grad()
def indexer_topk_fused(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int,
    *,
    k_scale: torch.Tensor | None = None,
    sample: int = DEFAULT_SAMPLE,
    band: int = DEFAULT_BAND,
    chunk: int | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Causal indexer top-k without stored scores (see the module docstring): the set and order of
    :func:`dsa.ops.kernels.indexer_chunked.indexer_topk_chunked` (positions ascending, ties: the first).

    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I); top_k int in [1, L]; k_scale (B, L) fp32: FP8
    scores (as indexer_topk_chunked). sample: positions per band's bracket sample (a power of two >= 16);
    band: query rows sharing a sample (a multiple of the score tile's rows); chunk: query rows per launch of the
    score pass (default: CANDIDATE_BYTES of candidate lists); stats: receives the fallback row count.
    Returns (B, L, top_k) int32, -1 in unused slots. Inputs are checked by the op."""
    if sample < 16 or sample & (sample - 1):
        raise ValueError(f"sample must be a power of two >= 16, got {sample}")
    b, l, h, _ = q_idx.shape
    dev = q_idx.device
    qp, wp = _pad_heads(q_idx, w.float(), next_pow2(h))
    kc = k_idx.to(q_idx.dtype).contiguous()
    ks = None if k_scale is None else k_scale.float().contiguous()
    block_m, block_n, warps = score_tile(FUSED_TILE)
    band = -(-band // block_m) * block_m
    slots = candidate_slots(l, top_k, sample, band)
    lo = bracket_low(qp, kc, wp, ks, top_k, sample, band)
    hi = torch.full_like(lo, float("inf"))  # nothing is "sure": every candidate goes to the one ordered list
    if chunk is None:
        chunk = max(block_m, CANDIDATE_BYTES // (8 * slots * b) // block_m * block_m)
    chunk = -(-min(chunk, l) // block_m) * block_m
    pos = torch.empty(b, chunk, slots, device=dev, dtype=torch.int32)
    val = torch.empty(b, chunk, slots, device=dev, dtype=torch.float32)
    cnt = torch.empty(b, chunk, 4, device=dev, dtype=torch.int32)
    unused = torch.empty(1, 1, 4, device=dev, dtype=torch.float32)
    out = torch.empty(b, l, top_k, device=dev, dtype=torch.int32)
    fallback = []
    sampled = torch.isfinite(lo)
    cand_sampled = torch.zeros((), device=dev, dtype=torch.int64)  # candidates listed over the sampled rows
    for t0 in range(0, l, chunk):
        t1 = min(l, t0 + chunk)
        c = t1 - t0
        _run_pass(2, qp, kc, wp, unused, cnt, lo, hi, pos, pos, val, lo, lo, kmax=slots, block_m=block_m,
                  block_n=block_n, nt=4, rows=(t0, t1), num_warps=warps, k_scale=ks)
        n_cand = cnt[:, :c, 1]
        need = torch.arange(t0 + 1, t1 + 1, device=dev).clamp(max=top_k)[None, :]
        bad = (n_cand < need) | (n_cand > slots)
        cand_sampled += (n_cand * sampled[:, t0:t1]).sum()
        lens = n_cand.clamp(max=slots)
        sel = radix_topk(val[:, :c].reshape(b * c, slots), top_k, lens.reshape(-1), out_dtype=torch.int32)
        got = torch.gather(pos[:, :c].reshape(b * c, slots), 1, sel.clamp(min=0).long())
        out[:, t0:t1] = torch.where(sel >= 0, got, -1).view(b, c, top_k)
        if bool(bad.any()):
            bb, tt = bad.nonzero(as_tuple=True)
            fallback.append((bb, tt + t0))
    n_fb = 0
    step = max(1, 2**27 // (qp.shape[2] * l))  # rows re-scored at once: (rows, HP, L) fp32 logits <= 512 MiB
    for bb, tt in fallback:
        for bi in range(b):
            rows = tt[bb == bi]
            for r0 in range(0, rows.numel(), step):
                out[bi, rows[r0:r0 + step]] = _exact_rows(qp, kc, wp, ks, bi, rows[r0:r0 + step], top_k)
        n_fb += int(tt.numel())
    if stats is not None:
        n_s = int(sampled.sum())
        past = int(((torch.arange(l, device=dev) + 1)[None, :] * sampled).sum())
        stats.update(fallback_rows=n_fb, slots=slots, chunk=chunk, sampled_rows=n_s,
                     candidates_per_past=int(cand_sampled) / past if past else None)
    return out
