"""Triton kernels of the row-wise top-k selection (imported only when triton is importable).

Floats are mapped to uint32 keys whose unsigned order is the float order (flip every bit of negatives, the
sign bit of the rest; -0.0 maps with +0.0, so the two tie as they compare equal; a NaN ranks by its bits). The selection
is every key above the k-th largest key ``thr`` and the first ``quota`` keys equal to it (ties by position;
``quota > N`` takes them all).
A per-row ``STATE`` says how the row gets them: 0 a short row (n <= k: every valid position, thr = 0),
1 the sampled bracket, 2 the radix select. Five small kernels, one program per row each, so that each keeps
few registers and many programs per multiprocessor (one kernel doing all of it ran at a fraction of the
memory bandwidth):

1. ``sample_bracket_kernel``: rows of at least ``2 * SAMPLE`` entries sort a stratified sample of ``SAMPLE``
   keys (``SAMPLE / 8`` runs of 8 consecutive keys spread over the row) and keep the keys at sample ranks
   ``r -/+ (3 sqrt(r) + 3)`` around ``r = k * SAMPLE / n``, where the k-th largest key is expected (about
   three standard deviations of the sample rank: a miss, about 1 row in 300, only costs the fallback).
   Longer-than-k rows too short to sample get state 2.
2. ``bracket_gather_kernel``: one pass over the row copies the candidates, the keys at or above the bracket's
   low end, with their positions (in position order, compacted by a cumulative sum) to the row's scratch of
   ``CAP`` slots.
3. ``bracket_select_kernel``: if the k-th key lies inside the bracket (at least k candidates, fewer than k of them above
   the bracket's common leading bytes) and the candidates fit, 8-bit histograms over the candidates (in chunks up to
   their number; one per byte from the first byte where the bracket's ends differ) give the k-th key, and one pass over
   them writes the selected positions, in order; else the row falls back (state 2).
4. ``radix_threshold_kernel`` (state-2 rows only): four 8-bit histogram passes over the row fix the k-th
   key digit by digit, most significant first; a pass ends the search early when the chosen bin is taken
   whole. Up to four reads of the row; the histograms, not the reads, bound it.
5. ``write_positions_kernel`` (state 0 and 2 rows): one pass writes the selected positions, compacted by a
   cumulative sum, in ascending position order; the rest of the k slots get -1.

The sampled path reads each row once (pass 2) beyond its sample, then only its candidates (about k plus the
bracket); the radix path reads it up to five times; the result is the same either way.
"""

import triton
import triton.language as tl


def sample_bracket_kernel(S, LEN, STATE, TLO, THI, ss, N, K, SAMPLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = tl.minimum(tl.load(LEN + row), N)
    srow = S + row * ss
    state = tl.where(n <= K, 0, tl.where(n >= 2 * SAMPLE, 1, 2))
    tl.store(STATE + row, state)
    if state == 1:
        NCH: tl.constexpr = SAMPLE // 8
        run_start = (tl.arange(0, NCH).to(tl.int64) * n) // NCH
        spos = tl.reshape(run_start[:, None] + tl.arange(0, 8)[None, :], [SAMPLE])
        b = tl.load(srow + spos).to(tl.float32).to(tl.uint32, bitcast=True)
        sign = tl.full([SAMPLE], 0x80000000, tl.uint32)
        srt = tl.sort(tl.where(b > sign, ~b, b | sign), descending=True)
        rank = tl.arange(0, SAMPLE)
        r = K * (SAMPLE * 1.0) / n.to(tl.float32)
        margin = 3.0 * tl.sqrt(r) + 3.0
        hi = r - margin
        hi_rank = tl.where(hi < 0.0, -1, hi.to(tl.int32))
        lo_rank = (r + margin).to(tl.int32) + 1
        t_hi = tl.where(hi_rank < 0, tl.full([], 0xFFFFFFFF, tl.uint32), tl.max(tl.where(rank == hi_rank, srt, 0)))
        t_lo = tl.where(lo_rank >= SAMPLE, tl.full([], 0, tl.uint32), tl.max(tl.where(rank == lo_rank, srt, 0)))
        tl.store(THI + row, t_hi.to(tl.int32, bitcast=True))
        tl.store(TLO + row, t_lo.to(tl.int32, bitcast=True))


def bracket_gather_kernel(S, LEN, STATE, TLO, CKEY, CPOS, CN, ss, sc, N, CAP, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(STATE + row) == 1:
        n = tl.minimum(tl.load(LEN + row), N)
        srow = S + row * ss
        ckey = CKEY + row * sc
        cpos = CPOS + row * sc
        t_lo = tl.load(TLO + row).to(tl.uint32, bitcast=True)
        offs = tl.arange(0, BLOCK)
        sign = tl.full([BLOCK], 0x80000000, tl.uint32)
        c_n = tl.zeros([], tl.int32)  # candidates: keys at or above the bracket's low end
        for c0 in range(0, n, BLOCK):
            c = c0 + offs
            inb = c < n
            b = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32).to(tl.uint32, bitcast=True)
            key = tl.where(b > sign, ~b, b | sign)
            cand = (key >= t_lo) & inb
            ci = cand.to(tl.int32)
            slot = c_n + tl.cumsum(ci, 0) - 1
            keep = cand & (slot < CAP)
            tl.store(ckey + slot, key.to(tl.int32, bitcast=True), mask=keep)
            tl.store(cpos + slot, c, mask=keep)
            c_n += tl.sum(ci)
        tl.store(CN + row, c_n)


def bracket_select_kernel(CKEY, CPOS, STATE, TLO, THI, CN, OUT, sc, so, K, CAP, BBLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(STATE + row) == 1:
        c_n = tl.load(CN + row)
        if (c_n >= K) & (c_n <= CAP):
            ckey = CKEY + row * sc
            cpos = CPOS + row * sc
            bins = tl.arange(0, 256)
            boffs = tl.arange(0, BBLOCK)
            # with k or more candidates the k-th key is the k-th candidate; if it lies in [t_lo, t_hi] it shares
            # their leading bytes, so the digit rounds start at the first byte where they differ: candidates
            # above that common prefix are all selected, and k or more of them mean it lies above (a miss)
            t_lo = tl.load(TLO + row).to(tl.uint32, bitcast=True)
            t_hi = tl.load(THI + row).to(tl.uint32, bitcast=True)
            diff = t_lo ^ t_hi
            q0 = tl.where(diff >= 0x1000000, 0, tl.where(diff >= 0x10000, 1, tl.where(diff >= 0x100, 2, 3)))
            tmask = tl.where(q0 == 0, 0, (tl.full([], 0xFFFFFFFF, tl.uint32) << (32 - 8 * q0)))
            tau = t_lo & tmask
            rem = K
            n_above = tl.zeros([], tl.int32)
            for q in tl.static_range(4):
                if q >= q0:
                    th = tl.zeros([256], tl.int32)
                    other = tl.zeros([], tl.int32)  # candidates outside the prefix (and padding): out of bin 0
                    above = tl.zeros([], tl.int32)  # candidates above the prefix (first round only)
                    for b0 in range(0, c_n, BBLOCK):
                        cidx = b0 + boffs
                        real = cidx < c_n
                        bk = tl.load(ckey + cidx, mask=real, other=0).to(tl.uint32, bitcast=True)
                        tmatch = ((bk & tmask) == tau) & real
                        tdig = ((bk >> (24 - 8 * q)) & 255).to(tl.int32)
                        th += tl.histogram(tl.where(tmatch, tdig, 0), 256)
                        other += BBLOCK - tl.sum(tmatch.to(tl.int32))
                        if q == q0:
                            above += tl.sum((((bk & tmask) > tau) & real).to(tl.int32))
                    th = th - tl.where(bins == 0, other, 0)
                    rem = rem - above
                    n_above += above
                    t_ge = tl.sum(th) - tl.cumsum(th, 0) + th
                    td = tl.max(tl.where(t_ge >= rem, bins, -1))
                    rem = rem - tl.sum(tl.where(bins > td, th, 0))
                    tau = tau | (td.to(tl.uint32) << (24 - 8 * q))
                    tmask = tmask | (tl.full([], 255, tl.uint32) << (24 - 8 * q))
            if n_above < K:
                # rem keys equal to tau are taken: the first ones by position (candidates are in order)
                orow = OUT + row * so
                base = tl.zeros([], tl.int32)
                eq_seen = tl.zeros([], tl.int32)
                for b0 in range(0, c_n, BBLOCK):
                    cidx = b0 + boffs
                    real = cidx < c_n
                    bk = tl.load(ckey + cidx, mask=real, other=0).to(tl.uint32, bitcast=True)
                    eq = (bk == tau) & real
                    eqi = eq.to(tl.int32)
                    sel = ((bk > tau) & real) | (eq & (eq_seen + tl.cumsum(eqi, 0) <= rem))
                    si = sel.to(tl.int32)
                    slot = base + tl.cumsum(si, 0) - 1
                    bp = tl.load(cpos + cidx, mask=sel, other=0)
                    tl.store(orow + slot, bp, mask=sel & (slot < K))
                    base += tl.sum(si)
                    eq_seen += tl.sum(eqi)
            else:
                tl.store(STATE + row, 2)
        else:
            tl.store(STATE + row, 2)


def radix_threshold_kernel(S, LEN, STATE, THR, QUOTA, ss, N, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if tl.load(STATE + row) == 2:
        n = tl.minimum(tl.load(LEN + row), N)
        srow = S + row * ss
        offs = tl.arange(0, BLOCK)
        bins = tl.arange(0, 256)
        sign = tl.full([BLOCK], 0x80000000, tl.uint32)
        big = N + 1
        prefix = tl.full([], 0, tl.uint32)
        pmask = tl.full([], 0, tl.uint32)
        remaining = tl.minimum(K, n)
        quota = big
        done = tl.zeros([], tl.int32)
        for p in tl.static_range(4):
            if done == 0:
                hist = tl.zeros([256], tl.int32)
                # keys outside the prefix (and padding): counted into bin 0 by the histogram, removed below
                other = tl.zeros([], tl.int32)
                for c0 in range(0, n, BLOCK):
                    c = c0 + offs
                    inb = c < n
                    b = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32).to(tl.uint32, bitcast=True)
                    key = tl.where(b > sign, ~b, b | sign)
                    match = ((key & pmask) == prefix) & inb
                    dig = ((key >> (24 - 8 * p)) & 255).to(tl.int32)
                    hist += tl.histogram(tl.where(match, dig, 0), 256)
                    other += BLOCK - tl.sum(match.to(tl.int32))
                hist = hist - tl.where(bins == 0, other, 0)
                c_ge = tl.sum(hist) - tl.cumsum(hist, 0) + hist  # keys with this digit or a larger one
                d = tl.max(tl.where(c_ge >= remaining, bins, -1))
                c_gt = tl.sum(tl.where(bins > d, hist, 0))
                h_d = tl.sum(tl.where(bins == d, hist, 0))
                remaining = remaining - c_gt
                prefix = prefix | (d.to(tl.uint32) << (24 - 8 * p))
                pmask = pmask | (tl.full([], 255, tl.uint32) << (24 - 8 * p))
                # the whole bin is taken: keys >= prefix are exactly the selection
                done = tl.where(h_d == remaining, 1, done)
                if p == 3:
                    quota = tl.where(h_d == remaining, quota, remaining)
        tl.store(THR + row, prefix.to(tl.int32, bitcast=True))
        tl.store(QUOTA + row, quota)


def write_positions_kernel(S, LEN, STATE, THR, QUOTA, OUT, ss, so, N, K, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    state = tl.load(STATE + row)
    if state != 1:  # the bracket select wrote the state-1 rows
        n = tl.minimum(tl.load(LEN + row), N)
        srow = S + row * ss
        orow = OUT + row * so
        # a short row (state 0) takes every valid key: threshold key 0, all ties
        thr = tl.where(state == 0, 0, tl.load(THR + row)).to(tl.uint32, bitcast=True)
        quota = tl.where(state == 0, N + 1, tl.load(QUOTA + row))
        offs = tl.arange(0, BLOCK)
        sign = tl.full([BLOCK], 0x80000000, tl.uint32)
        base = tl.zeros([], tl.int32)
        if quota > N:  # every key == thr is taken: one cumulative sum per block
            for c0 in range(0, n, BLOCK):
                c = c0 + offs
                inb = c < n
                b = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32).to(tl.uint32, bitcast=True)
                sel = (tl.where(b > sign, ~b, b | sign) >= thr) & inb
                si = sel.to(tl.int32)
                pos = base + tl.cumsum(si, 0) - 1
                tl.store(orow + pos, c, mask=sel & (pos < K))
                base += tl.sum(si)
        else:
            eq_seen = tl.zeros([], tl.int32)
            for c0 in range(0, n, BLOCK):
                c = c0 + offs
                inb = c < n
                b = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32).to(tl.uint32, bitcast=True)
                key = tl.where(b > sign, ~b, b | sign)
                eq = (key == thr) & inb
                eqi = eq.to(tl.int32)
                sel = ((key > thr) & inb) | (eq & (eq_seen + tl.cumsum(eqi, 0) <= quota))
                si = sel.to(tl.int32)
                pos = base + tl.cumsum(si, 0) - 1
                tl.store(orow + pos, c, mask=sel & (pos < K))
                base += tl.sum(si)
                eq_seen += tl.sum(eqi)
        base = tl.minimum(base, K)
        for c0 in range(0, K, BLOCK):
            c = c0 + offs
            tl.store(orow + c, tl.full([BLOCK], -1, tl.int32), mask=(c >= base) & (c < K))
