"""Triton kernels of the lightning indexer (imported only when triton is importable).

``idx_pass_kernel``: one program = BLOCK_M queries (of rows ROW0 <= t < ROW_END) of one batch row; it
recomputes the indexer scores I[t, s] tile by tile for s <= t and, by MODE:
  0: per-row max / min of the scores;
  1: per-row counts #(I[t, :] >= thr[t, j]) for NT thresholds per row;
  2: emits the positions with I >= hi[t] ("sure", ascending s) and those with lo[t] <= I < hi[t]
     (the boundary, with their scores), compacted by a cumulative sum per row, at row t - ROW0 of OUT, BND,
     BNDV and CNT (a chunk of rows: buffers of the chunk's rows only);
  3: stores the scores, I[t, s] at OUT[b, t - ROW0, s] (s <= t only), for a chunk of rows.
FP8: q and k hold e4m3 values (``dsa.ops.quantize``; F8OPS: in e4m3, else in bf16): the head weights carry
the query scales and a key's score column is multiplied by its scale KS[b, s] after the head sum.
Per key tile, one [BLOCK_M, d_I] @ [d_I, BLOCK_N] tl.dot per indexer head, ReLU and the head weight, summed
over the HP heads; the heads go in blocks of HB (unrolled) under a runtime loop, so that only one block's q
tiles take shared memory (HB == HP: one block, every head unrolled).

``idx_scores_hn_kernel``: mode 3's scores with the roles turned (the chunked top-k's score kernel from
``indexer_chunked.HN_MIN_HEADS`` heads on: 4.2-5x mode 3 at 64 x 128 on an H200):
one program = BQ queries of one batch row, their HP heads resident as one [BQ * HP, d_I] q tile, the keys
streamed; per key tile one [BLOCK_N, d_I] @ [d_I, BQ * HP] tl.dot (keys as M, the queries' heads as N: one
large product instead of HP small ones, no q tile reloaded per key tile), ReLU and the head weight, and a sum
over each query's HP columns.

``idx_at_fwd_kernel`` / ``idx_at_bwd_kernel``: scores at selected positions and their gradient; one program =
one query t, its HP (padded to >= 16) indexer heads, in blocks of HB as a [HB, d_I] q tile, against BLOCK_K
gathered keys.
"""

import triton
import triton.language as tl


def idx_pass_kernel(
    QI, KI, W, THR, CNT, LO, HI, OUT, BND, BNDV, RMAX, RMIN, KS,
    sqb, sql, skb, skl, swb, swl, stb, stl, slb, sob, sol, sksb,
    L, KMAX, ROW0, ROW_END,
    HP: tl.constexpr, HB: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr, NT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr, IEEE: tl.constexpr,
    INTERP: tl.constexpr, FP8: tl.constexpr, F8OPS: tl.constexpr,
):
    nblk = tl.cdiv(ROW_END - ROW0, BLOCK_M)
    mb = nblk - 1 - tl.program_id(0)  # longest rows first: better tail balance on the causal triangle
    b = tl.program_id(1).to(tl.int64)  # b * (batch stride) passes 2^31 for large chunks and batches
    t0 = ROW0 + mb * BLOCK_M
    dd = tl.arange(0, DI_PAD)
    rows = t0 + tl.arange(0, BLOCK_M)
    rmask = rows < ROW_END
    cols = tl.arange(0, NT)
    if MODE == 0:
        mx = tl.full([BLOCK_M], float("-inf"), tl.float32)
        mn = tl.full([BLOCK_M], float("inf"), tl.float32)
    if MODE == 1:
        cnt = tl.zeros([BLOCK_M, NT], tl.int32)
    if MODE == 2:
        lo = tl.load(LO + b * slb + rows, mask=rmask, other=float("inf"))
        hi = tl.load(HI + b * slb + rows, mask=rmask, other=float("inf"))
        base_s = tl.zeros([BLOCK_M], tl.int32)
        base_b = tl.zeros([BLOCK_M], tl.int32)
    s_end = tl.minimum(t0 + BLOCK_M, ROW_END)
    for s0 in range(0, s_end, BLOCK_N):
        s = s0 + tl.arange(0, BLOCK_N)
        kt = tl.load(KI + b * skb + s[:, None] * skl + dd[None, :], mask=(s < L)[:, None] & (dd < DI)[None, :],
                     other=0.0)
        if INTERP and not F8OPS:  # the interpreter runs fp8 tl.dot exactly (triton 3.9); bf16 it rounds
            kt = kt.to(tl.float32)
        sc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        # Heads in blocks of HB: the pipeliner gives every unrolled head's q tile its own shared buffers, so
        # unrolling all 64 heads of d_I 128 asked for ~2 MB. A runtime loop holds one block's tiles at a time;
        # with HB == HP it runs once, with constant bounds, and compiles to the fully unrolled loop of before.
        for j0 in range(0, HP, HB):
            for jj in tl.static_range(HB):  # one [BLOCK_M, d_I] x [d_I, BLOCK_N] product per indexer head
                j = j0 + jj
                qj = tl.load(QI + b * sqb + rows[:, None] * sql + j * DI + dd[None, :],
                             mask=rmask[:, None] & (dd < DI)[None, :], other=0.0)
                wj = tl.load(W + b * swb + rows * swl + j, mask=rmask, other=0.0).to(tl.float32)
                if INTERP and not F8OPS:
                    qj = qj.to(tl.float32)
                if IEEE:
                    logit = tl.dot(qj, tl.trans(kt), input_precision="ieee")
                else:
                    logit = tl.dot(qj, tl.trans(kt))
                sc += tl.maximum(logit, 0.0) * wj[:, None]
        if FP8:  # the key's scale, after the head sum (positive: it commutes with the ReLU)
            sc *= tl.load(KS + b * sksb + s, mask=s < L, other=1.0)[None, :]
        ok = (s[None, :] <= rows[:, None]) & rmask[:, None]
        if MODE == 3:
            tl.store(OUT + b * sob + (rows - ROW0)[:, None] * sol + s[None, :], sc, mask=ok)
        if MODE == 0:
            mx = tl.maximum(mx, tl.max(tl.where(ok, sc, float("-inf")), 1))
            mn = tl.minimum(mn, tl.min(tl.where(ok, sc, float("inf")), 1))
        if MODE == 1:
            # 4 thresholds per int32 (8-bit fields; a tile adds <= BLOCK_N < 256 per row): NT/4 row sums per tile
            for g4 in tl.static_range(NT // 4):
                packed = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
                for u in tl.static_range(4):
                    thr_j = tl.load(THR + b * stb + rows * stl + (g4 * 4 + u), mask=rmask, other=float("inf"))
                    packed += (ok & (sc >= thr_j[:, None])).to(tl.int32) << (8 * u)
                ps = tl.sum(packed, 1)
                for u in tl.static_range(4):
                    cnt += tl.where(cols[None, :] == g4 * 4 + u, ((ps >> (8 * u)) & 255)[:, None], 0)
        if MODE == 2:
            sure = ok & (sc >= hi[:, None])
            bnd = ok & (sc >= lo[:, None]) & (sc < hi[:, None])
            si = sure.to(tl.int32)
            bi = bnd.to(tl.int32)
            ps = base_s[:, None] + tl.cumsum(si, 1) - 1
            pb = base_b[:, None] + tl.cumsum(bi, 1) - 1
            s2 = tl.broadcast_to(s[None, :], [BLOCK_M, BLOCK_N])
            orow = (rows - ROW0)[:, None] * sol
            tl.store(OUT + b * sob + orow + ps, s2, mask=sure & (ps < KMAX))
            tl.store(BND + b * sob + orow + pb, s2, mask=bnd & (pb < KMAX))
            tl.store(BNDV + b * sob + orow + pb, sc, mask=bnd & (pb < KMAX))
            base_s += tl.sum(si, 1)
            base_b += tl.sum(bi, 1)
    if MODE == 0:
        tl.store(RMAX + b * slb + rows, mx, mask=rmask)
        tl.store(RMIN + b * slb + rows, mn, mask=rmask)
    if MODE == 1:
        tl.store(CNT + b * stb + rows[:, None] * stl + cols[None, :], cnt, mask=rmask[:, None])
    if MODE == 2:
        out2 = tl.where(cols[None, :] == 0, base_s[:, None], base_b[:, None])
        tl.store(CNT + b * stb + (rows - ROW0)[:, None] * stl + cols[None, :], out2,
                 mask=rmask[:, None] & (cols[None, :] < 2))


def idx_at_fwd_kernel(
    QI, KI, W, IDX, OUT,
    sqb, sql, skb, skl, swb, swl, sib, sil,
    KSEL, H: tl.constexpr, HP: tl.constexpr, HB: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    """OUT[t, k] = sum_j w[t, j] relu(q[t, j] . k[idx[t, k]]) over the heads in blocks of HB (one block, the
    whole [HP, d_I] q tile held over the keys, when HB == HP); later blocks add to the sums in OUT."""
    t = tl.program_id(0).to(tl.int64)  # int64: the offsets pass 2^31 at 64 x 128 past two rows of 128K
    b = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, HB)
    dd = tl.arange(0, DI_PAD)
    dm = dd < DI
    for j0 in range(0, HP, HB):  # HB == HP: runs once, with constant bounds (the code of one [HP, d_I] tile)
        jm = j < H - j0
        q = tl.load(QI + b * sqb + t * sql + j0 * DI + j[:, None] * DI + dd[None, :], mask=jm[:, None] & dm[None, :],
                    other=0.0)
        if INTERP:
            q = q.to(tl.float32)
        wv = tl.load(W + b * swb + t * swl + j0 + j, mask=jm, other=0.0).to(tl.float32)
        for k0 in range(0, KSEL, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1)
            ok = ix >= 0
            ixs = tl.where(ok, ix, 0).to(tl.int64)
            kb = tl.load(KI + b * skb + ixs[:, None] * skl + dd[None, :], mask=ok[:, None] & dm[None, :],
                         other=0.0)
            if INTERP:
                kb = kb.to(tl.float32)
            if IEEE:
                logit = tl.dot(q, tl.trans(kb), input_precision="ieee")
            else:
                logit = tl.dot(q, tl.trans(kb))
            sc = tl.sum(tl.maximum(logit, 0.0) * wv[:, None], 0)
            if HB < HP:  # this program's own row of OUT: the first block finds nothing to add
                sc += tl.load(OUT + b * sib + t * sil + kk, mask=(kk < KSEL) & (j0 > 0), other=0.0)
            sc = tl.where(ok, sc, float("-inf"))
            tl.store(OUT + b * sib + t * sil + kk, sc, mask=kk < KSEL)


def idx_at_bwd_kernel(
    QI, KI, W, IDX, GO, DQ, DK, DW,
    sqb, sql, skb, skl, swb, swl, sib, sil, sdkb, sdkl,
    KSEL, H: tl.constexpr, HP: tl.constexpr, HB: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    """dq (t), dw (t) of a block of HB heads in registers; dk of the gathered rows by fp32 atomics (one set per
    head block: the keys are gathered again for each block)."""
    t = tl.program_id(0).to(tl.int64)  # int64: the offsets pass 2^31 at 64 x 128 past two rows of 128K
    b = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, HB)
    dd = tl.arange(0, DI_PAD)
    dm = dd < DI
    for j0 in range(0, HP, HB):  # HB == HP: runs once, with constant bounds (the code of one [HP, d_I] tile)
        jm = j < H - j0
        q = tl.load(QI + b * sqb + t * sql + j0 * DI + j[:, None] * DI + dd[None, :], mask=jm[:, None] & dm[None, :],
                    other=0.0)
        if INTERP:
            q = q.to(tl.float32)
        wv = tl.load(W + b * swb + t * swl + j0 + j, mask=jm, other=0.0).to(tl.float32)
        dq = tl.zeros([HB, DI_PAD], tl.float32)
        dw = tl.zeros([HB], tl.float32)
        for k0 in range(0, KSEL, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1)
            ok = ix >= 0
            ixs = tl.where(ok, ix, 0).to(tl.int64)
            rm = ok[:, None] & dm[None, :]
            kb = tl.load(KI + b * skb + ixs[:, None] * skl + dd[None, :], mask=rm, other=0.0)
            if INTERP:
                kb = kb.to(tl.float32)
            go = tl.load(GO + b * sib + t * sil + kk, mask=(kk < KSEL) & ok, other=0.0)
            if IEEE:
                logit = tl.dot(q, tl.trans(kb), input_precision="ieee")
            else:
                logit = tl.dot(q, tl.trans(kb))
            dw += tl.sum(tl.maximum(logit, 0.0) * go[None, :], 1)
            dl = tl.where(logit > 0.0, wv[:, None] * go[None, :], 0.0)  # [HB, BLOCK_K]
            if IEEE:
                dq += tl.dot(dl, kb, input_precision="ieee")
                dk_blk = tl.dot(tl.trans(dl), q, input_precision="ieee")
            else:
                dq += tl.dot(dl.to(kb.dtype), kb)
                dk_blk = tl.dot(tl.trans(dl.to(q.dtype)), q)
            tl.atomic_add(DK + b * sdkb + ixs[:, None] * sdkl + dd[None, :], dk_blk, mask=rm, sem="relaxed")
        tl.store(DQ + b * sqb + t * sql + j0 * DI + j[:, None] * DI + dd[None, :], dq, mask=jm[:, None] & dm[None, :])
        tl.store(DW + b * swb + t * swl + j0 + j, dw, mask=jm)


def idx_scores_hn_kernel(
    QI, KI, W, OUT, KS,
    sqb, sql, skb, skl, swb, swl, sob, sol, sksb,
    L, ROW0, ROW_END,
    HP: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr, BQ: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, INTERP: tl.constexpr, FP8: tl.constexpr, F8OPS: tl.constexpr,
):
    nblk = tl.cdiv(ROW_END - ROW0, BQ)
    qb = nblk - 1 - tl.program_id(0)  # longest rows first
    b = tl.program_id(1).to(tl.int64)
    t0 = ROW0 + qb * BQ
    dd = tl.arange(0, DI_PAD)
    r = tl.arange(0, BQ * HP)  # query-major: column r is query r // HP, head r % HP
    rows_r = t0 + r // HP
    rmask_r = rows_r < ROW_END
    q = tl.load(QI + b * sqb + rows_r[:, None].to(tl.int64) * sql + (r % HP)[:, None] * DI + dd[None, :],
                mask=rmask_r[:, None] & (dd < DI)[None, :], other=0.0)
    w = tl.load(W + b * swb + rows_r.to(tl.int64) * swl + r % HP, mask=rmask_r, other=0.0).to(tl.float32)
    if INTERP and not F8OPS:
        q = q.to(tl.float32)
    rows = t0 + tl.arange(0, BQ)
    s_end = tl.minimum(t0 + BQ, ROW_END)
    for s0 in range(0, s_end, BLOCK_N):
        s = s0 + tl.arange(0, BLOCK_N)
        kt = tl.load(KI + b * skb + s[:, None] * skl + dd[None, :], mask=(s < L)[:, None] & (dd < DI)[None, :],
                     other=0.0)
        if INTERP and not F8OPS:
            kt = kt.to(tl.float32)
        if IEEE:
            logit = tl.dot(kt, tl.trans(q), input_precision="ieee")  # [BLOCK_N, BQ * HP]
        else:
            logit = tl.dot(kt, tl.trans(q))
        v = tl.maximum(logit, 0.0) * w[None, :]
        sc = tl.sum(tl.reshape(v, [BLOCK_N, BQ, HP]), axis=2)  # [BLOCK_N, BQ]: each query's head sum
        if FP8:
            sc *= tl.load(KS + b * sksb + s, mask=s < L, other=1.0)[:, None]
        ok = (s[:, None] <= rows[None, :]) & (rows < ROW_END)[None, :]
        tl.store(OUT + b * sob + (rows - ROW0)[None, :].to(tl.int64) * sol + s[:, None], sc, mask=ok)
