"""Sparse attention references: gather == masked on odd shapes, k >= L equals dense, GQA, errors."""

import pytest
import torch

from dsa.sparse_attention import (
    dense_causal_attention,
    sparse_attention_gather,
    sparse_attention_masked,
)
from dsa.topk import indexer_topk, select_topk, selection_to_mask


def _qkv(gen, b, h, hkv, l, d, dtype=torch.float32):
    return (torch.randn(b, h, l, d, generator=gen).to(dtype), torch.randn(b, hkv, l, d, generator=gen).to(dtype),
            torch.randn(b, hkv, l, d, generator=gen).to(dtype))


@pytest.mark.parametrize("b,h,hkv,l,d,k,chunk", [(1, 1, 1, 1, 4, 1, 3), (2, 4, 4, 37, 8, 11, 5),
                                                   (2, 8, 2, 53, 16, 7, 16), (1, 6, 3, 29, 6, 29, 128),
                                                   (3, 8, 1, 19, 10, 4, 4)])
def test_gather_equals_masked_on_odd_shapes(gen, b, h, hkv, l, d, k, chunk):
    q, kk, v = _qkv(gen, b, h, hkv, l, d)
    sel = indexer_topk(torch.randn(b, l, 3, 5, generator=gen), torch.randn(b, l, 5, generator=gen),
                       torch.randn(b, l, 3, generator=gen), k)
    a = sparse_attention_gather(q, kk, v, sel.idx, sel.valid, chunk=chunk)
    m = sparse_attention_masked(q, kk, v, sel.idx, sel.valid)
    torch.testing.assert_close(a, m, rtol=1e-5, atol=1e-5)


def test_gather_gradients_equal_masked_gradients(gen):
    q, k, v = (t.requires_grad_() for t in _qkv(gen, 2, 4, 2, 23, 8, torch.float64))
    sel = select_topk(torch.randn(2, 23, 23, generator=gen), torch.randint(1, 9, (2, 23), generator=gen))
    go = torch.randn(2, 4, 23, 8, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((sparse_attention_gather(q, k, v, sel.idx, sel.valid, chunk=6) * go).sum(), (q, k, v))
    gm = torch.autograd.grad((sparse_attention_masked(q, k, v, sel.idx, sel.valid) * go).sum(), (q, k, v))
    for a, m in zip(ga, gm):
        torch.testing.assert_close(a, m)


@pytest.mark.parametrize("hkv", [1, 2, 6])
def test_k_at_least_l_equals_dense(gen, hkv):
    l = 31
    q, k, v = _qkv(gen, 2, 6, hkv, l, 8)
    sel = select_topk(torch.randn(2, l, l, generator=gen), l)
    torch.testing.assert_close(sparse_attention_gather(q, k, v, sel.idx, sel.valid), dense_causal_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)


def test_bf16_gather_close_to_fp32(gen):
    q, k, v = _qkv(gen, 1, 4, 2, 40, 16)
    sel = select_topk(torch.randn(1, 40, 40, generator=gen), 9)
    ref = sparse_attention_gather(q, k, v, sel.idx, sel.valid)
    out = sparse_attention_gather(q.bfloat16(), k.bfloat16(), v.bfloat16(), sel.idx, sel.valid)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 1e-2


def test_lse_is_returned_and_matches(gen):
    q, k, v = _qkv(gen, 1, 2, 2, 12, 4)
    sel = select_topk(torch.randn(1, 12, 12, generator=gen), 5)
    _, lse = sparse_attention_gather(q, k, v, sel.idx, sel.valid, return_lse=True)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * 0.5
    mask = selection_to_mask(sel, 12)
    want = s.masked_fill(~mask[:, None], float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want)


def test_bad_inputs_name_the_argument():
    q = torch.zeros(1, 4, 8, 4)
    k = torch.zeros(1, 3, 8, 4)
    idx = torch.zeros(1, 8, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="n_kv_heads"):
        sparse_attention_gather(q, k, k, idx)
    with pytest.raises(TypeError, match="idx"):
        sparse_attention_gather(q, q, q, idx.float())
    with pytest.raises(ValueError, match="idx must have shape"):
        sparse_attention_gather(q, q, q, idx[:, :5])
    with pytest.raises(ValueError, match="positions >= L"):
        sparse_attention_gather(q, q, q, idx + 8)
    with pytest.raises(TypeError, match="share a dtype"):
        sparse_attention_gather(q, q.double(), q, idx)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        sparse_attention_gather(q[0], q, q, idx)
