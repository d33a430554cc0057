"""Triton kernel of the row-wise top-k selection (imported only when triton is importable).

``radix_topk_kernel``: a persistent grid; each program takes rows ``pid, pid + programs, ...`` of
precomputed scores. Floats are mapped to uint32 keys whose unsigned order is the float order (flip every
bit of negatives, the sign bit of the rest). For each row the kernel finds the k-th largest key ``thr`` and
how many keys equal to it to take (``quota``, ties by position), then one last pass writes the positions of
the selected keys, compacted by a cumulative sum, in ascending position order; the rest of the k slots get -1.

Two ways to find ``thr``:

* **Sampled bracket** (``SAMPLE > 0``, rows of at least ``2 * SAMPLE`` entries): sort a stratified sample
  of ``SAMPLE`` keys (``SAMPLE / 8`` runs of 8 consecutive keys spread over the row) and read two keys
  at sample ranks ``r -/+ (3 sqrt(r) + 3)`` around ``r = k * SAMPLE / n``, where the k-th largest key is
  expected (about three standard deviations of the sample rank: a miss, about 1 row in 300, only costs the
  fallback). One pass over the row counts the keys above the bracket (all selected) and copies the keys
  inside it to a per-program scratch of ``CAP`` slots; if the k-th key lies inside the bracket and the
  bracket fits, a selection inside the bracket (four 8-bit histograms over the ``CAP`` keys held in
  registers, or a sort of them with ``BRACKET_SORT``) gives ``thr``. The row is read twice in all (this
  pass and the last).
* **Radix select** (the fallback, and ``SAMPLE = 0``): four passes of an 8-bit histogram
  (``tl.histogram``) fix the k-th key digit by digit, most significant first; keys above the chosen bin are
  selected and only keys with the fixed prefix are counted next; a pass ends the search early when the
  chosen bin is taken whole. Up to five reads of the row; the histograms, not the reads, bound its speed.

A sample that misses (a row whose structure the stratified sample does not represent, or many ties) costs
one extra pass and falls back to the radix select: the result is exact either way. ``STATS`` (optional)
records per row which way was taken: 0 short row (n <= k, every valid position), 1 sampled, 2 radix.
"""

import triton
import triton.language as tl


def radix_topk_kernel(S, OUT, LEN, SCR, STATS, ss, so, N, K, ROWS, BLOCK: tl.constexpr, SAMPLE: tl.constexpr,
                      CAP: tl.constexpr, WITH_STATS: tl.constexpr, BRACKET_SORT: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    sign = tl.full([BLOCK], 0x80000000, tl.uint32)
    scr = SCR + pid.to(tl.int64) * CAP
    big = N + 1
    for row0 in range(pid, ROWS, nprog):
        row = row0 + tl.zeros([], tl.int64)  # the interpreter's loop yields Python ints
        n = tl.minimum(tl.load(LEN + row), N)
        srow = S + row * ss
        orow = OUT + row * so
        # State of the search: keys > thr are selected, and the first `quota` keys == thr.
        prefix = tl.full([], 0, tl.uint32)
        pmask = tl.full([], 0, tl.uint32)
        remaining = tl.minimum(K, n)
        quota = big
        done = (n <= K).to(tl.int32)  # short rows take every valid position: thr = 0 keeps them all
        path = tl.where(done == 1, 0, 2)
        if SAMPLE > 0:
            if (done == 0) & (n >= 2 * SAMPLE):
                NCH: tl.constexpr = SAMPLE // 8
                run_start = (tl.arange(0, NCH).to(tl.int64) * n) // NCH
                spos = tl.reshape(run_start[:, None] + tl.arange(0, 8)[None, :], [SAMPLE])
                xs = tl.load(srow + spos).to(tl.float32)
                bs_ = xs.to(tl.uint32, bitcast=True)
                ssign = tl.full([SAMPLE], 0x80000000, tl.uint32)
                ks = tl.where((bs_ & ssign) != 0, ~bs_, bs_ | ssign)
                srt = tl.sort(ks, descending=True)
                rank = tl.arange(0, SAMPLE)
                r = K * (SAMPLE * 1.0) / n.to(tl.float32)
                margin = 3.0 * tl.sqrt(r) + 3.0
                hi = r - margin
                hi_rank = tl.where(hi < 0.0, -1, hi.to(tl.int32))
                lo_rank = (r + margin).to(tl.int32) + 1
                t_hi = tl.where(hi_rank < 0, tl.full([], 0xFFFFFFFF, tl.uint32),
                                tl.max(tl.where(rank == hi_rank, srt, 0)))
                t_lo = tl.where(lo_rank >= SAMPLE, tl.full([], 0, tl.uint32),
                                tl.max(tl.where(rank == lo_rank, srt, 0)))
                c_a = tl.zeros([], tl.int32)  # keys above the bracket
                c_b = tl.zeros([], tl.int32)  # keys inside it
                for c0 in range(0, n, BLOCK):
                    c = c0 + offs
                    inb = c < n
                    x = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32)
                    b = x.to(tl.uint32, bitcast=True)
                    key = tl.where((b & sign) != 0, ~b, b | sign)
                    ina = (key > t_hi) & inb
                    inbr = (key >= t_lo) & (key <= t_hi) & inb
                    bi = inbr.to(tl.int32)
                    slot = c_b + tl.cumsum(bi, 0) - 1
                    tl.store(scr + slot, key.to(tl.int32, bitcast=True), mask=inbr & (slot < CAP))
                    c_a += tl.sum(ina.to(tl.int32))
                    c_b += tl.sum(bi)
                if (c_a < K) & (c_a + c_b >= K) & (c_b <= CAP):
                    m = K - c_a  # the k-th key is the m-th largest inside the bracket
                    cidx = tl.arange(0, CAP)
                    real = cidx < c_b
                    bk = tl.load(scr + cidx, mask=real, other=0).to(tl.uint32, bitcast=True)
                    if BRACKET_SORT:
                        # key 0 pads: it sorts last, and the first c_b sorted keys are exactly the bracket's
                        bsrt = tl.sort(bk, descending=True)
                        tau = tl.max(tl.where(cidx == m - 1, bsrt, 0))
                    else:  # a radix select over the bracket, held in registers: four 8-bit histograms
                        tau = tl.full([], 0, tl.uint32)
                        tmask = tl.full([], 0, tl.uint32)
                        rem = m
                        for q in tl.static_range(4):
                            tmatch = ((bk & tmask) == tau) & real
                            tdig = ((bk >> (24 - 8 * q)) & 255).to(tl.int32)
                            th = tl.histogram(tl.where(tmatch, tdig, 0), 256)
                            th = th - tl.where(bins == 0, CAP - tl.sum(tmatch.to(tl.int32)), 0)
                            t_ge = tl.sum(th) - tl.cumsum(th, 0) + th
                            td = tl.max(tl.where(t_ge >= rem, bins, -1))
                            rem = rem - tl.sum(tl.where(bins > td, th, 0))
                            tau = tau | (td.to(tl.uint32) << (24 - 8 * q))
                            tmask = tmask | (tl.full([], 255, tl.uint32) << (24 - 8 * q))
                    gt = tl.sum(((bk > tau) & real).to(tl.int32))
                    eqn = tl.sum(((bk == tau) & real).to(tl.int32))
                    prefix = tau
                    quota = tl.where(m - gt < eqn, m - gt, big)
                    done = tl.full([], 1, tl.int32)
                    path = tl.full([], 1, tl.int32)
        for p in tl.static_range(4):
            if done == 0:
                hist = tl.zeros([256], tl.int32)
                other = tl.zeros([], tl.int32)  # keys outside the prefix (and padding): counted into bin 0 by the histogram, removed below
                for c0 in range(0, n, BLOCK):
                    c = c0 + offs
                    inb = c < n
                    x = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32)
                    b = x.to(tl.uint32, bitcast=True)
                    key = tl.where((b & sign) != 0, ~b, b | sign)
                    match = ((key & pmask) == prefix) & inb
                    dig = ((key >> (24 - 8 * p)) & 255).to(tl.int32)
                    hist += tl.histogram(tl.where(match, dig, 0), 256)
                    other += BLOCK - tl.sum(match.to(tl.int32))
                hist = hist - tl.where(bins == 0, other, 0)
                total = tl.sum(hist)
                c_ge = total - tl.cumsum(hist, 0) + hist  # keys with this digit or a larger one
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
        if WITH_STATS:
            tl.store(STATS + row, path)
        thr = prefix
        base = tl.zeros([], tl.int32)
        if quota >= big:  # every key == thr is taken: one cumulative sum per block
            for c0 in range(0, n, BLOCK):
                c = c0 + offs
                inb = c < n
                x = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32)
                b = x.to(tl.uint32, bitcast=True)
                key = tl.where((b & sign) != 0, ~b, b | sign)
                sel = (key >= thr) & inb
                si = sel.to(tl.int32)
                pos = base + tl.cumsum(si, 0) - 1
                tl.store(orow + pos, c, mask=sel & (pos < K))
                base += tl.sum(si)
        else:
            eq_seen = tl.zeros([], tl.int32)
            for c0 in range(0, n, BLOCK):
                c = c0 + offs
                inb = c < n
                x = tl.load(srow + c, mask=inb, other=float("-inf")).to(tl.float32)
                b = x.to(tl.uint32, bitcast=True)
                key = tl.where((b & sign) != 0, ~b, b | sign)
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
