"""The public ops with impl="triton" (the kernels) against impl="reference" (the plain-PyTorch specification),
outputs and every gradient, on fresh random odd shapes; kernel tuning knobs through the kernel modules.

Without CUDA the Triton path runs through the CPU interpreter (TRITON_INTERPRET=1, set here before the
first kernel is built, and before triton is imported: triton reads it at import, so no test module
collected earlier may import triton or dsa.ops.kernels at module level; tests/model/test_model.py checks that the
model does not) at small, odd sizes. With CUDA the same tests run compiled, plus the
`gpu`-only sizes.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import interpreter_for_module

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported


triton = pytest.importorskip("triton", reason="triton is not importable: the Triton kernels cannot be tested")

from dsa.ops import (  # noqa: E402
    indexer_scores,
    indexer_scores_at,
    indexer_topk,
    resolve_impl,
    selection_to_mask,
    sparse_attention,
    sparse_indexer_kl,
)
from dsa.ops.attention import expand_kv, sparse_attention_gather  # noqa: E402
from dsa.ops.dispatch import interpret_mode  # noqa: E402
from dsa.ops.indexer_loss import sparse_attention_target  # noqa: E402
from dsa.ops.kernels.indexer import indexer_topk_threshold  # noqa: E402
from dsa.ops.kernels.sparse_attention import sparse_attention as attention_kernel  # noqa: E402
from dsa.ops.kernels.sparse_attention import sparse_attention_probs  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
gpu_only = pytest.mark.skipif(not CUDA, reason="real sizes run only with CUDA")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel output"
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _selection(b, l, k, gen, variable=True, empty_row=True):
    """Causal random selection (distinct past positions), variable k per query, -1 in unused slots anywhere."""
    idx = torch.full((b, l, k), -1, dtype=torch.int32)
    for bi in range(b):
        for t in range(l):
            n = min(k, t + 1)
            if variable:
                n = int(torch.randint(0, n + 1, (1,), generator=gen)) if t % 5 else n
            if empty_row and t == 3:
                n = 0
            sel = torch.randperm(t + 1, generator=gen)[:n]
            slots = torch.randperm(k, generator=gen)[:n]  # padded slots anywhere, not only at the end
            idx[bi, t, slots] = sel.to(torch.int32)
    return idx.to(DEV)


def test_dispatch_rule():
    x = torch.zeros(1, device=DEV)
    assert resolve_impl("triton", x, op="test") == "triton"
    assert resolve_impl("auto", x, op="test") == ("triton" if CUDA else "reference")
    if not CUDA:
        assert interpret_mode()


def test_one_interpreter_switch_for_the_dispatch_and_the_kernels(monkeypatch):
    import dsa.checks  # noqa: PLC0415
    from dsa.ops.kernels import _common  # noqa: PLC0415

    assert interpret_mode is dsa.checks.interpret_mode and _common.interpret_mode is dsa.checks.interpret_mode
    for value, on in (("1", True), ("TRUE", True), ("on", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert interpret_mode() is on, value
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not interpret_mode()


def _odd(gen, lo, hi):
    """A fresh odd size in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen)) | 1


def _attention_inputs(gen, b, h, hkv, l, d, dv, dtype):
    return (torch.randn(b, h, l, d, generator=gen).to(DEV, dtype), torch.randn(b, hkv, l, d, generator=gen).to(DEV, dtype),
            torch.randn(b, hkv, l, dv, generator=gen).to(DEV, dtype))


def _check_attention_vs_gather(q, kk, v, idx, scale, tol):
    """impl='triton' output, lse and dq, dk, dv against impl='reference' in fp32 on the same (possibly
    bf16-valued) inputs."""
    go = torch.randn(q.shape[:3] + v.shape[-1:], generator=torch.Generator().manual_seed(q.numel())).to(DEV, q.dtype)
    qs, ks, vs = (x.clone().requires_grad_() for x in (q, kk, v))
    out, lse = sparse_attention(qs, ks, vs, idx, scale=scale, return_lse=True, impl="triton")
    out.backward(go)
    qr, kr, vr = (x.float().requires_grad_() for x in (q, kk, v))
    ref, ref_lse = sparse_attention_gather(qr, kr, vr, idx, scale=scale)
    ref.backward(go.float())
    assert out.dtype == q.dtype and out.shape == ref.shape and lse.dtype == torch.float32
    assert rel(out, ref) < tol
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)  # -inf exactly for the queries with no selection
    assert bool((lse[~fin] == float("-inf")).all())
    assert rel(lse[fin], ref_lse[fin]) < tol
    for name, a, r in (("dq", qs.grad, qr.grad), ("dk", ks.grad, kr.grad), ("dv", vs.grad, vr.grad)):
        assert a.dtype == q.dtype and a.shape == r.shape, name
        assert rel(a, r.to(q.dtype).float() if q.dtype != torch.float32 else r) < tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv,d,dv", [
    (2, 2, 32, 32),  # one head per KV head, one head dim
    (4, 2, 24, 16),  # GQA, d_v < d_qk, both padded
    (16, 1, 40, 24),  # MQA as in DeepSeek's MLA (one latent KV head for 16 query heads), odd dims
    (6, 3, 16, 40),  # GQA, d_v > d_qk
])
def test_sparse_attention_fwd_bwd(gen, dtype, h, hkv, d, dv):
    """Fresh random odd L and K (one or two K blocks), variable selections with -1 slots anywhere, empty rows."""
    b, l, k = 2, _odd(gen, 17, 33), _odd(gen, 9, 35)
    q, kk, v = _attention_inputs(gen, b, h, hkv, l, d, dv, dtype)
    _check_attention_vs_gather(q, kk, v, _selection(b, l, k, gen), d**-0.5, TOL[dtype])


def test_sparse_attention_mla_head_dims(gen):
    """DeepSeek's MLA heads at a tiny L: d_qk 576 (512 + 64) and d_v 512, MQA, bf16."""
    b, h, hkv, l, k = 1, 16, 1, 11, 21
    q, kk, v = _attention_inputs(gen, b, h, hkv, l, 576, 512, torch.bfloat16)
    _check_attention_vs_gather(q, kk, v, _selection(b, l, k, gen), 576**-0.5, TOL[torch.bfloat16])


def _small_headsum_tiles(monkeypatch, block_h: int) -> None:
    """The headsum kernel at block_h heads per step and 16 slots per program: several steps of its head loop
    and several programs per query at the tests' sizes."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    monkeypatch.setattr(sa, "_HEADSUM_TILE", {key: (block_h, 16, 4, 2) for key in sa._HEADSUM_TILE})


@pytest.mark.parametrize("dkv", ["atomic", "inverted", "headsum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_attention_many_heads_on_one_kv_head(gen, dkv, dtype, monkeypatch):
    """MLA-like MQA: more query heads on one K/V head than one program takes (two head blocks, the second
    partly padded), a score dim with a tail (d_qk = 64 + an odd rest, split 64 + 16) and d_v != d_qk; every
    dK/dV path (headsum: two steps of its head loop, up to two slot blocks), every gradient."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    monkeypatch.setattr(sa, "DKV_DEFAULT", dkv)  # the public op's backward takes the module default
    b, h, l, k = 1, 16 + _odd(gen, 3, 13), _odd(gen, 9, 19), _odd(gen, 5, 21)
    d, dv = 64 + _odd(gen, 1, 15), _odd(gen, 9, 31)
    monkeypatch.setattr(sa, "_MAX_BLOCK_H", 16)  # h in 19..29: two programs per query
    _small_headsum_tiles(monkeypatch, 16)
    q, kk, v = _attention_inputs(gen, b, h, 1, l, d, dv, dtype)
    _check_attention_vs_gather(q, kk, v, _selection(b, l, k, gen), d**-0.5, TOL[dtype])


@pytest.mark.parametrize("dkv", ["atomic", "inverted", "headsum"])
def test_sparse_attention_latent_as_key_and_value(gen, dkv, monkeypatch):
    """MLA's absorbed form as the layer passes it: v = k[..., :d_latent], a view (the kernels then read each
    gathered K block as the V block); the gradient of the one latent tensor gathers both paths (headsum: dV
    folded into dK inside the kernel, 8 heads per step)."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    monkeypatch.setattr(sa, "DKV_DEFAULT", dkv)
    _small_headsum_tiles(monkeypatch, 8)
    b, h, l, k = 1, _odd(gen, 3, 9), _odd(gen, 9, 19), _odd(gen, 5, 21)
    d_lat, d = 32, 32 + _odd(gen, 1, 15)
    q = torch.randn(b, h, l, d, generator=gen).to(DEV)
    lat = torch.randn(b, 1, l, d, generator=gen).to(DEV)
    idx = _selection(b, l, k, gen)
    assert sa.v_from_k(lat, lat[..., :d_lat]) and not sa.v_from_k(lat, lat[..., :d_lat].clone())
    go = torch.randn(b, h, l, d_lat, generator=gen).to(DEV)
    outs = []
    for impl in ("triton", "reference"):
        qs, ls = q.clone().requires_grad_(), lat.clone().requires_grad_()
        out = sparse_attention(qs, ls, ls[..., :d_lat], idx, scale=0.3, impl=impl)
        out.backward(go)
        outs.append((out, qs.grad, ls.grad))
    for name, a, r in zip(("out", "dq", "dlatent"), *outs):
        assert rel(a, r) < TOL[torch.float32], name


def _crowded_selection(b, l, k, gen):
    """Every query's slots drawn with repeats from the first three positions (causal), a third of them -1:
    few key rows, each selected by every query and often twice by one, so that many programs add to them."""
    t = torch.arange(l)[None, :, None]
    idx = torch.randint(0, 3, (b, l, k), generator=gen).clamp(max=t)
    idx[torch.rand(b, l, k, generator=gen) < 0.3] = -1
    return idx.to(torch.int32).contiguous().to(DEV)


def _kernel_grads(q, kk, v, idx, scale, dkv, **tile):
    """(dq, dk, dv) of the kernels' backward with dK/dV by ``dkv``, for a fixed output gradient."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    o, lse = sa._fwd(q, kk, v, idx, scale)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(o.numel())).to(DEV, o.dtype)
    return sa._bwd(q, kk, v, idx, o, lse, do, scale, dkv=dkv, **tile)


@pytest.mark.parametrize("h,hkv,d,dv", [
    (3, 3, 24, 16),  # MHA: one head per K/V head, score dim with a tail (16 + 8)
    (6, 2, 40, 24),  # GQA 3 per K/V head
    (21, 1, 72, 40),  # MQA: two steps of 16 heads, the second partly padded
])
@pytest.mark.parametrize("crowded", [False, True])
def test_dkv_headsum_matches_atomic_and_reference(gen, h, hkv, d, dv, crowded):
    """dkv='headsum' (fp32) gives the reference's dq, dk, dv and the atomic strategy's within fp32 rounding,
    with K and V apart, on fresh odd L and K (up to three slot blocks of 16): unused slots anywhere and an empty
    row, or few rows that every query selects (repeats within a query too)."""
    b, l, k = 2, _odd(gen, 17, 31), _odd(gen, 17, 41)
    q, kk, v = _attention_inputs(gen, b, h, hkv, l, d, dv, torch.float32)
    idx = _crowded_selection(b, l, k, gen) if crowded else _selection(b, l, k, gen)
    got = _kernel_grads(q, kk, v, idx, d**-0.5, "headsum", dkv_tile=dict(block_h=16, block_k=16))
    want = _kernel_grads(q, kk, v, idx, d**-0.5, "atomic")
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, kk, v))
    o = sparse_attention_gather(qr, kr, vr, idx, scale=d**-0.5)[0]
    o.backward(torch.randn(o.shape, generator=torch.Generator().manual_seed(o.numel())).to(DEV))
    for name, a, w, r in zip(("dq", "dk", "dv"), got, want, (qr.grad, kr.grad, vr.grad)):
        assert a.shape == r.shape and a.dtype == r.dtype, name
        assert rel(a, w) < TOL[torch.float32] and rel(a, r) < TOL[torch.float32], name


@pytest.mark.parametrize("d", [40, None])  # 40 = 32 + 8 (rows 16-byte aligned), None: 32 + a fresh odd tail
@pytest.mark.parametrize("crowded", [False, True])
def test_dkv_headsum_latent_folds_dv_into_dk(gen, d, crowded):
    """MLA's latent as key and value (v = k[..., :32], a view): the headsum kernel adds dV into dK's first 32
    columns (one atomic row of d_qk) and returns dv as zeros, so that dk equals the atomic strategy's dk plus
    its dv in those columns (what autograd sums into the latent's gradient); 8 heads per step, three steps."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    d = d or 32 + _odd(gen, 1, 15)
    b, h, l, k = 1, 16 + _odd(gen, 1, 7), _odd(gen, 17, 29), _odd(gen, 17, 41)
    q = torch.randn(b, h, l, d, generator=gen).to(DEV)
    lat = torch.randn(b, 1, l, d, generator=gen).to(DEV)
    assert sa.rows_aligned(q) == (d * 4 % 16 == 0)
    idx = _crowded_selection(b, l, k, gen) if crowded else _selection(b, l, k, gen)
    dq, dk, dv = _kernel_grads(q, lat, lat[..., :32], idx, 0.3, "headsum", dkv_tile=dict(block_h=8, block_k=16))
    aq, ak, av = _kernel_grads(q, lat, lat[..., :32], idx, 0.3, "atomic")
    assert dv.shape == av.shape and not dv.any()
    ak[..., :32] += av
    assert rel(dq, aq) < 1e-6 and rel(dk, ak) < TOL[torch.float32]


@pytest.mark.parametrize("v_view", [True, False])
def test_auto_dkv_takes_headsum_only_for_a_large_group_reading_v_from_k(gen, v_view, monkeypatch):
    """dkv='auto' (the default) runs the headsum kernel where it was timed faster (a group of at least
    HEADSUM_MIN_GROUP heads with v a view of k; the threshold lowered to the test's group) and the atomic
    path elsewhere, each giving the reference's gradients."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    calls = []
    headsum = sa._dkv_headsum
    monkeypatch.setattr(sa, "_dkv_headsum", lambda *a, **kw: calls.append(1) or headsum(*a, **kw))
    _small_headsum_tiles(monkeypatch, 8)
    h, l, k = _odd(gen, 9, 15), _odd(gen, 9, 19), _odd(gen, 5, 21)
    monkeypatch.setattr(sa, "HEADSUM_MIN_GROUP", h)
    q = torch.randn(1, h, l, 40, generator=gen).to(DEV)
    lat = torch.randn(1, 1, l, 40, generator=gen).to(DEV)
    v = lat[..., :32] if v_view else lat[..., :32].clone()
    idx = _selection(1, l, k, gen)
    dq, dk, dv = _kernel_grads(q, lat, v, idx, 0.3, None)
    assert len(calls) == (1 if v_view else 0)
    rq, rk, rv = _kernel_grads(q, lat, v, idx, 0.3, "atomic")
    if v_view:  # headsum folds dV into dk's first columns
        rk[..., :32] += rv
    else:
        assert rel(dv, rv) < 1e-6
    assert rel(dq, rq) < 1e-6 and rel(dk, rk) < TOL[torch.float32]
    assert sa.auto_dkv(sa.HEADSUM_MIN_GROUP - 1, True) == "atomic"


def test_row_dot_by_chunks_equals_the_whole_product(gen, monkeypatch):
    """The backward's rowsum(dO * O) taken a few rows at a time (chunk boundaries inside L, a last short
    chunk) equals the one-shot fp32 product, for bf16 inputs."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    b, h, l, dv = 2, 3, _odd(gen, 11, 31), _odd(gen, 5, 13)
    do, o = (torch.randn(b, h, l, dv, generator=gen).to(torch.bfloat16) for _ in range(2))
    monkeypatch.setattr(sa, "DELTA_CHUNK_ELEMENTS", b * h * dv * 4)  # 4 rows of L per chunk
    got = sa._row_dot(do, o)
    assert got.dtype == torch.float32 and got.shape == (b, h, l)
    torch.testing.assert_close(got, (do.float() * o.float()).sum(-1), rtol=0, atol=0)


def test_dkv_names_bad_strategies_and_tiles(gen):
    """A dkv outside DKV_MODES and a headsum tile below tl.dot's 16 (8 heads only with the latent's
    interleaved rows) are ValueErrors naming them, before any kernel runs."""
    q, kk, v = _attention_inputs(gen, 1, 4, 2, 9, 16, 16, torch.float32)
    idx = _selection(1, 9, 5, gen)
    with pytest.raises(ValueError, match="dkv must be one of 'auto', 'atomic', 'inverted', 'headsum', got 'sorted'"):
        _kernel_grads(q, kk, v, idx, 0.25, "sorted")
    with pytest.raises(ValueError, match="block_h >= 16"):
        _kernel_grads(q, kk, v, idx, 0.25, "headsum", dkv_tile=dict(block_h=8))
    with pytest.raises(ValueError, match="block_k >= 16"):
        _kernel_grads(q, kk, kk, idx, 0.25, "headsum", dkv_tile=dict(block_k=8))


def test_inverted_index_lists_each_keys_queries_in_order(gen):
    """Every (query, key) pair of the selection once per slot, grouped by key, queries ascending; -1 slots dropped."""
    from dsa.ops.kernels.sparse_attention import inverted_index  # noqa: PLC0415

    b, l, k = 2, _odd(gen, 9, 21), _odd(gen, 3, 9)
    idx = _selection(b, l, k, gen)
    idx[0, -1, :2] = 0  # a key listed twice by one query
    inv_t, start = inverted_index(idx, l)
    assert start.shape == (b * l + 1,) and int(start[-1]) == int((idx >= 0).sum())
    for bi in range(b):
        for s in range(l):
            got = inv_t[start[bi * l + s]:start[bi * l + s + 1]].tolist()
            want = sorted(t for t in range(l) for j in range(k) if int(idx[bi, t, j]) == s)
            assert got == want, (bi, s)


def test_split_dim():
    from dsa.ops.kernels.sparse_attention import split_dim  # noqa: PLC0415

    assert split_dim(576) == (512, 64) and split_dim(128) == (128, 0) and split_dim(40) == (32, 16)
    assert split_dim(8) == (16, 0) and split_dim(192) == (128, 64) and split_dim(17) == (16, 16)


def test_sparse_attention_scale_and_noncontiguous(gen):
    """Views whose last dim is strided (copied) or whose other dims are (used through strides)."""
    b, h, hkv, l, d, dv, k = 1, 4, 2, 21, 16, 24, 9
    q = torch.randn(b, l, h, d, generator=gen).to(DEV).transpose(1, 2)  # (B, H, L, d) view, last dim contiguous
    kk = torch.randn(b, hkv, d, l, generator=gen).to(DEV).transpose(2, 3)  # last dim strided
    v = torch.randn(b, hkv, l, 2 * dv, generator=gen).to(DEV)[..., ::2]  # last dim strided
    _check_attention_vs_gather(q, kk, v, _selection(b, l, k, gen, variable=False, empty_row=False), 0.3, 1e-5)


def test_sparse_attention_lse_carries_no_gradient(gen):
    q, kk, v = (x.requires_grad_() for x in _attention_inputs(gen, 1, 2, 1, 7, 16, 16, torch.float32))
    out, lse = sparse_attention(q, kk, v, _selection(1, 7, 3, gen), scale=0.25, return_lse=True, impl="triton")
    assert out.requires_grad and not lse.requires_grad


def _probs_reference(q, kk, idx, lse, scale):
    """Plain PyTorch from gathered scores: mean over heads of exp(s - lse), 0 at unused slots -> (B, L, K)."""
    b, h, l, _ = q.shape
    valid, idx = idx >= 0, idx.long()
    rows = expand_kv(kk, h).float()[torch.arange(b, device=q.device)[:, None, None, None],
                                    torch.arange(h, device=q.device)[None, :, None, None],
                                    idx.clamp(min=0)[:, None]]  # (B, H, L, K, d)
    s = torch.einsum("bhtd,bhtkd->bhtk", q.float(), rows) * scale
    return torch.exp(s - lse[..., None]).masked_fill(~valid[:, None], 0.0).mean(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,hkv,d", [(3, 3, 16), (4, 2, 24), (16, 1, 40), (40, 1, 40)])
def test_sparse_attention_probs(gen, dtype, h, hkv, d):
    """Against the gathered-score reference (on the reference's lse) and the dense-then-gather target of
    the indexer's KL loss; on the kernel's own lse every row with a selection sums to 1, empty rows to 0;
    blocks of 16 slots (a partial last one) give the same probabilities as one block."""
    b, l, k = 2, _odd(gen, 13, 25), _odd(gen, 17, 29)
    q, kk, _ = _attention_inputs(gen, b, h, hkv, l, d, 1, dtype)
    idx32, scale = _selection(b, l, k, gen), d**-0.5 * 1.7
    valid = idx32 >= 0
    _, ref_lse = sparse_attention_gather(q.float(), kk.float(), kk.float(), idx32, scale=scale)
    p = sparse_attention_probs(q, kk, idx32, ref_lse, scale)
    assert p.shape == (b, l, k) and p.dtype == torch.float32
    assert rel(p, _probs_reference(q, kk, idx32, ref_lse, scale)) < TOL[dtype]
    assert rel(p, sparse_attention_target(q, kk, idx32, 0, l, scale=scale)) < TOL[dtype]
    _, lse = attention_kernel(q, kk, kk, idx32, scale)
    p = sparse_attention_probs(q, kk, idx32, lse, scale)
    assert torch.allclose(sparse_attention_probs(q, kk, idx32, lse, scale, block_k=16), p, rtol=1e-6, atol=1e-7)
    # the per-query kernel: the same probabilities, also with the heads in several blocks (its row of P summed
    # over head blocks) and the slots in blocks of 16
    for tile in ({}, {"block_h": 16 if h > 16 else None, "block_k": 16}):
        by_query = sparse_attention_probs(q, kk, idx32, lse, scale, kernel="query", **tile)
        assert torch.allclose(by_query, p, rtol=1e-5, atol=1e-6)
    assert bool((p[~valid] == 0).all()) and bool((p >= 0).all())
    has = valid.any(-1)
    assert bool(has.any()) and bool((~has).any())  # both kinds of rows are there
    sums = p.sum(-1)
    assert torch.allclose(sums[has], torch.ones_like(sums[has]), atol=1e-5)
    assert bool((sums[~has] == 0).all())


def _check_topk(sel, scores, k_t, tol):
    """sel (B, L, K) int32: min(k_t, t+1) distinct past positions per query, none scoring below a left-out one."""
    b, l, _ = scores.shape
    assert sel.dtype == torch.int32
    t = torch.arange(l, device=scores.device)
    need = torch.minimum(k_t, t + 1)
    valid = sel >= 0
    assert torch.equal(valid.sum(-1), need)
    assert bool((sel <= t[None, :, None]).all()), "a future token was selected"
    srt = sel.sort(-1).values
    assert not bool(((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()), "duplicate selection"
    mask = selection_to_mask(sel, l)
    picked = scores.gather(-1, sel.long().clamp(min=0)).masked_fill(~valid, float("inf")).min(-1).values
    left = scores.masked_fill(mask, float("-inf")).max(-1).values  # future entries are -inf already
    scale = scores.masked_fill(~torch.isfinite(scores), 0).abs().amax(-1).clamp(min=1e-6)
    assert bool((left <= picked + tol * scale).all()), float((left - picked).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("boundary", [256, 4])  # 4 forces the threshold-count passes
def test_indexer_topk_threshold(dtype, boundary):
    gen = torch.Generator().manual_seed(3 + boundary)
    b, l, hi, di, k = 2, 83, 3, 24, 19
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = torch.randn(b, l, hi, generator=gen).to(DEV, dtype)
    stats: dict = {}
    k_t = torch.full((b, l), k, device=DEV)
    sel = indexer_topk_threshold(q, kk, w, k_t, boundary=boundary, stats=stats)
    scores = indexer_scores(q, kk, w)
    _check_topk(sel, scores, k_t, 1e-5)
    if boundary == 4:
        assert stats["passes"] > 2
    # the same selected-score sums as the reference (ties aside); the op's per-query path is this kernel
    ref = indexer_topk(q, kk, w, k, impl="reference")
    assert torch.equal(indexer_topk(q, kk, w, k_t, impl="triton"), indexer_topk_threshold(q, kk, w, k_t))
    s_fast = scores.gather(-1, sel.long().clamp(min=0)).masked_fill(sel < 0, 0).sum(-1)
    s_ref = scores.gather(-1, ref.long().clamp(min=0)).masked_fill(ref < 0, 0).sum(-1)
    assert torch.allclose(s_fast, s_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,chunk,hi", [(19, 20, 3), (40, 16, 2), (83, None, 3), (40, 16, 17)])
def test_indexer_topk_chunked(dtype, k, chunk, hi):
    """Stored score chunks + radix_topk: valid, causal, the k best scores (ties aside) on odd shapes (L 83,
    2 indexer heads: the score pass; 3 padded to 4 and 17 padded to 32: the heads-as-N kernel; d_I 24),
    chunks that do not divide L, k larger than a chunk, k = L."""
    from dsa.ops.kernels._common import next_pow2  # noqa: PLC0415
    from dsa.ops.kernels.indexer_chunked import HN_MIN_HEADS, indexer_topk_chunked  # noqa: PLC0415

    assert (next_pow2(hi) >= HN_MIN_HEADS) == (hi != 2)  # the cases cover both score kernels
    gen = torch.Generator().manual_seed(11 + k)
    b, l, di = 2, 83, 24
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = torch.randn(b, l, hi, generator=gen).to(DEV, dtype)
    sel = indexer_topk_chunked(q, kk, w, k, chunk=chunk)
    assert sel.shape == (b, l, k)
    if chunk is None:  # the op's fixed-k path is this kernel at its default chunk
        assert torch.equal(indexer_topk(q, kk, w, k, impl="triton"), sel)
    scores = indexer_scores(q, kk, w)
    _check_topk(sel, scores, torch.full((b, l), k, device=DEV), 1e-5)
    ref = indexer_topk(q, kk, w, k, impl="reference")
    s_got = scores.gather(-1, sel.long().clamp(min=0)).masked_fill(sel < 0, 0).sum(-1)
    s_ref = scores.gather(-1, ref.long().clamp(min=0)).masked_fill(ref < 0, 0).sum(-1)
    assert torch.allclose(s_got, s_ref, rtol=1e-5, atol=1e-4)
    got = sel
    assert bool((got[..., 1:][got[..., 1:] >= 0] > got[..., :-1][got[..., 1:] >= 0]).all()), "not ascending"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexer_score_rows_match_the_reference(dtype):
    """The score pass (mode 3) against indexer_scores on a chunk of rows that starts inside the sequence,
    with padded heads: every causal entry, nothing written past a row's own position."""
    from dsa.ops.kernels.indexer import _pad_heads  # noqa: PLC0415
    from dsa.ops.kernels.indexer_chunked import score_rows  # noqa: PLC0415

    gen = torch.Generator().manual_seed(21)
    b, l, hi, di, t0, t1 = 2, 70, 3, 24, 16, 51
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = torch.randn(b, l, hi, generator=gen).to(DEV, dtype)
    qp, wp = _pad_heads(q, w.float(), 4)
    out = torch.full((b, t1 - t0 + 3, l), 7.0, device=DEV)
    score_rows(qp, kk.contiguous(), wp, out, t0, t1)
    ref = indexer_scores(q.float(), kk.float(), w.float())[:, t0:t1]
    t = torch.arange(t0, t1, device=DEV)
    causal = torch.arange(l, device=DEV)[None, :] <= t[:, None]
    got = out[:, : t1 - t0]
    assert rel(got[:, causal], ref[:, causal]) < TOL[dtype]
    assert bool((got[:, ~causal] == 7.0).all()) and bool((out[:, t1 - t0:] == 7.0).all())


@pytest.mark.parametrize("case", ["fp32", "bf16", "fp8", "fp8-as-bf16", "16-heads"])
def test_indexer_score_rows_hn_equal_the_score_pass(case):
    """The heads-as-N score kernel (score_rows_hn) writes the score pass's scores in the same places: a chunk
    of rows starting inside the sequence, padded heads, odd L, batch 2; bf16, fp32 and FP8 (e4m3 operands, or
    their bf16 copy, with per-key scales); nothing written past a row's own position."""
    from dsa.ops.kernels.indexer import _pad_heads  # noqa: PLC0415
    from dsa.ops.kernels.indexer_chunked import score_rows, score_rows_hn  # noqa: PLC0415
    from dsa.ops.quantize import quantize_indexer  # noqa: PLC0415

    gen = torch.Generator().manual_seed(61)
    hi = 16 if case == "16-heads" else 3
    b, l, di, t0, t1 = 2, 71, 32, 16, 53
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = torch.randn(b, l, hi, generator=gen).to(DEV, dtype)
    ks = None
    if case.startswith("fp8"):
        z = quantize_indexer(q, kk, w)
        q, kk, w, ks = z.q, z.k, z.w, z.k_scale
        if case == "fp8-as-bf16":
            q, kk = q.bfloat16(), kk.bfloat16()
    qp, wp = _pad_heads(q, w.float(), max(4, hi))
    outs = []
    for fn in (score_rows, score_rows_hn):
        out = torch.full((b, t1 - t0 + 3, l), 7.0, device=DEV)
        fn(qp, kk.contiguous(), wp, out, t0, t1, k_scale=ks)
        outs.append(out)
    ref, got = outs
    causal = torch.arange(l, device=DEV)[None, :] <= torch.arange(t0, t1, device=DEV)[:, None]
    assert rel(got[:, : t1 - t0][:, causal], ref[:, : t1 - t0][:, causal]) < 1e-6
    assert bool((got[:, : t1 - t0][:, ~causal] == 7.0).all()) and bool((got[:, t1 - t0:] == 7.0).all())


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_the_indexer_bench_times_both_score_kernels_on_the_same_rows(precision):
    """dsa.bench.indexer's score pass and its heads-as-N counterpart (interpreter, toy size): the same rows,
    rates reported, the two kernels' scores within fp32 rounding of each other."""
    from dsa.bench.indexer import heads_n_pass, random_indexer_inputs, score_pass  # noqa: PLC0415

    l = 80
    q, k, w = random_indexer_inputs(1, l, 4, 32, torch.Generator().manual_seed(5), str(DEV))
    sp = score_pass(q, k, w, precision, 40)
    hn = heads_n_pass(q, k, w, precision, 40, sp["scores"], None, l)
    assert hn["kernel"] == "heads_n" and hn["rows"] == sp["rows"] >= 40 and hn["tflops"] > 0
    assert hn["max_rel_diff_vs_rows"] < 1e-5 and hn["of_matmul"] is None


@pytest.mark.parametrize("hi", [2, 16])
def test_indexer_topk_chunked_takes_the_first_of_tied_scores(hi):
    """Negative queries against positive keys give exact-zero scores (every head's ReLU off) except where
    one head's query is positive: each row takes its few positive scores and then the first zeros by
    position, the same positions as a stable reference over the scores (2 heads: the score pass; 16: the
    heads-as-N kernel)."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415
    from dsa.ops.topk import causal_lengths  # noqa: PLC0415
    from dsa.ops.topk import topk_positions_reference as radix_topk_reference  # noqa: PLC0415

    gen = torch.Generator().manual_seed(13)
    b, l, di, k = 2, 75, 16, 20
    kk = torch.randn(b, l, di, generator=gen).abs()
    q = -torch.rand(b, l, hi, di, generator=gen)
    q[:, :, 0, 0] = torch.where(torch.rand(b, l, generator=gen) < 0.2, 5.0, -1.0)  # a few positive rows...
    kk[:, ::4, 0] = 3.0  # ...score positive against every 4th key only
    kk[:, 1::4, 0] = 0.0
    w = torch.rand(b, l, hi, generator=gen) + 0.5
    q, kk, w = q.to(DEV), kk.to(DEV), w.to(DEV)
    sel = indexer_topk_chunked(q, kk, w, k, chunk=32)
    scores = indexer_scores(q.double(), kk.double(), w.double())
    want = radix_topk_reference(scores, k, causal_lengths(l, DEV, batch=b))
    assert bool((scores[torch.isfinite(scores)] == 0).float().mean() > 0.5)  # the case: mostly exact ties at zero
    assert torch.equal(sel.long(), want)


@gpu_only
def test_indexer_topk_chunked_real_size():
    """L = 4096 + 17 (rows long enough for the sampled bracket), several chunks, batch 2: the k best scores
    of every row, as the reference selects them (ties aside)."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415

    gen = torch.Generator().manual_seed(17)
    b, l, hi, di, k = 2, 4096 + 17, 4, 64, 2048
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, torch.bfloat16)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, torch.bfloat16)
    w = (torch.randn(b, l, hi, generator=gen) / 16).to(DEV)
    sel = indexer_topk_chunked(q, kk, w, k, chunk=1000)
    scores = indexer_scores(q, kk, w)
    _check_topk(sel, scores, torch.full((b, l), k, device=DEV), 1e-5)


def test_indexer_topk_names_bad_arguments_on_the_triton_path():
    q, kk, w = torch.randn(1, 10, 2, 8), torch.randn(1, 10, 8), torch.randn(1, 10, 2)
    with pytest.raises(TypeError, match="top_k"):
        indexer_topk(q, kk, w, torch.full((10,), 3.0), impl="triton")
    with pytest.raises(ValueError, match="top_k must be <="):
        indexer_topk(q, kk, w, 11, impl="triton")
    with pytest.raises(ValueError, match="k_idx"):
        indexer_topk(q, kk[:, :9], w, 3, impl="triton")
    with pytest.raises(ValueError, match="leak_future exists only in the reference"):
        indexer_topk(q, kk, w, 3, leak_future=True, impl="triton")


def test_indexer_topk_threshold_plateau_and_overflowing_boundary():
    """Many exact-zero scores (every head's ReLU off) beside distinct small values: the bracket search cannot
    split the plateau, its boundary outgrows the ranked buffer, and those rows must still be exact."""
    gen = torch.Generator().manual_seed(5)
    b, l, hi, di, k = 1, 97, 2, 16, 40
    kk = torch.randn(b, l, di, generator=gen).abs().to(DEV)  # positive keys
    q = torch.randn(b, l, hi, di, generator=gen)
    q[:, :, :, :] = -q.abs()  # negative queries: every logit <= 0 -> score exactly 0 ...
    q[:, :, 0, 0] = 0.05 * torch.randn(b, l, generator=gen)  # ... except a few tiny positive logits
    kk[:, ::3] = torch.randn(b, (l + 2) // 3, di, generator=gen).abs().to(DEV) * 0.01
    q = q.to(DEV)
    w = torch.randn(b, l, hi, generator=gen).to(DEV)
    stats: dict = {}
    sel = indexer_topk_threshold(q, kk, w, torch.full((b, l), k, device=DEV), boundary=4, stats=stats)
    scores = indexer_scores(q.double(), kk.double(), w.double())
    assert stats["fallback_rows"] > 0, stats  # the case this test is about happened
    _check_topk(sel, scores, torch.full((b, l), k, device=DEV), 1e-6)


def test_exact_rows_fallback_matches_reference():
    """The exact re-selection used for rows whose boundary overflowed (seen on an H100 at L=8K with a
    boundary of 1024: arbitrary boundary picks were up to 1.27 below the k-th score)."""
    from dsa.ops.kernels.indexer import _exact_rows

    gen = torch.Generator().manual_seed(9)
    b, l, hi, di, k = 2, 61, 3, 8, 17
    q = torch.randn(b, l, hi, di, generator=gen)
    kk = torch.randn(b, l, di, generator=gen)
    w = torch.randn(b, l, hi, generator=gen)
    rows = torch.rand(b, l, generator=gen) < 0.5
    need = torch.minimum(torch.full((b, l), k), torch.arange(l) + 1)
    out = torch.full((b, l, k), -7, dtype=torch.int32)
    out = _exact_rows(out, rows, need, q, kk, w, chunk=5)
    ref = indexer_topk(q, kk, w, k, impl="reference")
    got = out.long().sort(-1).values
    want = ref.long().sort(-1).values
    got_rows = got[rows].sort(-1).values
    want_rows = want[rows].sort(-1).values
    assert torch.equal(got_rows, want_rows)
    assert bool((out[~rows] == -7).all()), "rows that were not flagged must be left alone"


def test_indexer_topk_threshold_per_query_k_and_ties():
    gen = torch.Generator().manual_seed(11)
    b, l, hi, di = 2, 50, 4, 16
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV)
    kk = torch.randn(b, l, di, generator=gen).to(DEV)
    w = torch.randn(b, l, hi, generator=gen).abs().to(DEV)  # w >= 0: many exact-zero scores (ReLU ties)
    k_t = torch.randint(1, 30, (b, l), generator=gen).to(DEV)
    sel = indexer_topk_threshold(q, kk, w, k_t, boundary=4)
    _check_topk(sel, indexer_scores(q, kk, w), k_t, 1e-5)
    assert sel.shape[-1] == int(k_t.max())


def _check_scores_at(q, kk, w, idx, gen):
    """impl='triton' scores at the selection and dq, dk, dw against impl='reference' in fp32 (the same values)."""
    valid = idx >= 0
    g = torch.randn(idx.shape, generator=gen).to(DEV)
    qs, ks, ws = (x.clone().requires_grad_() for x in (q, kk, w))
    out = indexer_scores_at(qs, ks, ws, idx, impl="triton")
    (out.masked_fill(~valid, 0) * g).sum().backward()
    qr, kr, wr = (x.float().requires_grad_() for x in (q, kk, w))
    ref = indexer_scores_at(qr, kr, wr, idx, impl="reference")
    (ref.masked_fill(~valid, 0) * g).sum().backward()
    assert torch.equal(torch.isinf(out), ~valid)
    assert rel(out.masked_fill(~valid, 0), ref.masked_fill(~valid, 0)) < 1e-5
    for name, a, r in (("dq", qs.grad, qr.grad), ("dk", ks.grad, kr.grad), ("dw", ws.grad, wr.grad)):
        assert a.dtype == q.dtype, name
        assert rel(a, r) < TOL[q.dtype], name
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_indexer_scores_at_fwd_bwd(dtype):
    gen = torch.Generator().manual_seed(5)
    b, l, hi, di, k = 2, 41, 3, 24, 11
    q = torch.randn(b, l, hi, di, generator=gen).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = torch.randn(b, l, hi, generator=gen).to(DEV, dtype)
    idx = _selection(b, l, k, gen)
    out = _check_scores_at(q, kk, w, idx, gen)
    # also equal to the full score matrix read at the selected positions
    valid = idx >= 0
    full = indexer_scores(q, kk, w).gather(-1, idx.long().clamp(min=0)).masked_fill(~valid, float("-inf"))
    assert rel(out.masked_fill(~valid, 0), full.masked_fill(~valid, 0)) < 1e-5


# ------------------------------------------------------------------- indexer heads in blocks (H_I x d_I)
# DeepSeek-V3.2's indexer, 64 heads x 128 dims, and odd head counts: the kernels loop over blocks of heads
# (in the interpreter: the score pass in blocks of 16 heads of d_I 128 in bf16, 8 in fp32, the last ones all
# padding at 48 heads; the scores-at kernels in one block up to 64 x 128 fp32, in blocks of 64 heads at 96 x 128
# fp32, the last one part padding).
HEAD_SIZES = [(64, 128, torch.bfloat16), (48, 128, torch.float32), (5, 40, torch.bfloat16)]
AT_HEAD_SIZES = [(64, 128, torch.bfloat16), (64, 128, torch.float32), (96, 128, torch.float32), (5, 40, torch.bfloat16)]


def _indexer_inputs(gen, b, l, h, di, dtype):
    """q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) scaled so that scores stay O(1)."""
    q = (torch.randn(b, l, h, di, generator=gen) / di**0.5).to(DEV, dtype)
    kk = torch.randn(b, l, di, generator=gen).to(DEV, dtype)
    w = (torch.randn(b, l, h, generator=gen) / h**0.5).to(DEV, dtype)
    return q, kk, w


def _same_selected_sums(sel, ref, scores):
    s_got = scores.gather(-1, sel.long().clamp(min=0)).masked_fill(sel < 0, 0).sum(-1)
    s_ref = scores.gather(-1, ref.long().clamp(min=0)).masked_fill(ref < 0, 0).sum(-1)
    assert torch.allclose(s_got, s_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("h,di,dtype", HEAD_SIZES)
def test_indexer_topk_many_heads(h, di, dtype):
    """indexer_topk_chunked and indexer_topk_threshold (with threshold-count passes) at 64 x 128 and odd head
    counts: valid, causal, the k best scores, the same selected-score sums as the reference."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415

    gen = torch.Generator().manual_seed(31 + h + di)
    b, l, k = 1, 53, 12
    q, kk, w = _indexer_inputs(gen, b, l, h, di, dtype)
    scores = indexer_scores(q, kk, w)
    ref = indexer_topk(q, kk, w, k, impl="reference")
    k_t = torch.full((b, l), k, device=DEV)
    sel = indexer_topk_chunked(q, kk, w, k, chunk=32)
    _check_topk(sel, scores, k_t, 1e-5)
    _same_selected_sums(sel, ref, scores)
    stats: dict = {}
    sel = indexer_topk_threshold(q, kk, w, k_t, boundary=4, stats=stats)
    assert stats["passes"] > 2  # the count pass (mode 1) ran too
    _check_topk(sel, scores, k_t, 1e-5)
    _same_selected_sums(sel, ref, scores)


@pytest.mark.parametrize("h,di,dtype", AT_HEAD_SIZES)
def test_indexer_scores_at_many_heads(h, di, dtype):
    """Scores at selected positions and dq, dk, dw at 64 x 128 (one block), 96 x 128 (two blocks of 64, the
    second half padding) and 5 x 40 (padded to 16)."""
    gen = torch.Generator().manual_seed(41 + h + di)
    b, l, k = 1, 37, 9
    q, kk, w = _indexer_inputs(gen, b, l, h, di, dtype)
    _check_scores_at(q, kk, w, _selection(b, l, k, gen), gen)


@pytest.mark.parametrize("hp,di,dtype", [(48, 128, torch.bfloat16), (6, 128, torch.float32)])
def test_indexer_score_rows_any_head_count(hp, di, dtype):
    """The score pass needs no power-of-two head count: 48 heads go in 3 blocks of 16, 6 in one block
    (fp32: at most 8 heads of d_I 128 per block in the interpreter)."""
    from dsa.ops.kernels.indexer_chunked import score_rows  # noqa: PLC0415

    gen = torch.Generator().manual_seed(51 + hp)
    b, l, t0, t1 = 1, 45, 16, 45
    q, kk, w = _indexer_inputs(gen, b, l, hp, di, dtype)
    out = torch.full((b, t1 - t0, l), 7.0, device=DEV)
    score_rows(q.contiguous(), kk.contiguous(), w.float().contiguous(), out, t0, t1)
    ref = indexer_scores(q.float(), kk.float(), w.float())[:, t0:t1]
    causal = torch.arange(l, device=DEV)[None, :] <= torch.arange(t0, t1, device=DEV)[:, None]
    assert rel(out[:, causal], ref[:, causal]) < TOL[dtype]
    assert bool((out[:, ~causal] == 7.0).all())


# ------------------------------------------------------------------------------------------ real sizes


@gpu_only
@pytest.mark.parametrize("dkv", ["atomic", "headsum"])
@pytest.mark.parametrize("h,hkv,d,dv", [(16, 16, 128, 128), (16, 2, 128, 128), (16, 2, 192, 128), (16, 1, 576, 512)])
def test_sparse_attention_gpu_real(h, hkv, d, dv, dkv, monkeypatch):
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    monkeypatch.setattr(sa, "DKV_DEFAULT", dkv)
    torch.manual_seed(0)
    b, l, k = 1, 1024 + 77, 500  # the autograd reference keeps every gathered chunk
    q = torch.randn(b, h, l, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    kk = torch.randn(b, hkv, l, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, hkv, l, dv, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    qi = torch.randn(b, l, 4, 64, device=DEV)
    idx32 = indexer_topk(qi, torch.randn(b, l, 64, device=DEV), torch.randn(b, l, 4, device=DEV), k)
    out, lse = sparse_attention(q, kk, v, idx32, return_lse=True, impl="triton")
    p = sparse_attention_probs(q.detach(), kk.detach(), idx32, lse, d**-0.5)
    assert rel(p, sparse_attention_target(q.detach(), kk.detach(), idx32, 0, l, scale=d**-0.5)) < 1e-2
    go = torch.randn_like(out)
    out.backward(go)
    grads = [x.grad for x in (q, kk, v)]
    qr, kr, vr = (x.detach().float().requires_grad_() for x in (q, kk, v))
    ref = sparse_attention_gather(qr, kr, vr, idx32, scale=d**-0.5, chunk=64)[0]
    ref.backward(go.float())
    assert rel(out, ref) < 1e-2
    for a, r in zip(grads, (qr.grad, kr.grad, vr.grad)):
        assert rel(a, r) < 1e-2


@gpu_only
def test_indexer_topk_gpu_real():
    torch.manual_seed(0)
    b, l, hi, di, k = 1, 8192 + 33, 4, 64, 2048
    q = torch.randn(b, l, hi, di, device=DEV, dtype=torch.bfloat16)
    kk = torch.randn(b, l, di, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(b, l, hi, device=DEV, dtype=torch.bfloat16)
    k_t = torch.full((b, l), k, device=DEV)
    # fp64 reference: an fp32 matmul on CUDA may run in TF32 (~1e-3 relative), coarser than the kernel's
    # exact bf16 products with fp32 accumulation
    ref = indexer_scores(q.double(), kk.double(), w.double())
    for sel in (indexer_topk(q, kk, w, k, impl="triton"), indexer_topk(q, kk, w, k_t, impl="triton")):
        _check_topk(sel, ref, k_t, 1e-5)



@pytest.mark.parametrize("with_lse", [False, True])
def test_sparse_indexer_kl_on_the_kernels_with_autocast_dtypes(gen, with_lse):
    """The sparse KL loss on the Triton path (target from the attention's lse, indexer scores at the selection)
    with bf16 indexer queries/weights and fp32 keys, as autocast hands them over (the kernel computes in bf16):
    loss and every gradient as the reference computes them in float32, to bf16 rounding."""
    b, h, hkv, l, d, hi, di = 2, 4, 2, 37, 16, 3, 16
    q, k = torch.randn(b, h, l, d, generator=gen).to(DEV), torch.randn(b, hkv, l, d, generator=gen).to(DEV)
    qi = torch.randn(b, l, hi, di, generator=gen).bfloat16()
    ki, w = torch.randn(b, l, di, generator=gen), torch.randn(b, l, hi, generator=gen).bfloat16()
    sel = indexer_topk(qi.float(), ki, w.float(), 9).to(DEV)
    lse = sparse_attention(q, k, k, sel, return_lse=True, impl="triton")[1] if with_lse else None
    ker = [x.to(DEV).clone().requires_grad_() for x in (qi, ki, w)]
    got = sparse_indexer_kl(q, k, *ker, sel, lse=lse, impl="triton")
    got.backward()
    # the reference on the values the kernel sees: the keys rounded to the queries' dtype
    ref_in = [x.to(DEV).bfloat16().float().clone().requires_grad_() for x in (qi, ki, w)]
    ref = sparse_indexer_kl(q, k, *ref_in, sel, impl="reference")
    ref.backward()
    assert float(got) == pytest.approx(float(ref), rel=1e-3)
    for name, a, r in zip(("q_idx", "k_idx", "w"), ker, ref_in):
        assert a.grad.dtype == a.dtype, name
        # bf16 products (fp32 accumulation) and bf16 gradients of the bf16 leaves set the bar
        assert rel(a.grad.float(), r.grad) < TOL[torch.bfloat16], name


# ----------------------------------------------------------------------------------------------------
# Radix select over precomputed scores (dsa.ops.kernels.radix_topk) vs torch.topk.


def _radix():
    """The kernel (with its tuning knobs: block, sample, cap, stats), the op's reference, causal lengths."""
    from dsa.ops.kernels.radix_topk import radix_topk  # noqa: PLC0415
    from dsa.ops.topk import causal_lengths, topk_positions_reference  # noqa: PLC0415

    return radix_topk, topk_positions_reference, causal_lengths


def _picked(scores, idx):
    """The scores at the picked positions, sorted (-inf for the -1 slots): equal for any correct top-k."""
    return torch.where(idx >= 0, scores.float().gather(-1, idx.clamp(min=0)), float("-inf")).sort(-1).values


@pytest.mark.parametrize("rows,n,k", [(7, 301, 37), (5, 97, 1), (3, 130, 130), (9, 1000, 513)])
def test_radix_topk_matches_torch_topk_on_distinct_scores(gen, rows, n, k):
    """Continuous random scores (no ties): exactly torch.topk's positions, in ascending order."""
    radix_topk, ref, _ = _radix()
    s = (torch.randn(rows, n, generator=gen) * torch.rand(rows, 1, generator=gen) * 10).to(DEV)
    got = radix_topk(s, k, block=64)
    want = torch.topk(s, k, dim=-1).indices.sort(-1).values
    assert got.shape == (rows, k) and got.dtype == torch.int64
    assert torch.equal(got, want)
    assert torch.equal(ref(s, k), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_radix_topk_causal_rows_with_short_prefixes(gen, dtype):
    """A causal (L, L) score matrix with lengths t+1, L odd, k not a multiple of the block; rows shorter
    than k take every valid position and pad with -1."""
    radix_topk, ref, causal_lengths = _radix()
    l, k = 83, 29
    s = torch.randn(2, l, l, generator=gen).to(dtype).to(DEV)
    lens = causal_lengths(l, DEV, batch=2)
    got = radix_topk(s, k, lens, block=32)
    want = ref(s, k, lens)
    assert torch.equal(_picked(s, got), _picked(s, want))
    t = torch.arange(l, device=DEV)
    n_valid = (got >= 0).sum(-1)
    assert torch.equal(n_valid, torch.minimum(t + 1, torch.tensor(k, device=DEV)).expand(2, l))
    assert bool((got < (t + 1)[None, :, None]).all()), "a query picked a future position"
    assert bool((got[..., 1:][got[..., 1:] >= 0] > got[..., :-1][got[..., 1:] >= 0]).all()), "not ascending"


def test_radix_topk_ties_take_the_first_positions(gen):
    """Few distinct values (many ties at the threshold, as bf16 and ReLU zeros give): the selected scores
    equal torch.topk's, and among the scores equal to the threshold the first positions are taken."""
    radix_topk, _, _ = _radix()
    rows, n, k = 6, 211, 50
    s = (torch.randint(-2, 3, (rows, n), generator=gen).float() * 0.5).to(DEV)
    got = radix_topk(s, k, block=64)
    assert torch.equal(_picked(s, got), _picked(s, torch.topk(s, k, dim=-1).indices))
    for r in range(rows):
        thr = float(s[r, got[r]].min())
        eq = (s[r] == thr).nonzero().flatten()
        n_eq = int((s[r, got[r]] == thr).sum())
        assert torch.equal(got[r][s[r, got[r]] == thr], eq[:n_eq])


def _few_long_rows(gen, dtype, kind):
    """(scores (6, n), k, lengths (6,)) for the few-long-rows top-k variants: odd n and k, scores random,
    ties ('ties'), -inf entries incl. a row with fewer finite than k ('infinities') or signed zeros
    ('signed zeros'); lengths n, n - 3, 0, below k, across chunks, n // 2."""
    rows, n, k = 6, _odd(gen, 151, 221), _odd(gen, 7, 13)
    s = torch.randn(rows, n, generator=gen) * 10
    if kind == "ties":
        s = torch.randint(-2, 3, (rows, n), generator=gen).float() * 0.5
    elif kind == "infinities":
        s[1, ::4] = float("-inf")
        s[4, 5:] = float("-inf")  # fewer finite than k: the first -inf positions fill the rest
    elif kind == "signed zeros":
        zeros = torch.where(torch.rand(rows, n, generator=gen) < 0.5, 0.0, -0.0)
        s = zeros - (torch.rand(rows, n, generator=gen) < 0.3).float()
    lens = torch.tensor([n, n - 3, 0, k - 2, 2 * k + 1, n // 2], device=DEV)
    return s.to(dtype).to(DEV), k, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "ties", "infinities"])
def test_radix_topk_split_equals_the_one_stage_top_k(gen, dtype, kind):
    """radix_topk_split (chunks of a few long rows keep their top k, then the top k of the candidates) gives
    exactly radix_topk's positions, ties to the first positions included, on odd row lengths that are no
    multiple of the chunk, lengths of 0, below k, within one chunk and across several."""
    from dsa.ops.kernels.radix_topk import radix_topk, radix_topk_split  # noqa: PLC0415

    s, k, lens = _few_long_rows(gen, dtype, kind)
    want = radix_topk(s, k, lens, out_dtype=torch.int32)
    got = radix_topk_split(s, k, lens, chunk=2 * k + 3)
    assert got.dtype == torch.int32 and torch.equal(got, want)
    assert torch.equal(radix_topk_split(s, k, chunk=4 * k), radix_topk(s, k, out_dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["random", "ties", "infinities", "signed zeros"])
def test_torch_topk_positions_equal_the_radix_top_k(gen, dtype, kind):
    """torch_topk_positions (torch.topk's k-th score, then the positions above it and the first equal to it)
    gives exactly radix_topk's positions: ties to the first positions, -inf entries, -0.0 tied with +0.0,
    lengths of 0, below k and the full row."""
    from dsa.ops.kernels.radix_topk import radix_topk, torch_topk_positions  # noqa: PLC0415

    s, k, lens = _few_long_rows(gen, dtype, kind)
    got = torch_topk_positions(s, k, lens)
    assert got.dtype == torch.int32 and torch.equal(got, radix_topk(s, k, lens, out_dtype=torch.int32))
    assert torch.equal(torch_topk_positions(s, k), radix_topk(s, k, out_dtype=torch.int32))


def test_radix_topk_signs_infinities_and_empty_rows(gen):
    """Order across signs and -inf entries; a row of length 0 returns only -1."""
    radix_topk, ref, _ = _radix()
    rows, n, k = 4, 150, 20
    s = torch.randn(rows, n, generator=gen) * 100
    s[0, ::3] = float("-inf")
    s[1] = -s[1].abs()  # all negative
    s[2, :140] = float("-inf")  # fewer finite than k: -inf entries fill the rest
    s = s.to(DEV)
    lens = torch.tensor([n, n, n, 0], device=DEV)
    got = radix_topk(s, k, lens, block=32)
    want = ref(s, k, lens)
    assert torch.equal(_picked(s, got)[:3], _picked(s, want)[:3])
    assert bool((got[3] == -1).all())


def test_radix_topk_reference_valid_minus_inf_and_float64():
    """The reference never returns a position past a row's length, also when a valid entry is -inf like the
    masked-off ones, and it keeps float64 resolution."""
    _, ref, _ = _radix()
    inf = float("inf")
    s = torch.tensor([[1.0, -inf, -inf, -inf]])
    assert ref(s, 3, torch.tensor([2])).tolist() == [[0, 1, -1]]
    assert ref(s, 2, torch.tensor([2])).tolist() == [[0, 1]]
    d = torch.tensor([[1.0, 1.0 + 1e-12, 0.0]], dtype=torch.float64)
    assert ref(d, 1, torch.tensor([3])).tolist() == [[1]] == ref(d, 1).tolist()


def _paths(stats):
    """Rows per way the kernel took: [short rows, sampled bracket, radix select]."""
    return torch.bincount(stats.view(-1).long().cpu(), minlength=3).tolist()


@pytest.mark.parametrize("rows,n,k", [(4, 701, 37), (3, 1001, 150)])
def test_radix_topk_sampled_bracket_is_exact(gen, rows, n, k):
    """Rows long enough for the sampled bracket (n >= 2 * sample): the rows take it, and the positions
    equal the reference's (ascending, the first positions among ties), with the default bracket scratch."""
    radix_topk, ref, _ = _radix()
    s = (torch.randn(rows, n, generator=gen) * torch.rand(rows, 1, generator=gen) * 10).to(DEV)
    stats = torch.empty(rows, dtype=torch.int32, device=DEV)
    got = radix_topk(s, k, block=128, sample=64, stats=stats)
    assert _paths(stats)[1] >= rows - 1  # ~1 row in 300 misses its bracket and falls back
    assert torch.equal(got, ref(s, k, torch.full((rows,), n, device=DEV)))


def test_radix_topk_sampled_bracket_with_ties_and_causal_rows(gen):
    """bf16 rows of random valid lengths (some shorter than k, some too short to sample, most sampled) and
    a matrix of few distinct values: every row gives the reference's positions exactly."""
    radix_topk, ref, _ = _radix()
    rows, n, k = 14, 601, 41
    s = torch.randn(rows, n, generator=gen).bfloat16().to(DEV)
    lens = torch.cat([torch.tensor([0, 30, 41, 100]), torch.randint(128, n + 1, (rows - 4,), generator=gen)]).to(DEV)
    stats = torch.empty(rows, dtype=torch.int32, device=DEV)
    got = radix_topk(s, k, lens, block=64, sample=64, cap=256, stats=stats)
    short, sampled, radix = _paths(stats)
    assert short == 3 and radix >= 1 and sampled >= rows - 4 - 1  # a rare sample miss falls back
    assert torch.equal(got, ref(s, k, lens))
    # 40 levels: ~20 keys tie at the threshold, inside the bracket (cap 512): the quota picks the first
    t = (torch.randint(0, 40, (3, 800), generator=gen).float() / 8).to(DEV)
    stats = torch.empty(3, dtype=torch.int32, device=DEV)
    got = radix_topk(t, 101, block=128, sample=64, cap=512, stats=stats)
    assert _paths(stats)[1] == 3
    assert torch.equal(got, ref(t, 101, torch.full((3,), 800, device=DEV)))


@pytest.mark.parametrize("sample", [0, 64])
def test_radix_topk_signed_zeros_tie(gen, sample):
    """-0.0 and +0.0 compare equal, so at a threshold of zero the first positions are taken whatever their
    sign (the radix path and the sampled bracket)."""
    radix_topk, ref, _ = _radix()
    rows, n, k = 3, 700, 200
    zeros = torch.where(torch.rand(rows, n, generator=gen) < 0.5, -0.0, 0.0)
    s = torch.where(torch.rand(rows, n, generator=gen) < 0.1, torch.rand(rows, n, generator=gen) + 1, zeros)
    s[:, 600:] = -1.0
    s = s.to(DEV)
    got = radix_topk(s, k, block=128, sample=sample)
    assert torch.equal(got, ref(s, k, torch.full((rows,), n, device=DEV)))


@pytest.mark.parametrize("case", ["sign_change", "one_binade", "narrow", "ulps_apart"])
def test_radix_topk_bracket_select_from_every_byte(gen, case):
    """The bracket select starts its digit rounds at the first byte where the bracket's ends differ: the
    top byte when the bracket spans zero (k = n/2 of centred scores), the second when all scores share an
    exponent ([2, 4)), the third when they lie within 2^15 ulps ([2, 2 + 2^-7)), the last when they lie
    a few ulps apart; every start gives the reference's positions."""
    radix_topk, ref, _ = _radix()
    rows, n = 4, 900
    if case == "sign_change":
        s, k = torch.randn(rows, n, generator=gen), n // 2
    elif case == "one_binade":
        s, k = 2.0 + 2.0 * torch.rand(rows, n, generator=gen), 200
    elif case == "narrow":
        s, k = 2.0 + torch.rand(rows, n, generator=gen) * 2.0**-7, 200
    else:
        s, k = 1.0 + torch.randint(0, 200, (rows, n), generator=gen).float() * 2.0**-23, 200
    s = s.to(DEV)
    stats = torch.empty(rows, dtype=torch.int32, device=DEV)
    # sample 128: k * 128 / n ranks lie far enough below the top that the bracket is closed at both ends
    got = radix_topk(s, k, block=128, sample=128, stats=stats)
    assert _paths(stats)[1] >= rows - 1
    assert torch.equal(got, ref(s, k, torch.full((rows,), n, device=DEV)))


def test_radix_topk_falls_back_when_the_sample_misses(gen):
    """Rows built so that their sample is unrepresentative (the sampled runs hold the lowest scores: k or
    more keys lie above the bracket; the highest: fewer than k at or above it) and a row of one repeated
    value (the candidates overflow the scratch): all fall back to the radix select and stay exact."""
    radix_topk, ref, _ = _radix()
    n, k, sample = 1024, 100, 64
    s = torch.randn(3, n, generator=gen)
    runs = (torch.arange(sample // 8)[:, None] * n // (sample // 8) + torch.arange(8)[None, :]).flatten()
    s[0, runs] = -100 - torch.rand(sample, generator=gen)
    s[1] = 0.25
    s[2, runs] = 100 + torch.rand(sample, generator=gen)
    s = s.to(DEV)
    stats = torch.empty(3, dtype=torch.int32, device=DEV)
    got = radix_topk(s, k, block=128, sample=sample, cap=64, stats=stats)
    assert _paths(stats) == [0, 0, 3]
    assert torch.equal(got, ref(s, k, torch.full((3,), n, device=DEV)))
    assert got[1].tolist() == list(range(k))
    # a scratch large enough for every key and a k whose bracket is closed (k * sample / n sample ranks well
    # below the top): the low bracket's candidates fit, but k or more of them lie above it
    got = radix_topk(s[:1], 300, block=128, sample=sample, cap=n, stats=stats[:1])
    assert _paths(stats[:1]) == [0, 0, 1]
    assert torch.equal(got, ref(s[:1], 300, torch.full((1,), n, device=DEV)))


def test_radix_topk_names_bad_arguments():
    """k, lengths and scores are checked by the op (the same for every impl); the kernel's own knobs by it."""
    from dsa.ops import topk_positions  # noqa: PLC0415

    radix_topk, _, _ = _radix()
    s = torch.randn(3, 10)
    cases = [((s, 0), ValueError, "k"), ((s, 11), ValueError, "k"), ((s, 2.0), TypeError, "k"),
             ((s, 2, torch.tensor([1, 2])), ValueError, "lengths"),
             ((s, 2, torch.tensor([1.0, 2.0, 3.0])), TypeError, "lengths"),
             ((s, 2, torch.tensor([1, 2, 11])), ValueError, "lengths"),
             ((torch.ones(3, 10, dtype=torch.int32), 2), TypeError, "scores")]
    for args, err, match in cases:
        for impl in ("triton", "reference"):
            with pytest.raises(err, match=match):
                topk_positions(*args, impl=impl)
    with pytest.raises(ValueError, match="sample"):
        radix_topk(s, 2, sample=100)
    with pytest.raises(ValueError, match="cap"):
        radix_topk(s, 2, cap=0)
    with pytest.raises(ValueError, match="stats"):
        radix_topk(s, 2, stats=torch.empty(4, dtype=torch.int32))


def test_topk_positions_op_runs_the_kernel(gen):
    from dsa.ops import topk_positions  # noqa: PLC0415

    s = torch.randn(2, 9, 40, generator=gen).to(DEV)
    lens = torch.randint(0, 41, (2, 9), generator=gen).to(DEV)
    got = topk_positions(s, 7, lens, impl="triton")
    assert torch.equal(got, topk_positions(s, 7, lens, impl="reference"))
    # in two stages (chunks of 11 scores first): the same positions, batch dims kept; a chunk below k refused
    assert torch.equal(topk_positions(s, 7, lens, impl="triton", chunk=11), got)
    with pytest.raises(ValueError, match="chunk must be an int >= k"):
        topk_positions(s, 7, lens, impl="triton", chunk=5)


@gpu_only
@pytest.mark.parametrize("rows,n", [(16, 131072), (64, 32767)])
def test_radix_topk_split_real_decode_sizes(gen, rows, n):
    """Decode's shape (B rows of a long cache, k = 2048): the two-stage top-k gives the one-stage kernel's
    positions exactly, with rows of every length from 0 to n."""
    from dsa.ops.kernels.radix_topk import radix_topk, radix_topk_split  # noqa: PLC0415

    s = torch.randn(rows, n, generator=gen).to(DEV)
    lens = torch.randint(0, n + 1, (rows,), generator=gen).to(DEV)
    lens[0], lens[1] = n, 2047
    assert torch.equal(radix_topk_split(s, 2048, lens), radix_topk(s, 2048, lens, out_dtype=torch.int32))


@gpu_only
@pytest.mark.parametrize("l,k", [(4096, 2048), (8191, 1000), (16384, 2048)])
def test_radix_topk_real_sizes_on_indexer_scores(gen, l, k):
    """Causal indexer scores at real sizes (bf16 inputs, fp32 scores): the same selected scores as
    torch.topk and exactly the reference's positions (ascending, first among ties), rows shorter than k
    complete, for the default sample, a larger one and the radix select alone."""
    radix_topk, ref, causal_lengths = _radix()
    from dsa.bench.kernels import _causal_scores  # noqa: PLC0415

    qi = torch.randn(1, l, 4, 64, generator=gen).bfloat16().to(DEV)
    ki = torch.randn(1, l, 64, generator=gen).bfloat16().to(DEV)
    w = torch.randn(1, l, 4, generator=gen).to(DEV)
    s = _causal_scores(qi, ki, w)
    lens = causal_lengths(l, DEV, batch=1)
    stats = torch.empty(1, l, dtype=torch.int32, device=DEV)
    want = ref(s, k, lens)
    for sample in (512, 1024, 0):
        got = radix_topk(s, k, lens, sample=sample, stats=stats)
        assert torch.equal(_picked(s, got), _picked(s, torch.topk(s, k, dim=-1).indices)), sample
        assert torch.equal(got, want), sample
        short, sampled, radix = _paths(stats)
        eligible = l - max(k + 1, 2 * sample) + 1  # rows longer than k and than two samples
        assert short == k and (sampled >= 0.97 * eligible if sample else sampled == 0), (short, sampled, radix)


def test_the_mla_bench_times_both_probability_kernels_and_they_agree():
    """dsa.bench.mla --probs (interpreter, the tiny MLA-like layout: two head blocks of 16, a score dim with a
    tail): each kernel of the indexer loss's target probabilities timed, the two within fp32 rounding."""
    from dsa.bench.mla import MLABenchConfig, bench_probs, causal_selection, mla_inputs  # noqa: PLC0415

    cfg = MLABenchConfig(seq_lens=[37], layouts=["tiny"], top_k=9, device="cpu", probs=["slots", "query"])
    q, k, v = mla_inputs("tiny", 37, DEV, torch.float32, 0)
    rows = bench_probs(cfg, "tiny", 37, (q, k, v, causal_selection(37, 9, DEV, 0)))
    assert [r["probs_kernel"] for r in rows] == ["slots", "query"]
    assert all(r["probs_ms"] > 0 and r["probs_tflops"] > 0 and r["probs_why"] is None for r in rows)
    assert rows[0]["max_abs_diff_vs_first"] == 0.0 and rows[1]["max_abs_diff_vs_first"] < 1e-6
    with pytest.raises(ValueError, match="probs"):
        MLABenchConfig(seq_lens=[37], layouts=["tiny"], top_k=9, device="cpu", probs=["fast"])
