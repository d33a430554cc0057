"""Triton kernels of the sparse attention (imported only when triton is importable).

One program = one query position t and one KV head (its G query heads). The G query rows of the group form
a [G_PAD, D_PAD] tile (G padded up to 16, the smallest M of tl.dot), so every gathered K/V block is used by
a matrix product [G_PAD x D] @ [D x BLOCK_K] instead of G vector products. Padded rows load zeros and are
never stored.

Two head dims: D (q and k, the score dim) and DV (v and the output). They differ in DeepSeek's MLA
(d_qk = 576 = 512 latent + 64 RoPE, d_v = 512); each is padded to its own power of two, at least 16 (the
smallest K of tl.dot).

``sparse_attn_probs_kernel`` (no grad) turns the forward's lse back into the per-slot probabilities,
averaged over the H heads: the indexer's sparse KL target in O(L * K) memory.
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
    HKV, KSEL,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)  # int64 offsets: B * H * L * d passes 2^31 at MLA sizes
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    g = tl.arange(0, G_PAD)
    dd = tl.arange(0, D_PAD)  # the score dim (q, k)
    ee = tl.arange(0, DV_PAD)  # the value dim (v, o)
    gm = g < G
    dm = dd < D
    em = ee < DV
    h = hk * G + g
    q = tl.load(Q + b * sqb + h[:, None] * sqh + t * sql + dd[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
    if INTERP:  # the CPU interpreter's tl.dot mishandles bf16 (stored as uint16): compute in fp32 there
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, DV_PAD], tl.float32)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    ibase = IDX + b * sib + t * sil
    for k0 in range(0, KSEL, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ix = tl.load(ibase + kk, mask=kk < KSEL, other=-1)
        ok = ix >= 0
        ixs = tl.where(ok, ix, 0).to(tl.int64)
        kb = tl.load(kbase + ixs[:, None] * skl + dd[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
        if INTERP:
            kb = kb.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(kb), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kb))
        s = s * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        vb = tl.load(vbase + ixs[:, None] * svl + ee[None, :], mask=ok[:, None] & em[None, :], other=0.0)
        if INTERP:
            vb = vb.to(tl.float32)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, vb, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb)
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
    HKV, KSEL,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    DV: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    """dQ for query t (group hk) in registers; dK/dV of the gathered rows by fp32 atomics (scatter).

    GQ, GK, GV: the gradients of q, k, v (GK, GV fp32, zero-filled by the caller).
    """
    t = tl.program_id(0).to(tl.int64)  # int64 offsets: B * H * L * d passes 2^31 at MLA sizes
    bh = tl.program_id(1).to(tl.int64)
    b = bh // HKV
    hk = bh % HKV
    g = tl.arange(0, G_PAD)
    dd = tl.arange(0, D_PAD)  # the score dim (q, k, dq, dk)
    ee = tl.arange(0, DV_PAD)  # the value dim (v, do, dv)
    gm = g < G
    dm = dd < D
    em = ee < DV
    h = hk * G + g
    q = tl.load(Q + b * sqb + h[:, None] * sqh + t * sql + dd[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
    do = tl.load(DO + b * sdob + h[:, None] * sdoh + t * sdol + ee[None, :], mask=gm[:, None] & em[None, :],
                 other=0.0)
    if INTERP:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # a query with no selection: P = 0
    delta = tl.load(DELTA + b * slb + h * slh + t, mask=gm, other=0.0)
    lse2 = lse * 1.4426950408889634
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([G_PAD, D_PAD], tl.float32)
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
        km = ok[:, None] & dm[None, :]
        vm = ok[:, None] & em[None, :]
        kb = tl.load(kbase + ixs[:, None] * skl + dd[None, :], mask=km, other=0.0)
        vb = tl.load(vbase + ixs[:, None] * svl + ee[None, :], mask=vm, other=0.0)
        if INTERP:
            kb = kb.to(tl.float32)
            vb = vb.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(kb), input_precision="ieee")
            dp = tl.dot(do, tl.trans(vb), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kb))
            dp = tl.dot(do, tl.trans(vb))
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(ok[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        if IEEE:
            dq += tl.dot(ds, kb, input_precision="ieee")
            dv_blk = tl.dot(tl.trans(p), do, input_precision="ieee")
            dk_blk = tl.dot(tl.trans(ds), q, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(kb.dtype), kb)
            dv_blk = tl.dot(tl.trans(p.to(do.dtype)), do)
            dk_blk = tl.dot(tl.trans(ds.to(q.dtype)), q)
        tl.atomic_add(dkbase + ixs[:, None] * sgkl + dd[None, :], dk_blk * sm_scale, mask=km, sem="relaxed")
        tl.atomic_add(dvbase + ixs[:, None] * sgvl + ee[None, :], dv_blk, mask=vm, sem="relaxed")
    tl.store(GQ + b * sgqb + h[:, None] * sgqh + t * sgql + dd[None, :], (dq * sm_scale).to(GQ.dtype.element_ty),
             mask=gm[:, None] & dm[None, :])


def sparse_attn_probs_kernel(
    Q, K, IDX, LSE, P, sm_scale, inv_h,
    sqb, sqh, sql,
    skb, skh, skl,
    sib, sil,
    slb, slh,
    spb, spl,
    HKV, KSEL, NKB,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    """P[b, t, j] = mean over the H heads of exp(scale * q . k[idx[b, t, j]] - lse), 0 at unused slots.

    One program = one query t and one block of BLOCK_K of its selected slots; it loops over the KV heads
    (each a [G_PAD, D_PAD] tile of its G query heads against the gathered key block), so the head sum stays
    in registers and every output element is written once, without atomics.
    """
    t = tl.program_id(0).to(tl.int64)  # int64 offsets, as in the forward kernel
    bj = tl.program_id(1).to(tl.int64)
    b = bj // NKB
    kk = (bj % NKB) * BLOCK_K + tl.arange(0, BLOCK_K)
    g = tl.arange(0, G_PAD)
    dd = tl.arange(0, D_PAD)
    gm = g < G
    dm = dd < D
    ix = tl.load(IDX + b * sib + t * sil + kk, mask=kk < KSEL, other=-1)
    ok = ix >= 0
    ixs = tl.where(ok, ix, 0).to(tl.int64)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    total = tl.zeros([BLOCK_K], tl.float32)
    for hk in range(0, HKV):
        h = hk * G + g
        q = tl.load(Q + b * sqb + h[:, None] * sqh + t * sql + dd[None, :], mask=gm[:, None] & dm[None, :],
                    other=0.0)
        kb = tl.load(K + b * skb + hk * skh + ixs[:, None] * skl + dd[None, :], mask=ok[:, None] & dm[None, :],
                     other=0.0)
        if INTERP:  # see the forward kernel: bf16 tl.dot in fp32 in the interpreter
            q = q.to(tl.float32)
            kb = kb.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(kb), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(kb))
        # padded heads and queries with no selection (lse = -inf) get lse = +inf, hence P = 0
        lse = tl.load(LSE + b * slb + h * slh + t, mask=gm, other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        total += tl.sum(tl.math.exp2(s * qk_scale - lse2[:, None]), 0)
    total = tl.where(ok, total * inv_h, 0.0)
    tl.store(P + b * spb + t * spl + kk, total, mask=kk < KSEL)
