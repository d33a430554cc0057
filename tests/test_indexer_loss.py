"""The indexer's KL losses (computed in float32) against float64 brute force, one query at a time, and their gradients against an
independent gather-based score path."""

from __future__ import annotations

import math

import pytest
import torch

from dsa.indexer_loss import dense_indexer_kl, indexer_scores_at, sparse_attention_target, sparse_indexer_kl
from dsa.topk import Selection, indexer_topk


def _inputs(gen, b=2, h=4, hkv=2, l=19, d=8, hi=3, di=5):
    q = torch.randn(b, h, l, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, l, d, generator=gen, dtype=torch.float64)
    qi = torch.randn(b, l, hi, di, generator=gen, dtype=torch.float64)
    ki = torch.randn(b, l, di, generator=gen, dtype=torch.float64)
    w = torch.randn(b, l, hi, generator=gen, dtype=torch.float64)
    return q, k, qi, ki, w


def _brute_sparse_kl(q, k, qi, ki, w, sel):
    b, h, l, d = q.shape
    g = h // k.shape[1]
    total = 0.0
    for bi in range(b):
        for t in range(l):
            s_t = [int(s) for s, ok in zip(sel.idx[bi, t], sel.valid[bi, t]) if ok]
            p = torch.zeros(len(s_t), dtype=torch.float64)
            for hh in range(h):
                logits = torch.stack([q[bi, hh, t] @ k[bi, hh // g, s] for s in s_t]) / math.sqrt(d)
                p += logits.softmax(0)
            p /= p.sum()
            scores = torch.stack([(torch.relu(qi[bi, t] @ ki[bi, s]) * w[bi, t]).sum() for s in s_t])
            total += float((p * (p.log() - scores.log_softmax(0))).sum())
    return total / (b * l)


@pytest.mark.parametrize("chunk", [4, 19])
def test_sparse_kl_matches_brute_force(gen, chunk):
    q, k, qi, ki, w = _inputs(gen)
    sel = indexer_topk(qi, ki, w, 7)
    got = float(sparse_indexer_kl(q, k, qi, ki, w, sel, chunk=chunk))
    assert got == pytest.approx(_brute_sparse_kl(q, k, qi, ki, w, sel), rel=2e-6, abs=1e-7)


def test_sparse_kl_with_every_past_token_equals_dense_kl(gen):
    q, k, qi, ki, w = _inputs(gen, l=13)
    sel = indexer_topk(qi, ki, w, 13)  # k = L: every query keeps all its past
    assert float(sparse_indexer_kl(q, k, qi, ki, w, sel, chunk=5)) == pytest.approx(
        float(dense_indexer_kl(q, k, qi, ki, w, chunk=5)), rel=2e-6)


def test_sparse_target_is_a_distribution_on_valid_slots(gen):
    q, k, qi, ki, w = _inputs(gen)
    sel = indexer_topk(qi, ki, w, 6)
    p = sparse_attention_target(q, k, sel, 0, q.shape[2])
    assert torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]))
    assert bool((p[~sel.valid] == 0).all())


def test_scores_at_and_gradients_match_the_gather_reference(gen):
    # imported here: importing dsa.kernels imports triton, which must not happen before tests/test_kernels.py
    # (collected later) sets TRITON_INTERPRET
    from dsa.kernels import indexer_scores_at_reference  # noqa: PLC0415

    _, _, qi, ki, w = _inputs(gen, l=23)
    sel = indexer_topk(qi, ki, w, 9)
    leaves = [x.clone().requires_grad_() for x in (qi, ki, w)]
    refs = [x.clone().requires_grad_() for x in (qi, ki, w)]
    got = indexer_scores_at(*leaves, sel)
    ref = indexer_scores_at_reference(*refs, sel.idx, sel.valid)
    assert torch.equal(torch.isinf(got), ~sel.valid)
    assert torch.allclose(got[sel.valid], ref[sel.valid], rtol=1e-5, atol=1e-6)
    go = torch.randn(got.shape, generator=gen, dtype=torch.float64).masked_fill(~sel.valid, 0.0)
    got.masked_fill(~sel.valid, 0.0).backward(go)
    ref.masked_fill(~sel.valid, 0.0).backward(go)
    for name, a, r in zip(("q_idx", "k_idx", "w"), leaves, refs):
        assert torch.allclose(a.grad, r.grad, rtol=1e-5, atol=1e-5), name


def test_scores_at_padded_slots_are_minus_inf(gen):
    _, _, qi, ki, w = _inputs(gen, l=11)
    sel = indexer_topk(qi, ki, w, 11)  # early queries have fewer than 11 past tokens: padded slots
    assert bool((~sel.valid).any())
    out = indexer_scores_at(qi, ki, w, Selection(sel.idx, sel.valid))
    assert bool(torch.isneginf(out[~sel.valid]).all()) and bool(torch.isfinite(out[sel.valid]).all())

