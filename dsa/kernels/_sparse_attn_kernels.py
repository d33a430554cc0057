"""Triton kernels of the sparse attention (imported only when triton is importable).

One program = one query position t and one KV head (its G query heads). The G query rows of the group form
a [G_PAD, D] tile (G padded up to 16, the smallest M of tl.dot), so every gathered K/V block is used by a
matrix product [G_PAD x D] @ [D x BLOCK_K] instead of G vector products. Padded rows load zeros and are
never stored.
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
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV
    g = tl.arange(0, G_PAD)
    dd = tl.arange(0, D_PAD)
    gm = g < G
    dm = dd < D
    h = hk * G + g
    q = tl.load(Q + b * sqb + h[:, None] * sqh + t * sql + dd[None, :], mask=gm[:, None] & dm[None, :], other=0.0)
    if INTERP:  # the CPU interpreter's tl.dot mishandles bf16 (stored as uint16): compute in fp32 there
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # work in base 2
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
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
        vb = tl.load(vbase + ixs[:, None] * svl + dd[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
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
    tl.store(O + b * sob + h[:, None] * soh + t * sol + dd[None, :], out.to(O.dtype.element_ty),
             mask=gm[:, None] & dm[None, :])
    tl.store(LSE + b * slb + h * slh + t, lse, mask=gm)


def sparse_attn_bwd_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, DQ, DK, DV, sm_scale,
    sqb, sqh, sql,
    skb, skh, skl,
    svb, svh, svl,
    sib, sil,
    sdob, sdoh, sdol,
    slb, slh,
    sdqb, sdqh, sdql,
    sdkb, sdkh, sdkl,
    HKV, KSEL,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr,
):
    """dQ for query t (group hk) in registers; dK/dV of the gathered rows by fp32 atomics (scatter)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV
    g = tl.arange(0, G_PAD)
    dd = tl.arange(0, D_PAD)
    gm = g < G
    dm = dd < D
    h = hk * G + g
    qd_mask = gm[:, None] & dm[None, :]
    q = tl.load(Q + b * sqb + h[:, None] * sqh + t * sql + dd[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + b * sdob + h[:, None] * sdoh + t * sdol + dd[None, :], mask=qd_mask, other=0.0)
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
    dkbase = DK + b * sdkb + hk * sdkh
    dvbase = DV + b * sdkb + hk * sdkh
    ibase = IDX + b * sib + t * sil
    for k0 in range(0, KSEL, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ix = tl.load(ibase + kk, mask=kk < KSEL, other=-1)
        ok = ix >= 0
        ixs = tl.where(ok, ix, 0).to(tl.int64)
        rm = ok[:, None] & dm[None, :]
        kb = tl.load(kbase + ixs[:, None] * skl + dd[None, :], mask=rm, other=0.0)
        vb = tl.load(vbase + ixs[:, None] * svl + dd[None, :], mask=rm, other=0.0)
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
        off = ixs[:, None] * sdkl + dd[None, :]
        tl.atomic_add(dkbase + off, dk_blk * sm_scale, mask=rm, sem="relaxed")
        tl.atomic_add(dvbase + off, dv_blk, mask=rm, sem="relaxed")
    tl.store(DQ + b * sdqb + h[:, None] * sdqh + t * sdql + dd[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=qd_mask)
