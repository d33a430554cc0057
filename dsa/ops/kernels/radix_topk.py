"""Top-k positions of each row of precomputed scores (Triton; the public op is :func:`dsa.ops.topk_positions`).

``torch.topk`` sorts its k winners and returns their values; the attention needs only the set of positions.
:func:`radix_topk` finds the k-th largest score of each row and then writes the positions at or above it
(see ``_radix_topk_kernels``): no sort of the row, no values, memory O(rows * k) beyond the scores. The
k-th score comes from a sorted stratified sample that brackets it and one pass that copies the candidates
(the scores at or above the bracket's low end, about k plus the bracket) aside, where a histogram select
finds it and the positions are written (one read of the row in all), or, when the sample misses, from four
8-bit histogram passes over the row and one more to write the positions (a radix select). Its result
equals :func:`dsa.ops.topk.topk_positions_reference` up to the choice among tied scores at the threshold
(the first ones by position here).
"""

from __future__ import annotations

import torch

from ._common import interpret_mode, jit


def _kernels() -> dict:
    from . import _radix_topk_kernels as m

    names = ("sample_bracket_kernel", "bracket_gather_kernel", "bracket_select_kernel", "radix_threshold_kernel",
             "write_positions_kernel")
    return {n: jit(getattr(m, n)) for n in names}


# (block, warps) per launch: the fastest measured on an H100 at L = 32K and 64K, k = 2048
# (data/bench/h100-selection-stage-tuning.json, `dsa.bench.kernels --tune-selection`): the bracket gather 256 x 1 warp
# (2.1 ms at 32K vs 2.8 ms at 1024 x 4), the bracket select 128 x 1; the radix passes keep 1024 x 4
_GATHER_TILE = (256, 1)
_SELECT_TILE = (128, 1)
_ROW_TILE = (1024, 4)
# keys in the bracketing sample: of 256 / 512 / 1024, fastest on an H200 at 32K and on an H100 at 64K, tied at 32K
DEFAULT_SAMPLE = 512
_STAGE_DEFAULTS = {"gather_block": None, "gather_warps": None, "select_block": None, "select_warps": None,
                   "fallback_block": None, "fallback_warps": None}
# full reads of a row by the sampled path (the bracket gather; the sample and the candidates come on top)
READS_PER_ROW_SAMPLED = 1


def causal_lengths(l: int, device: torch.device | str | None = None, batch: int | None = None) -> torch.Tensor:
    """Valid prefix of each row of a causal (L, L) score matrix: t + 1 for query t. (L,) or (batch, L) int32."""
    t = torch.arange(1, l + 1, device=device, dtype=torch.int32)
    return t if batch is None else t.expand(batch, l).contiguous()


def _bracket_cap(n: int, k: int, sample: int) -> int:
    """Scratch slots per row for the sampled bracket: 1.25x the bracket expected on the longest row (the
    kernel's margin is 3 sqrt(r) + 3 sample ranks around r = k * sample / n), a multiple of 64 in
    [64, 8192]; a row whose bracket overflows falls back to the radix select."""
    r = k * sample / n
    expected = (2 * (3 * r**0.5 + 3) + 2) / sample * n
    return min(8192, max(64, -(-int(1.25 * expected) // 64) * 64))


@torch.no_grad()
def radix_topk(
    scores: torch.Tensor,
    k: int,
    lengths: torch.Tensor | None = None,
    *,
    block: int | None = None,
    sample: int = DEFAULT_SAMPLE,
    cap: int | None = None,
    out_dtype: torch.dtype = torch.int64,
    stats: torch.Tensor | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Positions of the k largest scores of each row, among its first ``lengths`` entries.

    scores (..., N) fp32/bf16/fp16 (any layout with a unit last stride works without a copy); k int in
    [1, N]; lengths (...) integer, default N (a causal L x L matrix: :func:`causal_lengths`).
    Returns (..., k) ``out_dtype`` positions in ascending order; a row with fewer than k valid entries
    returns all of them and -1 in the remaining slots. Ties at the threshold: the first by position (-0.0
    and +0.0 tie). NaN scores are not supported (a NaN ranks by its bit pattern, not first as in torch.topk).
    sample: keys in the sorted sample that brackets the k-th score (a power of two >= 64; 0 = radix select
    only); cap: bracket slots per row (default from N, k, sample; the candidate scratch is rows x (k + cap)
keys and positions, int32); stats: an
    optional (...) int32 tensor that receives per row 0 (short row), 1 (sampled bracket) or 2 (radix
    select); block, num_warps: tile size and warps of every pass over the rows, and warps of the bracket
    select (default: each launch's own, measured fastest on an H100; tuning only: the result is the same).
    Triton only (CUDA tensors, or the interpreter with TRITON_INTERPRET=1); inputs are checked by the op."""
    if not isinstance(sample, int) or isinstance(sample, bool) or (sample and (sample < 64 or sample & (sample - 1))):
        raise ValueError(f"sample must be 0 or a power of two >= 64, got {sample!r}")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"cap must be an int >= 1, got {cap!r}")
    if stats is not None and (not isinstance(stats, torch.Tensor) or stats.dtype != torch.int32
                              or tuple(stats.shape) != tuple(scores.shape[:-1]) or not stats.is_contiguous()):
        raise ValueError(f"stats must be a contiguous int32 tensor of shape {tuple(scores.shape[:-1])}")
    out, stages = _stages(scores, k, lengths, block=block, sample=sample, cap=cap, stats=stats, num_warps=num_warps)
    for _, launch in stages:
        launch()
    out = out.reshape(*scores.shape[:-1], k)
    return out if out_dtype == torch.int32 else out.to(out_dtype)


def _as_rows(scores: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (..., N) -> (R, N) rows with a unit last stride (a view when it can be), lengths (...) -> (R,)
    int32 contiguous (default N): the form every top-k here works on."""
    n = scores.shape[-1]
    s2 = scores.reshape(-1, n)
    if s2.stride(-1) != 1:
        s2 = s2.contiguous()
    if lengths is None:
        return s2, torch.full((s2.shape[0],), n, device=scores.device, dtype=torch.int32)
    return s2, lengths.reshape(-1).to(device=scores.device, dtype=torch.int32).contiguous()


def _stages(scores: torch.Tensor, k: int, lengths: torch.Tensor | None, *, block: int | None, sample: int,
            cap: int | None, stats: torch.Tensor | None, num_warps: int | None,
            tune: dict | None = None) -> tuple[torch.Tensor, list]:
    """The kernel launches of :func:`radix_topk` (checked arguments), as (name, launch) pairs to run in order,
    and the (rows, k) int32 output they fill. Each launch reads only what the ones before it wrote, so a
    profile can time them one by one (``dsa.bench.kernels --profile-selection``). tune: per-launch overrides for the
    benchmark's tuning, {'gather_block', 'gather_warps', 'select_block', 'select_warps', 'fallback_block',
    'fallback_warps'} (the fallback: the radix passes and the position writer after a sampled bracket)."""
    s2, ln = _as_rows(scores, lengths)
    rows, n = s2.shape
    dev = scores.device
    out = torch.empty(rows, k, device=dev, dtype=torch.int32)
    if not rows:
        return out, []
    interp = interpret_mode()
    tune = {**_STAGE_DEFAULTS, **(tune or {})}
    # a launch's tuning override, else the call's block / num_warps, else the launch's measured default
    g_block = 256 if interp else (tune["gather_block"] or block or _GATHER_TILE[0])
    g_warps = 4 if interp else (tune["gather_warps"] or num_warps or _GATHER_TILE[1])
    s_block = 64 if interp else (tune["select_block"] or _SELECT_TILE[0])
    s_warps = 4 if interp else (tune["select_warps"] or num_warps or _SELECT_TILE[1])
    # the radix passes: over every long row without a sample, over the few fallback rows with one (the same
    # tile measured fastest for both: data/bench/h100-selection-stage-tuning-2.json)
    f_block = 256 if interp else (tune["fallback_block"] or block or _ROW_TILE[0])
    f_warps = 4 if interp else (tune["fallback_warps"] or num_warps or _ROW_TILE[1])
    state = stats.view(-1) if stats is not None else torch.empty(rows, device=dev, dtype=torch.int32)
    thr = torch.empty(rows, device=dev, dtype=torch.int32)
    quota = torch.empty(rows, device=dev, dtype=torch.int32)
    kern = _kernels()
    grid = (rows,)
    stages = []
    if sample:
        # candidates = the keys at or above the bracket's low end: fewer than k above it, at most cap inside
        slots = k + (cap or _bracket_cap(n, k, sample))
        t_lo, t_hi, c_n = (torch.empty(rows, device=dev, dtype=torch.int32) for _ in range(3))
        ckey = torch.empty(rows, slots, device=dev, dtype=torch.int32)
        cpos = torch.empty(rows, slots, device=dev, dtype=torch.int32)
        stages += [
            ("sample_bracket", lambda: kern["sample_bracket_kernel"][grid](
                s2, ln, state, t_lo, t_hi, s2.stride(0), n, k, SAMPLE=sample, num_warps=4)),
            ("bracket_gather", lambda: kern["bracket_gather_kernel"][grid](
                s2, ln, state, t_lo, ckey, cpos, c_n, s2.stride(0), ckey.stride(0), n, slots,
                BLOCK=g_block, num_warps=g_warps)),
            ("bracket_select", lambda: kern["bracket_select_kernel"][grid](
                ckey, cpos, state, t_lo, t_hi, c_n, out, ckey.stride(0), out.stride(0), k, slots,
                BBLOCK=s_block, num_warps=s_warps)),
        ]
    else:
        stages.append(("states", lambda: state.copy_(torch.where(ln <= k, 0, 2))))
    stages += [
        ("radix_threshold", lambda: kern["radix_threshold_kernel"][grid](
            s2, ln, state, thr, quota, s2.stride(0), n, k, BLOCK=f_block, num_warps=f_warps)),
        ("write_positions", lambda: kern["write_positions_kernel"][grid](
            s2, ln, state, thr, quota, out, s2.stride(0), out.stride(0), n, k, BLOCK=f_block, num_warps=f_warps)),
    ]
    return out, stages


@torch.no_grad()
def radix_topk_split(scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None, *,
                     chunk: int | None = None) -> torch.Tensor:
    """:func:`radix_topk` of few long rows in two stages, for more programs than rows: each row's chunks of
    ``chunk`` scores (default 4k) keep their own top k (rows x chunks programs), then the top k of those
    candidates (chunks x k per row). Same contract and result as :func:`radix_topk` (int32 positions in
    ascending order, -1 in unused slots; ties: the first by position, since candidates keep position order).

    scores (..., N) fp32/bf16/fp16; k in [1, N]; lengths (...) integer, default N -> (..., k) int32.
    Decode has batch rows of N = cache length: one program per row leaves most of a GPU idle."""
    chunk = max(k, chunk or 4 * k)
    if scores.shape[-1] <= chunk:
        return radix_topk(scores, k, lengths, out_dtype=torch.int32)
    s2, ln = _as_rows(scores, lengths)
    r, n = s2.shape
    c = -(-n // chunk)
    pad = c * chunk - n
    if pad == 0 and s2.is_contiguous():
        parts = s2.view(r * c, chunk)
    else:  # padded scores lie past every row's length
        parts = torch.nn.functional.pad(s2, (0, pad)).view(r * c, chunk)
    starts = torch.arange(c, device=scores.device) * chunk
    part_len = (ln.to(torch.int64)[:, None] - starts[None, :]).clamp(0, chunk).to(torch.int32).reshape(-1)
    local = radix_topk(parts, k, part_len, out_dtype=torch.int32).view(r, c, k)
    pos = torch.where(local >= 0, local + starts.view(1, c, 1).to(torch.int32), local).view(r, c * k)
    # every chunk before a row's last valid one is full (k of its >= k scores kept), so the candidates are
    # ascending positions with unused slots (-1) only after them: a valid prefix of n_valid, and stage 2's
    # first-by-index tie rule is the first-by-position rule
    n_valid = (pos >= 0).sum(1).to(torch.int32)
    vals = s2.gather(1, pos.clamp(min=0).long())
    pick = radix_topk(vals.contiguous(), k, n_valid, out_dtype=torch.int32)
    out = torch.where(pick < 0, -1, pos.gather(1, pick.clamp(min=0).long()))
    return out.view(*scores.shape[:-1], k)


@torch.no_grad()
def torch_topk_positions(scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`radix_topk`'s contract and result (int32 positions ascending, -1 in unused slots, ties at the
    threshold: the first by position) by ``torch.topk``, for few long rows: torch.topk finds each row's k-th
    score, and the positions above it plus the first ones equal to it are compacted in position order (a
    cumulative sum; torch.topk's own choice among ties is not specified).

    scores (..., N) fp32/bf16/fp16; k in [1, N]; lengths (...) integer, default N -> (..., k) int32. Memory
    O(rows * N)."""
    s2, ln = _as_rows(scores, lengths)
    r, n = s2.shape
    pos = torch.arange(n, device=scores.device)
    valid = pos[None, :] < ln.to(torch.int64)[:, None]
    s = s2.float().masked_fill(~valid, float("-inf"))
    kth = torch.topk(s, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # -inf in a row shorter than k
    above = (s > kth) & valid
    tied = (s == kth) & valid
    sel = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    out = torch.full((r, k + 1), -1, device=scores.device, dtype=torch.int32)  # column k takes the unselected
    out.scatter_(1, torch.where(sel, sel.cumsum(-1) - 1, k), pos.to(torch.int32).expand(r, n))
    return out[:, :k].reshape(*scores.shape[:-1], k)
