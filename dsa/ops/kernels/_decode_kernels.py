"""Triton kernels of the decode step (imported only when triton is importable).

``decode_attn_kernel``: split-K attention of one new query (b, t) and a block of BLOCK_H of its KV head's
query heads over cached rows: the selected rows (IDX, sparse) or every row s <= q_pos (DENSE, flash
decoding). Program (query b*T + t, split, kv head x head block; a flat grid, head blocks fastest) covers the slots
[split * SPLIT, (split+1) * SPLIT) of the selection (or of the cache) and writes its partial output, normalised, with
its running max and sum (base 2); the caller merges the splits. The heads of one KV head share every gathered row
through one [BLOCK_H, D] x [D, BLOCK_K] product: many query heads on one K/V (MQA, MLA in MQA mode) read each row once
per head block. The score dim D (576 for MLA) is walked in BLOCK_D slices so that it need not be a power of two; the
value dim is padded to DV_PAD.

``decode_index_scores_kernel``: the indexer scores of one new query over a block of cached indexer keys,
sum_j w_j ReLU(q_j . k_s), -inf past the query's position; FP8: q and k hold e4m3 values (F8OPS: as e4m3,
else their bf16 copies), w carries the query scales and each key's score is multiplied by its scale KS[b, s].
"""

import triton.language as tl


def decode_attn_kernel(
    Q, K, V, IDX, POS, OP, MP, LP, sm_scale,
    sqb, sqh, sqt,
    skb, skh, sks,
    svb, svh, svs,
    sib, sit,
    T, HKV, NHB, KSEL, SPLIT, NSPLIT,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    DV: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
    DENSE: tl.constexpr, INTERP: tl.constexpr, PREC: tl.constexpr,
):
    # one flat grid, head blocks fastest: the programs that read the same rows (every head block of one query
    # and split) run side by side, so each row comes from HBM once and from L2 for the other head blocks
    pid = tl.program_id(0)
    nh = HKV * NHB
    hb = pid % nh
    sp = (pid // nh) % NSPLIT
    bt = (pid // (nh * NSPLIT)).to(tl.int64)
    b = bt // T
    t = bt % T
    hk = hb // NHB
    g = (hb % NHB) * BLOCK_H + tl.arange(0, BLOCK_H)
    gm = g < G
    h = (hk * G + g).to(tl.int64)
    ee = tl.arange(0, DV_PAD)
    em = ee < DV
    dd = tl.arange(0, BLOCK_D)
    qbase = Q + b * sqb + h[:, None] * sqh + t * sqt
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    pos = tl.load(POS + bt)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DV_PAD], tl.float32)
    lo = sp * SPLIT
    hi = tl.minimum(lo + SPLIT, KSEL)
    if DENSE:
        hi = tl.minimum(hi, pos + 1)  # rows past the query are never read
    for k0 in range(lo, hi, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        inside = kk < hi
        if DENSE:
            ix = kk
            ok = inside
        else:
            ix = tl.load(IDX + b * sib + t * sit + kk, mask=inside, other=-1)
            ok = ix >= 0
        rows = tl.where(ok, ix, 0).to(tl.int64)
        s = tl.zeros([BLOCK_H, BLOCK_K], tl.float32)
        for d0 in tl.static_range(0, D, BLOCK_D):
            dm = (d0 + dd) < D
            qd = tl.load(qbase + d0 + dd[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
            kd = tl.load(kbase + rows[:, None] * sks + d0 + dd[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
            if INTERP:  # the CPU interpreter's tl.dot mishandles bf16: compute in fp32 there
                qd = qd.to(tl.float32)
                kd = kd.to(tl.float32)
            s += tl.dot(qd, tl.trans(kd), input_precision=PREC)
        s = tl.where(ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        vb = tl.load(vbase + rows[:, None] * svs + ee[None, :], mask=ok[:, None] & em[None, :], other=0.0)
        if INTERP:
            vb = vb.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PREC)
        m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    # partials: (B*T, H, NSPLIT, DV) and (B*T, H, NSPLIT), contiguous
    hall = HKV * G
    prow = (bt * hall + h) * NSPLIT + sp
    tl.store(OP + prow[:, None] * DV + ee[None, :], out, mask=gm[:, None] & em[None, :])
    tl.store(MP + prow, m_i, mask=gm)
    tl.store(LP + prow, l_i, mask=gm)


def decode_index_scores_kernel(
    QI, KI, W, POS, KS, OUT,
    sqb, sqt, sqh,
    skb, sks,
    swb, swt, sksb,
    T, S,
    HI: tl.constexpr, HI_PAD: tl.constexpr, DI: tl.constexpr, DI_PAD: tl.constexpr,
    BLOCK_S: tl.constexpr, FP8: tl.constexpr, F8OPS: tl.constexpr, INTERP: tl.constexpr, PREC: tl.constexpr,
):
    bt = tl.program_id(0).to(tl.int64)
    sb = tl.program_id(1)
    b = bt // T
    t = bt % T
    j = tl.arange(0, HI_PAD)
    jm = j < HI
    dd = tl.arange(0, DI_PAD)
    dm = dd < DI
    q = tl.load(QI + b * sqb + t * sqt + j[:, None] * sqh + dd[None, :], mask=jm[:, None] & dm[None, :], other=0.0)
    w = tl.load(W + b * swb + t * swt + j, mask=jm, other=0.0).to(tl.float32)
    pos = tl.load(POS + bt)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    sm = s < S
    kb = tl.load(KI + b * skb + s[:, None].to(tl.int64) * sks + dd[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
    if INTERP and not F8OPS:  # the interpreter runs fp8 tl.dot exactly (triton 3.9); bf16 it rounds
        q = q.to(tl.float32)
        kb = kb.to(tl.float32)
    logits = tl.maximum(tl.dot(kb, tl.trans(q), input_precision=PREC), 0.0)  # (BLOCK_S, HI_PAD)
    score = tl.sum(logits * w[None, :], 1)
    if FP8:  # the key's scale, after the head sum (positive: it commutes with the ReLU), as the prefill pass
        score *= tl.load(KS + b * sksb + s, mask=sm, other=1.0)
    score = tl.where(s <= pos, score, float("-inf"))
    tl.store(OUT + bt * S + s, score, mask=sm)
