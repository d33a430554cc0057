"""The indexer's KL losses (computed in float32) against float64 brute force, one query at a time; the
scores at the selection and their gradients against the full-score path."""

from __future__ import annotations

import math

import pytest
import torch

from dsa.ops import dense_indexer_kl, indexer_scores, indexer_scores_at, indexer_topk, sparse_indexer_kl
from dsa.ops.indexer_loss import sparse_attention_target


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
            s_t = [int(s) for s in sel[bi, t] if s >= 0]
            p = torch.zeros(len(s_t), dtype=torch.float64)
            for hh in range(h):
                logits = torch.stack([q[bi, hh, t] @ k[bi, hh // g, s] for s in s_t]) / math.sqrt(d)
                p += logits.softmax(0)
            p /= p.sum()
            scores = torch.stack([(torch.relu(qi[bi, t] @ ki[bi, s]) * w[bi, t]).sum() for s in s_t])
            total += float((p * (p.log() - scores.log_softmax(0))).sum())
    return total / (b * l)


def test_sparse_kl_matches_brute_force(gen):
    q, k, qi, ki, w = _inputs(gen)
    sel = indexer_topk(qi, ki, w, 7)
    got = float(sparse_indexer_kl(q, k, qi, ki, w, sel))
    assert got == pytest.approx(_brute_sparse_kl(q, k, qi, ki, w, sel), rel=2e-6, abs=1e-7)


def test_sparse_kl_with_every_past_token_equals_dense_kl(gen):
    q, k, qi, ki, w = _inputs(gen, l=13)
    sel = indexer_topk(qi, ki, w, 13)  # k = L: every query keeps all its past
    assert float(sparse_indexer_kl(q, k, qi, ki, w, sel)) == pytest.approx(
        float(dense_indexer_kl(q, k, qi, ki, w)), rel=2e-6)


def test_sparse_target_is_a_distribution_on_valid_slots(gen):
    q, k, qi, ki, w = _inputs(gen)
    sel = indexer_topk(qi, ki, w, 6)
    p = sparse_attention_target(q, k, sel, 0, q.shape[2])
    assert torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]))
    assert bool((p[sel < 0] == 0).all())


def test_scores_at_and_gradients_match_the_full_scores(gen):
    _, _, qi, ki, w = _inputs(gen, l=23)
    sel = indexer_topk(qi, ki, w, 9)
    ok = sel >= 0
    leaves = [x.clone().requires_grad_() for x in (qi, ki, w)]
    refs = [x.clone().requires_grad_() for x in (qi, ki, w)]
    got = indexer_scores_at(*leaves, sel)
    full = indexer_scores(*refs, causal=False)
    ref = full.gather(-1, sel.long().clamp(min=0))
    assert torch.equal(torch.isinf(got), ~ok)
    assert torch.allclose(got[ok], ref[ok], rtol=1e-5, atol=1e-6)
    go = torch.randn(got.shape, generator=gen, dtype=torch.float64).masked_fill(~ok, 0.0)
    got.masked_fill(~ok, 0.0).backward(go)
    ref.masked_fill(~ok, 0.0).backward(go)
    for name, a, r in zip(("q_idx", "k_idx", "w"), leaves, refs):
        assert torch.allclose(a.grad, r.grad, rtol=1e-5, atol=1e-5), name


def test_scores_at_padded_slots_are_minus_inf(gen):
    _, _, qi, ki, w = _inputs(gen, l=11)
    sel = indexer_topk(qi, ki, w, 11)  # early queries have fewer than 11 past tokens: padded slots
    assert bool((sel < 0).any())
    out = indexer_scores_at(qi, ki, w, sel)
    assert bool(torch.isneginf(out[sel < 0]).all()) and bool(torch.isfinite(out[sel >= 0]).all())


def test_loss_inputs_are_checked_by_name(gen):
    q, k, qi, ki, w = _inputs(gen, l=9)
    sel = indexer_topk(qi, ki, w, 3)
    with pytest.raises(ValueError, match="k_idx.shape\\[0\\] \\(B\\)"):
        sparse_indexer_kl(q, k, qi, ki[:1], w, sel)
    with pytest.raises(ValueError, match="lse must be a float tensor of shape"):
        sparse_indexer_kl(q, k, qi, ki, w, sel, lse=torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match="dense_indexer_kl: impl='triton' cannot run here"):
        dense_indexer_kl(q, k, qi, ki, w, impl="triton")
