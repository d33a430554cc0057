"""Sparse attention references: gather == masked on odd shapes (d_v != d_qk too), k >= L equals dense, GQA,
MQA, and bad input named by every impl before any work."""

import pytest
import torch

from dsa.ops import dense_attention, indexer_topk, select_topk, selection_to_mask, sparse_attention
from dsa.ops.attention import sparse_attention_gather, sparse_attention_masked


def _qkv(gen, b, h, hkv, l, d, dv=None, dtype=torch.float32):
    return (torch.randn(b, h, l, d, generator=gen).to(dtype), torch.randn(b, hkv, l, d, generator=gen).to(dtype),
            torch.randn(b, hkv, l, dv or d, generator=gen).to(dtype))


@pytest.mark.parametrize("b,h,hkv,l,d,dv,k,chunk", [(1, 1, 1, 1, 4, 4, 1, 3), (2, 4, 4, 37, 8, 8, 11, 5),
                                                      (2, 8, 2, 53, 16, 6, 7, 16), (1, 6, 3, 29, 6, 10, 29, 128),
                                                      (3, 8, 1, 19, 10, 4, 4, 4)])
def test_gather_equals_masked_on_odd_shapes(gen, b, h, hkv, l, d, dv, k, chunk):
    q, kk, v = _qkv(gen, b, h, hkv, l, d, dv)
    sel = indexer_topk(torch.randn(b, l, 3, 5, generator=gen), torch.randn(b, l, 5, generator=gen),
                       torch.randn(b, l, 3, generator=gen), k)
    a, _ = sparse_attention_gather(q, kk, v, sel, scale=d**-0.5, chunk=chunk)
    m = sparse_attention_masked(q, kk, v, sel, scale=d**-0.5)
    assert a.shape == (b, h, l, dv)
    torch.testing.assert_close(a, m, rtol=1e-5, atol=1e-5)


def test_gather_gradients_equal_masked_gradients(gen):
    q, k, v = (t.requires_grad_() for t in _qkv(gen, 2, 4, 2, 23, 8, 6, torch.float64))
    sel = select_topk(torch.randn(2, 23, 23, generator=gen), torch.randint(1, 9, (2, 23), generator=gen))
    go = torch.randn(2, 4, 23, 6, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((sparse_attention_gather(q, k, v, sel, scale=0.3, chunk=6)[0] * go).sum(), (q, k, v))
    gm = torch.autograd.grad((sparse_attention_masked(q, k, v, sel, scale=0.3) * go).sum(), (q, k, v))
    for a, m in zip(ga, gm):
        torch.testing.assert_close(a, m)


@pytest.mark.parametrize("hkv", [1, 2, 6])
def test_k_at_least_l_equals_dense(gen, hkv):
    l = 31
    q, k, v = _qkv(gen, 2, 6, hkv, l, 8)
    sel = select_topk(torch.randn(2, l, l, generator=gen), l)
    torch.testing.assert_close(sparse_attention(q, k, v, sel, impl="reference"), dense_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_bf16_close_to_fp32(gen):
    q, k, v = _qkv(gen, 1, 4, 2, 40, 16)
    sel = select_topk(torch.randn(1, 40, 40, generator=gen), 9)
    ref = sparse_attention(q, k, v, sel)
    out = sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), sel)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 1e-2


def test_lse_is_returned_and_matches(gen):
    q, k, v = _qkv(gen, 1, 2, 2, 12, 4)
    sel = select_topk(torch.randn(1, 12, 12, generator=gen), 5)
    _, lse = sparse_attention(q, k, v, sel, return_lse=True)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * 0.5
    want = s.masked_fill(~selection_to_mask(sel, 12)[:, None], float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want)


@pytest.mark.parametrize("impl", ["auto", "reference", "triton"])
def test_bad_inputs_name_the_argument(impl):
    q = torch.zeros(1, 4, 8, 4)
    k = torch.zeros(1, 3, 8, 4)
    idx = torch.zeros(1, 8, 2, dtype=torch.int32)
    cases = [((q, k, k, idx), ValueError, "multiple of the K/V heads"),
             ((q, q, q, idx.float()), TypeError, "idx"),
             ((q, q, q, idx[:, :5]), ValueError, "idx must have shape"),
             ((q, q, q, idx + 8), ValueError, r"positions in \[0, L=8\)"),
             ((q, q, q, idx - 2), ValueError, "or -1"),
             ((q, q.double(), q, idx), TypeError, "share a dtype"),
             ((q[0], q, q, idx), ValueError, "q must have 4 dims"),
             ((q, q, q[:, :, :5], idx), ValueError, "v shape")]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            sparse_attention(*args, impl=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        sparse_attention(q, q, q, idx, impl="cuda")
    with pytest.raises(ValueError, match="scale"):
        sparse_attention(q, q, q, idx, scale=-1.0, impl=impl)


def test_triton_on_cpu_without_the_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.zeros(1, 2, 8, 4)
    with pytest.raises(ValueError, match="impl='triton' cannot run here"):
        sparse_attention(q, q, q, torch.zeros(1, 8, 2, dtype=torch.int32), impl="triton")


def test_a_repeated_position_weighs_twice_in_every_reference_path(gen):
    """The mask path (CPU, L <= 512) counts a repeated position as the gather path and the kernels do."""
    q, k, v = _qkv(gen, 1, 2, 1, 9, 4)
    idx = torch.tensor([[[0, -1, -1]] + [[1, 0, 0]] * 8], dtype=torch.int32)
    gathered, lse_g = sparse_attention_gather(q, k, v, idx, scale=0.5)
    torch.testing.assert_close(sparse_attention_masked(q, k, v, idx, scale=0.5), gathered)
    torch.testing.assert_close(sparse_attention(q, k, v, idx, scale=0.5, return_lse=True)[1], lse_g.float())
