"""Triton kernel of the row-wise radix select (imported only when triton is importable).

``radix_topk_kernel``: one program = one row of precomputed scores. Floats are mapped to uint32 keys whose
unsigned order is the float order (flip every bit of negatives, the sign bit of the rest). Four passes of
an 8-bit histogram (``tl.histogram``) over the row find the k-th largest key digit by digit, most
significant first: after each pass the digit whose bin holds the k-th key is fixed, every key above that
bin is known to be selected, and only keys that share the fixed prefix are counted in the next pass. A
pass ends the search early when the chosen bin is taken whole. A last pass writes the positions of keys
above the threshold and the first ``quota`` keys equal to it (ties, by position), compacted by a
cumulative sum, in ascending position order; the rest of the k slots get -1.

The row is read five times: once from HBM, then mostly from L2 (a row of 32K fp32 scores is 128 KB).
"""

import triton
import triton.language as tl


def radix_topk_kernel(S, OUT, LEN, ss, so, N, K, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    n = tl.minimum(tl.load(LEN + row), N)
    srow = S + row.to(tl.int64) * ss
    orow = OUT + row.to(tl.int64) * so
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    sign = tl.full([BLOCK], 0x80000000, tl.uint32)
    big = N + 1
    # State of the search: keys >= thr are selected, except that only the first `quota` keys == thr are.
    prefix = tl.full([], 0, tl.uint32)
    pmask = tl.full([], 0, tl.uint32)
    remaining = tl.minimum(K, n)
    quota = big
    done = (n <= K).to(tl.int32)  # short rows take every valid position: thr = 0 keeps them all
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
    thr = prefix
    base = tl.zeros([], tl.int32)
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
    for c0 in range(0, K, BLOCK):
        c = c0 + offs
        tl.store(orow + c, tl.full([BLOCK], -1, tl.int32), mask=(c >= base) & (c < K))
