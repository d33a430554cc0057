"""Triton kernels of the sparse attention (imported only when triton is importable).

One program = one query position t, one KV head and one block of BLOCK_H of its G query heads. The head
rows form a [BLOCK_H, D] tile (BLOCK_H at least 16, the smallest M of tl.dot), so every gathered K/V block
is used by a matrix product [BLOCK_H x D] @ [D x BLOCK_K] instead of BLOCK_H vector products. Groups larger
than one block (DeepSeek's MLA in MQA mode: 128 query heads on one latent K/V) take NHB programs per query,
adjacent in launch order so that the second gathers K/V rows the first has just brought into L2. Padded
head rows load zeros and are never stored.

Two head dims: D (q and k, the score dim) and DV (v and the output). The score dim is split as D = D1 + rest
with D1 the largest power of two <= D and the rest padded to D2 (a power of two, at least 16): DeepSeek's
MLA head 576 = 512 latent + 64 RoPE is computed as two exact products instead of one padded to 1024. DV is
padded to a power of two (512 in MLA: exact). V_FROM_K: v is a view of k's first D1 = DV columns (MLA's
latent, as the layer passes it): the gathered K block serves as the V block, half the gathered bytes.

``sparse_attn_bwd_kernel`` gives dQ (in registers) and, with DKV_ATOMIC, dK/dV by fp32 atomics into the
gathered rows (one atomic per element and head block); ``sparse_attn_dkv_headsum_kernel`` gives dK/dV by
one program per (query, block of selected slots, KV head) that sums all G heads in registers before its
atomics (one per element and query); ``sparse_attn_dkv_inv_kernel`` gives dK/dV without atomics, one program
per key row over the queries that selected it (an inverted key -> queries index): deterministic. ``sparse_attn_probs_kernel``
(no grad) turns the forward's lse back into the per-slot probabilities, averaged over the H heads: the
indexer's sparse KL target in O(L * K) memory; ``sparse_attn_probs_query_kernel`` computes the same with one
program per query over all its slots (the query's head tiles loaded once, not once per slot block).

PREC: tl.dot's input precision ("ieee" for fp32 inputs, so that fp32 is exact; ignored for bf16/fp16).
"""

import triton
import triton.language as tl


def sparse_attn_fwd_kernel(
    Q, K, V, IDX, O, LSE, sm_scale,
    sqb, sqh, sql,
    skb, skh, skl,
    svb, svh, svl,
    sib, sil,
    sob, soh, sol,
    slb, slh,
    HKV, KSEL, NHB,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_TAIL: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr, V_FROM_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: B * H * L * d passes 2^31 at MLA sizes
    t = pid // NHB
    hb = pid % NHB
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    gm = g < G
    h = hk * G + g
    d1 = tl.arange(0, D1)
    m1 = d1 < D  # all true unless d_qk < 16
    d2 = D1 + tl.arange(0, D2)  # the tail of the score dim (MLA: the 64 RoPE dims)
    m2 = d2 < D
    ee = tl.arange(0, DV_PAD)
    em = ee < DV
    qrow = Q + b * sqb + h[:, None] * sqh + t * sql
    q1 = tl.load(qrow + d1[None, :], mask=gm[:, None] & m1[None, :], other=0.0)
    if HAS_TAIL:
        q2 = tl.load(qrow + d2[None, :], mask=gm[:, None] & m2[None, :], other=0.0)
        if INTERP:
            q2 = q2.to(tl.float32)
    if INTERP:  # the CPU interpreter's tl.dot mishandles bf16 (stored as uint16): compute in fp32 there
        q1 = q1.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DV_PAD], tl.float32)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    ibase = IDX + b * sib + t * sil
    for k0 in range(0, KSEL, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ix = tl.load(ibase + kk, mask=kk < KSEL, other=-1)
        ok = ix >= 0
        ixs = tl.where(ok, ix, 0).to(tl.int64)
        krow = kbase + ixs[:, None] * skl
        k1 = tl.load(krow + d1[None, :], mask=ok[:, None] & m1[None, :], other=0.0)
        if INTERP:
            k1 = k1.to(tl.float32)
        s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
        if HAS_TAIL:
            k2 = tl.load(krow + d2[None, :], mask=ok[:, None] & m2[None, :], other=0.0)
            if INTERP:
                k2 = k2.to(tl.float32)
            s += tl.dot(q2, tl.trans(k2), input_precision=PREC)
        s = s * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if V_FROM_K:  # MLA: v is the latent, k's first D1 = DV columns: the K block already holds it
            vb = k1
        else:
            vb = tl.load(vbase + ixs[:, None] * svl + ee[None, :], mask=ok[:, None] & em[None, :], other=0.0)
            if INTERP:
                vb = vb.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PREC)
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(O + b * sob + h[:, None] * soh + t * sol + ee[None, :], out.to(O.dtype.element_ty),
             mask=gm[:, None] & em[None, :])
    tl.store(LSE + b * slb + h * slh + t, lse, mask=gm)


def sparse_attn_bwd_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, GQ, GK, GV, sm_scale,
    sqb, sqh, sql,
    skb, skh, skl,
    svb, svh, svl,
    sib, sil,
    sdob, sdoh, sdol,
    slb, slh,
    sgqb, sgqh, sgql,
    sgkb, sgkh, sgkl,
    sgvb, sgvh, sgvl,
    HKV, KSEL, NHB,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_TAIL: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr, DKV_ATOMIC: tl.constexpr,
    V_FROM_K: tl.constexpr,
):
    """dQ for query t (head block hb of group hk) in registers; with DKV_ATOMIC, dK/dV of the gathered rows by
    fp32 atomics (scatter; GK, GV fp32, zero-filled by the caller), else dQ only."""
    pid = tl.program_id(0).to(tl.int64)
    t = pid // NHB
    hb = pid % NHB
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    g = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    gm = g < G
    h = hk * G + g
    d1 = tl.arange(0, D1)
    m1 = d1 < D  # all true unless d_qk < 16
    d2 = D1 + tl.arange(0, D2)
    m2 = d2 < D
    ee = tl.arange(0, DV_PAD)
    em = ee < DV
    qrow = Q + b * sqb + h[:, None] * sqh + t * sql
    q1 = tl.load(qrow + d1[None, :], mask=gm[:, None] & m1[None, :], other=0.0)
    if HAS_TAIL:
        q2 = tl.load(qrow + d2[None, :], mask=gm[:, None] & m2[None, :], other=0.0)
        if INTERP:
            q2 = q2.to(tl.float32)
    do = tl.load(DO + b * sdob + h[:, None] * sdoh + t * sdol + ee[None, :], mask=gm[:, None] & em[None, :],
                 other=0.0)
    if INTERP:
        q1 = q1.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # a query with no selection: P = 0
    delta = tl.load(DELTA + b * slb + h * slh + t, mask=gm, other=0.0)
    lse2 = lse * 1.4426950408889634
    qk_scale = sm_scale * 1.4426950408889634
    dq1 = tl.zeros([BLOCK_H, D1], tl.float32)
    dq2 = tl.zeros([BLOCK_H, D2], tl.float32)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    dkbase = GK + b * sgkb + hk * sgkh
    dvbase = GV + b * sgvb + hk * sgvh
    ibase = IDX + b * sib + t * sil
    for k0 in range(0, KSEL, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ix = tl.load(ibase + kk, mask=kk < KSEL, other=-1)
        ok = ix >= 0
        ixs = tl.where(ok, ix, 0).to(tl.int64)
        vm = ok[:, None] & em[None, :]
        krow = kbase + ixs[:, None] * skl
        k1 = tl.load(krow + d1[None, :], mask=ok[:, None] & m1[None, :], other=0.0)
        if INTERP:
            k1 = k1.to(tl.float32)
        if V_FROM_K:
            vb = k1
        else:
            vb = tl.load(vbase + ixs[:, None] * svl + ee[None, :], mask=vm, other=0.0)
            if INTERP:
                vb = vb.to(tl.float32)
        s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
        if HAS_TAIL:
            k2 = tl.load(krow + d2[None, :], mask=ok[:, None] & m2[None, :], other=0.0)
            if INTERP:
                k2 = k2.to(tl.float32)
            s += tl.dot(q2, tl.trans(k2), input_precision=PREC)
        dp = tl.dot(do, tl.trans(vb), input_precision=PREC)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(ok[None, :], p, 0.0)
        ds = (p * (dp - delta[:, None])).to(k1.dtype)
        dq1 += tl.dot(ds, k1, input_precision=PREC)
        if HAS_TAIL:
            dq2 += tl.dot(ds, k2, input_precision=PREC)
        if DKV_ATOMIC:
            dv_blk = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            tl.atomic_add(dvbase + ixs[:, None] * sgvl + ee[None, :], dv_blk, mask=vm, sem="relaxed")
            dk1 = tl.dot(tl.trans(ds), q1, input_precision=PREC)
            dkrow = dkbase + ixs[:, None] * sgkl
            tl.atomic_add(dkrow + d1[None, :], dk1 * sm_scale, mask=ok[:, None] & m1[None, :], sem="relaxed")
            if HAS_TAIL:
                dk2 = tl.dot(tl.trans(ds), q2, input_precision=PREC)
                tl.atomic_add(dkrow + d2[None, :], dk2 * sm_scale, mask=ok[:, None] & m2[None, :], sem="relaxed")
    gqrow = GQ + b * sgqb + h[:, None] * sgqh + t * sgql
    tl.store(gqrow + d1[None, :], (dq1 * sm_scale).to(GQ.dtype.element_ty), mask=gm[:, None] & m1[None, :])
    if HAS_TAIL:
        tl.store(gqrow + d2[None, :], (dq2 * sm_scale).to(GQ.dtype.element_ty), mask=gm[:, None] & m2[None, :])


def sparse_attn_dkv_inv_kernel(
    Q, K, V, DO, LSE, DELTA, INV_T, INV_START, GK, GV, sm_scale,
    sqb, sqh, sql,
    skb, skh, skl,
    svb, svh, svl,
    sdob, sdoh, sdol,
    slb, slh,
    sgkb, sgkh, sgkl,
    sgvb, sgvh, sgvl,
    L, HKV,
    G: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """dK, dV of key row s of KV head hk without atomics: the sum over the queries that selected s (INV_T
    [INV_START[b*L+s] : INV_START[b*L+s+1]], in a fixed order, so the result is deterministic) and over the
    G heads of the group. Each (query, head) recomputes its probability from the forward's lse: vector work,
    BLOCK_T queries at a time (a gathered [BLOCK_T, D] tile of q and [BLOCK_T, DV] of dO per head)."""
    s = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    dd = tl.arange(0, D_PAD)
    dm = dd < D
    ee = tl.arange(0, DV_PAD)
    em = ee < DV
    kr = tl.load(K + b * skb + hk * skh + s * skl + dd, mask=dm, other=0.0).to(tl.float32)
    vr = tl.load(V + b * svb + hk * svh + s * svl + ee, mask=em, other=0.0).to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    lo = tl.load(INV_START + b * L + s)
    hi = tl.load(INV_START + b * L + s + 1)
    dk = tl.zeros([D_PAD], tl.float32)
    dv = tl.zeros([DV_PAD], tl.float32)
    for e0 in range(lo, hi, BLOCK_T):
        ee_t = e0 + tl.arange(0, BLOCK_T)
        okt = ee_t < hi
        tq = tl.load(INV_T + ee_t, mask=okt, other=0).to(tl.int64)
        for gi in range(0, G):
            h = hk * G + gi
            qt = tl.load(Q + b * sqb + h * sqh + tq[:, None] * sql + dd[None, :], mask=okt[:, None] & dm[None, :],
                         other=0.0).to(tl.float32)
            dot_ = tl.load(DO + b * sdob + h * sdoh + tq[:, None] * sdol + ee[None, :],
                           mask=okt[:, None] & em[None, :], other=0.0).to(tl.float32)
            lse = tl.load(LSE + b * slb + h * slh + tq, mask=okt, other=float("inf"))
            delta = tl.load(DELTA + b * slb + h * slh + tq, mask=okt, other=0.0)
            sc = tl.sum(qt * kr[None, :], 1)
            p = tl.math.exp2(sc * qk_scale - lse * 1.4426950408889634)
            p = tl.where(okt, p, 0.0)
            dp = tl.sum(dot_ * vr[None, :], 1)
            ds = p * (dp - delta)
            dv += tl.sum(p[:, None] * dot_, 0)
            dk += tl.sum(ds[:, None] * qt, 0)
    tl.store(GK + b * sgkb + hk * sgkh + s * sgkl + dd, (dk * sm_scale).to(GK.dtype.element_ty), mask=dm)
    tl.store(GV + b * sgvb + hk * sgvh + s * sgvl + ee, dv.to(GV.dtype.element_ty), mask=em)


def sparse_attn_probs_kernel(
    Q, K, IDX, LSE, P, sm_scale, inv_h,
    sqb, sqh, sql,
    skb, skh, skl,
    sib, sil,
    slb, slh,
    spb, spl,
    HKV, KSEL, NKB, NHB,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_TAIL: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """P[b, t, j] = mean over the H heads of exp(scale * q . k[idx[b, t, j]] - lse), 0 at unused slots.

    One program = one query t and one block of BLOCK_K of its selected slots; it loops over the KV heads and
    their head blocks (each a [BLOCK_H, D] tile against the gathered key block), so the head sum stays in
    registers and every output element is written once, without atomics.
    """
    t = tl.program_id(0).to(tl.int64)  # int64 offsets, as in the forward kernel
    bj = tl.program_id(1).to(tl.int64)
    b = bj // NKB
    kk = (bj % NKB) * BLOCK_K + tl.arange(0, BLOCK_K)
    d1 = tl.arange(0, D1)
    m1 = d1 < D  # all true unless d_qk < 16
    d2 = D1 + tl.arange(0, D2)
    m2 = d2 < D
    ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1)
    ok = ix >= 0
    ixs = tl.where(ok, ix, 0).to(tl.int64)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    total = tl.zeros([BLOCK_K], tl.float32)
    for hbk in range(0, HKV * NHB):
        hk = (hbk // NHB).to(tl.int64)  # h * (head stride) passes 2^31 at MLA 128 x 576 from L = 32K
        g = (hbk % NHB) * BLOCK_H + tl.arange(0, BLOCK_H)
        gm = g < G
        h = hk * G + g
        qrow = Q + b * sqb + h[:, None] * sqh + t * sql
        krow = K + b * skb + hk * skh + ixs[:, None] * skl
        q1 = tl.load(qrow + d1[None, :], mask=gm[:, None] & m1[None, :], other=0.0)
        k1 = tl.load(krow + d1[None, :], mask=ok[:, None] & m1[None, :], other=0.0)
        if INTERP:  # see the forward kernel: bf16 tl.dot in fp32 in the interpreter
            q1 = q1.to(tl.float32)
            k1 = k1.to(tl.float32)
        s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
        if HAS_TAIL:
            q2 = tl.load(qrow + d2[None, :], mask=gm[:, None] & m2[None, :], other=0.0)
            k2 = tl.load(krow + d2[None, :], mask=ok[:, None] & m2[None, :], other=0.0)
            if INTERP:
                q2 = q2.to(tl.float32)
                k2 = k2.to(tl.float32)
            s += tl.dot(q2, tl.trans(k2), input_precision=PREC)
        # padded heads and queries with no selection (lse = -inf) get lse = +inf, hence P = 0
        lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        total += tl.sum(tl.math.exp2(s * qk_scale - lse2[:, None]), 0)
    total = tl.where(ok, total * inv_h, 0.0)
    tl.store(P + b * spb + t * spl + kk, total, mask=kk < KSEL)


def sparse_attn_probs_query_kernel(
    Q, K, IDX, LSE, P, sm_scale, inv_h,
    sqb, sqh, sql,
    skb, skh, skl,
    sib, sil,
    slb, slh,
    spb, spl,
    HKV, KSEL, NHB,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_TAIL: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """P as ``sparse_attn_probs_kernel``, one program = one query t over all its selected slots: per head block
    (outer loop) its [BLOCK_H, D] q tile and lse are loaded once and held while the selected keys stream past in
    blocks of BLOCK_K (inner loop, as the forward); each block's head sum (times 1/H) is added to the program's
    own row of P, which the first head block writes. The slot-block kernel reloads the whole q tile of the
    query (MLA: 128 x 576) for every block of slots."""
    t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    d1 = tl.arange(0, D1)
    m1 = d1 < D
    d2 = D1 + tl.arange(0, D2)
    m2 = d2 < D
    qk_scale = sm_scale * 1.4426950408889634
    prow = P + b * spb + t * spl
    ibase = IDX + b * sib + t * sil
    for hbk in range(0, HKV * NHB):
        hk = (hbk // NHB).to(tl.int64)
        g = (hbk % NHB) * BLOCK_H + tl.arange(0, BLOCK_H)
        gm = g < G
        h = hk * G + g
        qrow = Q + b * sqb + h[:, None] * sqh + t * sql
        q1 = tl.load(qrow + d1[None, :], mask=gm[:, None] & m1[None, :], other=0.0)
        if HAS_TAIL:
            q2 = tl.load(qrow + d2[None, :], mask=gm[:, None] & m2[None, :], other=0.0)
            if INTERP:
                q2 = q2.to(tl.float32)
        if INTERP:
            q1 = q1.to(tl.float32)
        lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        kbase = K + b * skb + hk * skh
        for k0 in range(0, KSEL, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            ix = tl.load(ibase + kk, mask=kk < KSEL, other=-1)
            ok = ix >= 0
            krow = kbase + tl.where(ok, ix, 0).to(tl.int64)[:, None] * skl
            k1 = tl.load(krow + d1[None, :], mask=ok[:, None] & m1[None, :], other=0.0)
            if INTERP:
                k1 = k1.to(tl.float32)
            s = tl.dot(q1, tl.trans(k1), input_precision=PREC)
            if HAS_TAIL:
                k2 = tl.load(krow + d2[None, :], mask=ok[:, None] & m2[None, :], other=0.0)
                if INTERP:
                    k2 = k2.to(tl.float32)
                s += tl.dot(q2, tl.trans(k2), input_precision=PREC)
            part = tl.sum(tl.math.exp2(s * qk_scale - lse2[:, None]), 0) * inv_h
            part += tl.load(prow + kk, mask=(kk < KSEL) & (hbk > 0), other=0.0)  # the earlier head blocks' sum
            tl.store(prow + kk, tl.where(ok, part, 0.0), mask=kk < KSEL)
        tl.debug_barrier()  # this block's row of P written before the next block's threads read it


def sparse_attn_dkv_headsum_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, GK, GV, sm_scale,
    sqb, sqh, sql,
    skb, skh, skl,
    svb, svh, svl,
    sib, sil,
    sdob, sdoh, sdol,
    slb, slh,
    sgkb, sgkh, sgkl,
    sgvb, sgvh, sgvl,
    HKV, KSEL, NKB,
    G: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
    HAS_TAIL: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr, V_FROM_K: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """dK, dV of the BLOCK_K rows that query t selected in slots [kb*BLOCK_K, (kb+1)*BLOCK_K), summed over
    all G query heads of KV head hk in registers, then added to GK, GV (fp32, zero-filled) by one atomic per
    (query, key) pair and element: the head sum that the atomic strategy leaves to NHB atomics.

    The programs of one query are adjacent in launch order: the q and dO rows that each re-reads (all G heads)
    come from L2 after the first. Per head block (a runtime loop over the group), transposed as FlashAttention's
    dK/dV pass so that the key block [BLOCK_K, D] is the A operand of the score products and q, dO
    [BLOCK_H, D] only B operands:
    Sᵀ = K qᵀ, Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e), dPᵀ = V dOᵀ, dSᵀ = Pᵀ ⊙ (dPᵀ − delta);
    dV += Pᵀ dO [BLOCK_K, DV], dK += scale · dSᵀ q [BLOCK_K, D]. dQ is the other kernel's
    (sparse_attn_bwd_kernel with DKV_ATOMIC=False).

    V_FROM_K (MLA: v = k[..., :D1]): the K block serves as V and dV goes into dK's first D1 columns, one
    accumulator and one D-wide atomic row (GV is not written). Both terms go into that accumulator by one
    product: as two products Triton gives the first (its result feeds another dot) a warp layout of its own
    and moves the [BLOCK_K, D1] fp32 accumulator through shared memory twice per step (sm_90a: thousands of
    bytes spilled). So one tile bc [2*BLOCK_H, D1] holds dO of head j in row 2j and q of head j in row 2j+1:
    X = K bcᵀ gives dPᵀ and Sᵀ in alternate columns, and dk += [Pᵀ, dSᵀ] (interleaved the same way) · bc.
    The tail tile bc2 holds q's last dims in the odd rows and zeros in the even ones (dO has none), so the
    same A operand gives dK's tail. ALIGNED: q and dO rows start on 16 bytes (the launch code checks), so the
    one pointer tile over both tensors still loads in 16-byte vectors.

    Expected fp32 atomic traffic per (query, key) pair (4 B per element; MLA 128 x 576/512 in brackets):
    - atomic (sparse_attn_bwd_kernel): NHB·(D + DV)·4 with NHB = G / BLOCK_H head blocks [4·1088·4 = 17408 B]
    - headsum, K and V apart: (D + DV)·4 [4352 B]; V_FROM_K: D·4 [2304 B, 7.6x fewer than atomic]
    - inverted (sparse_attn_dkv_inv_kernel): none (each row stored once), but G·(D + DV)·2 B re-read per pair
    Reads headsum adds instead: q and dO of all G heads per program, G·(D + DV)·2 / BLOCK_K B per pair (L2
    hits) [128·1088·2 / 64 = 4352 B at BLOCK_K 64], and S, dP recomputed: with the dQ kernel's the backward
    does 2·G·(5·D + 4·DV) FLOPs per pair against the 2·G·(3·D + 2·DV) counted (1.8x at MLA).
    """
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: B * H * L * d passes 2^31 at MLA sizes
    t = pid // NKB
    kb = pid % NKB
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    d1 = tl.arange(0, D1)
    m1 = d1 < D  # all true unless d_qk < 16
    d2 = D1 + tl.arange(0, D2)
    m2 = d2 < D
    ee = tl.arange(0, DV_PAD)
    em = ee < DV
    kk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1)
    ok = ix >= 0
    ixs = tl.where(ok, ix, 0).to(tl.int64)
    krow = K + b * skb + hk * skh + ixs[:, None] * skl
    k1 = tl.load(krow + d1[None, :], mask=ok[:, None] & m1[None, :], other=0.0)
    if INTERP:  # the CPU interpreter's tl.dot mishandles bf16: compute in fp32 there
        k1 = k1.to(tl.float32)
    if HAS_TAIL:
        k2 = tl.load(krow + d2[None, :], mask=ok[:, None] & m2[None, :], other=0.0)
        if INTERP:
            k2 = k2.to(tl.float32)
    if V_FROM_K:
        vb = k1
    else:
        vb = tl.load(V + b * svb + hk * svh + ixs[:, None] * svl + ee[None, :], mask=ok[:, None] & em[None, :],
                     other=0.0)
        if INTERP:
            vb = vb.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dk1 = tl.zeros([BLOCK_K, D1], tl.float32)
    dk2 = tl.zeros([BLOCK_K, D2], tl.float32)
    dv = tl.zeros([BLOCK_K, DV_PAD], tl.float32)
    r = tl.arange(0, 2 * BLOCK_H)  # V_FROM_K: the rows of the interleaved [dO; q] tile
    isq = (r % 2) == 1
    for h0 in range(0, G, BLOCK_H):
        g = h0 + tl.arange(0, BLOCK_H)
        gm = g < G
        h = hk * G + g  # int64 (hk is): h * sqh passes 2^31 at MLA 128 x 576 from L = 32K
        # padded heads and queries with no selection: lse = +inf, so P = 0 and they add nothing
        lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        delta = tl.load(DELTA + b * slb + h * slh + t, mask=gm, other=0.0)
        if V_FROM_K:  # bc: row 2j dO of head h0 + j, row 2j+1 its q (bc2: q's tail in odd rows, 0 in even)
            gc = h0 + r // 2
            hc = hk * G + gc
            okc = gc < G
            rowc = tl.where(isq, Q + b * sqb + hc * sqh + t * sql, DO + b * sdob + hc * sdoh + t * sdol)
            if ALIGNED:  # rows 16-byte aligned (checked by the launch code): vector loads despite the where
                rowc = tl.multiple_of(rowc, 16)
            bc = tl.load(rowc[:, None] + d1[None, :], mask=okc[:, None] & m1[None, :], other=0.0)
            if INTERP:
                bc = bc.to(tl.float32)
            x = tl.dot(k1, tl.trans(bc), input_precision=PREC)  # [BLOCK_K, 2*BLOCK_H]: dPᵀ, Sᵀ interleaved
            if HAS_TAIL:
                bc2 = tl.load(Q + b * sqb + hc[:, None] * sqh + t * sql + d2[None, :],
                              mask=(okc & isq)[:, None] & m2[None, :], other=0.0)
                if INTERP:
                    bc2 = bc2.to(tl.float32)
                x += tl.dot(k2, tl.trans(bc2), input_precision=PREC)
            dpt, st = tl.split(tl.reshape(x, [BLOCK_K, BLOCK_H, 2]))
        else:
            qrow = Q + b * sqb + h[:, None] * sqh + t * sql
            q1 = tl.load(qrow + d1[None, :], mask=gm[:, None] & m1[None, :], other=0.0)
            do = tl.load(DO + b * sdob + h[:, None] * sdoh + t * sdol + ee[None, :], mask=gm[:, None] & em[None, :],
                         other=0.0)
            if INTERP:
                q1 = q1.to(tl.float32)
                do = do.to(tl.float32)
            st = tl.dot(k1, tl.trans(q1), input_precision=PREC)  # Sᵀ [BLOCK_K, BLOCK_H]
            if HAS_TAIL:
                q2 = tl.load(qrow + d2[None, :], mask=gm[:, None] & m2[None, :], other=0.0)
                if INTERP:
                    q2 = q2.to(tl.float32)
                st += tl.dot(k2, tl.trans(q2), input_precision=PREC)
            dpt = tl.dot(vb, tl.trans(do), input_precision=PREC)
        pt = tl.math.exp2(st * qk_scale - lse2[None, :])
        dst = pt * (dpt - delta[None, :]) * sm_scale  # scaled before the cast: no rescaling after the loop
        if V_FROM_K:  # one product adds Pᵀ dO + dSᵀ q: dV and dK's first D1 columns in one accumulator
            ac = tl.reshape(tl.join(pt, dst), [BLOCK_K, 2 * BLOCK_H]).to(bc.dtype)
            dk1 += tl.dot(ac, bc, input_precision=PREC)
            if HAS_TAIL:
                dk2 += tl.dot(ac, bc2, input_precision=PREC)
        else:
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
            dk1 += tl.dot(dst.to(q1.dtype), q1, input_precision=PREC)
            if HAS_TAIL:
                dk2 += tl.dot(dst.to(q2.dtype), q2, input_precision=PREC)
    # the rows again, not the loop-invariant ixs: addresses computed before the loop would stay live through it
    ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1, volatile=True)
    ok = ix >= 0
    ixs = tl.where(ok, ix, 0).to(tl.int64)
    dkrow = GK + b * sgkb + hk * sgkh + ixs[:, None] * sgkl
    tl.atomic_add(dkrow + d1[None, :], dk1, mask=ok[:, None] & m1[None, :], sem="relaxed")
    if HAS_TAIL:
        tl.atomic_add(dkrow + d2[None, :], dk2, mask=ok[:, None] & m2[None, :], sem="relaxed")
    if not V_FROM_K:
        tl.atomic_add(GV + b * sgvb + hk * sgvh + ixs[:, None] * sgvl + ee[None, :], dv,
                      mask=ok[:, None] & em[None, :], sem="relaxed")

