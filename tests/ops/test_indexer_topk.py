"""The indexer against an independent evaluation of its formula; top-k shapes, padding, per-query k, errors."""

import pytest
import torch

from dsa.layers import IndexerConfig, LightningIndexer
from dsa.ops import indexer_scores, indexer_topk, select_topk, selection_to_mask, topk_positions
from dsa.ops.topk import indexer_topk_reference


def _rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)


def test_indexer_scores_match_the_formula_elementwise(gen):
    b, l, hi, di = 2, 13, 3, 5
    q, k, w = _rand(gen, b, l, hi, di), _rand(gen, b, l, di), _rand(gen, b, l, hi)
    got = indexer_scores(q, k, w, causal=False)
    want = torch.zeros(b, l, l, dtype=torch.float64)
    for bb in range(b):
        for t in range(l):
            for s in range(l):
                want[bb, t, s] = sum(
                    float(w[bb, t, j]) * max(float(q[bb, t, j].double() @ k[bb, s].double()), 0.0) for j in range(hi)
                )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_causal_scores_are_minus_inf_exactly_in_the_future(gen):
    q, k, w = _rand(gen, 1, 9, 2, 4), _rand(gen, 1, 9, 4), _rand(gen, 1, 9, 2)
    s = indexer_scores(q, k, w, causal=True)
    fut = torch.triu(torch.ones(9, 9, dtype=torch.bool), 1)
    assert torch.isneginf(s[0][fut]).all()
    assert torch.isfinite(s[0][~fut]).all()


def test_indexer_module_shapes_and_rope_requirement(gen):
    from dsa.layers.rope import rope_cos_sin

    mod = LightningIndexer(IndexerConfig(d_model=24, n_heads=3, head_dim=8, rope_dim=4))
    x = _rand(gen, 2, 11, 24)
    q, k, w = mod(x, *rope_cos_sin(11, 4))
    assert q.shape == (2, 11, 3, 8) and k.shape == (2, 11, 8) and w.shape == (2, 11, 3)
    with pytest.raises(ValueError, match="cos/sin"):
        mod(x)


@pytest.mark.parametrize("l,k", [(1, 1), (17, 1), (17, 5), (23, 23), (31, 8)])
def test_select_topk_picks_the_highest_past_scores(gen, l, k):
    scores = _rand(gen, 2, l, l)
    sel = select_topk(scores, k)
    assert sel.shape == (2, l, k) and sel.dtype == torch.int32
    for b in range(2):
        for t in range(l):
            n = min(k, t + 1)
            assert int((sel[b, t] >= 0).sum()) == n
            chosen = sel[b, t, :n]
            assert (chosen <= t).all() and (sel[b, t, n:] == -1).all()
            want = torch.topk(scores[b, t, : t + 1], n).indices
            assert set(chosen.tolist()) == set(want.tolist())


def test_per_query_k_tensor(gen):
    l = 19
    scores = _rand(gen, 2, l, l)
    kq = torch.randint(1, l + 1, (2, l), generator=gen)
    sel = select_topk(scores, kq)
    assert sel.shape[-1] == int(kq.max())
    want = torch.minimum(kq, torch.arange(1, l + 1)[None])
    assert torch.equal((sel >= 0).sum(-1), want)
    sel1 = select_topk(scores, kq[0])  # (L,) broadcasts over the batch
    assert torch.equal((sel1 >= 0).sum(-1)[1], torch.minimum(kq[0], torch.arange(1, l + 1)))


def test_chunked_indexer_topk_equals_unchunked(gen):
    b, l = 2, 45
    q, k, w = _rand(gen, b, l, 3, 6), _rand(gen, b, l, 6), _rand(gen, b, l, 3)
    kq = torch.randint(1, 12, (b, l), generator=gen)
    scores = indexer_scores(q, k, w)
    whole = select_topk(scores, kq)
    chunked = indexer_topk_reference(q, k, w, kq, chunk=7)
    assert torch.equal(whole >= 0, chunked >= 0)
    # the same selected scores; which of several tied tokens is kept may differ (with ReLU, exact zeros
    # are common ties), so compare the sorted selected scores, and the sets where there is no tie
    picked = [scores.gather(-1, s.long().clamp(min=0)).masked_fill(s < 0, float("-inf")).sort(-1).values
              for s in (whole, chunked)]
    torch.testing.assert_close(picked[0], picked[1], rtol=0, atol=0)
    kth = scores.gather(-1, whole.long().clamp(min=0)).masked_fill(whole < 0, float("inf")).amin(-1)
    tied = ((scores == kth[..., None]).sum(-1) > 1)  # rows whose k-th score is shared by several tokens
    m_whole, m_chunk = selection_to_mask(whole, l), selection_to_mask(chunked, l)
    assert torch.equal(m_whole[~tied], m_chunk[~tied])


def test_leak_future_can_select_future_tokens(gen):
    l = 16
    scores = torch.zeros(1, l, l)
    scores[0, :, -1] = 10.0  # the last token is the most attractive for everyone
    leaky = select_topk(scores, 3, leak_future=True)
    assert (leaky[0, 0] == l - 1).any(), "the leaky selection should pick a future token"
    causal = select_topk(scores, 3)
    assert not (causal[0, :-1] == l - 1).any()


def test_selection_mask_keeps_position_zero_with_padding():
    assert selection_to_mask(torch.tensor([[[0, -1]]]), 3).tolist() == [[[True, False, False]]]


@pytest.mark.parametrize(
    "k,exc,match",
    [(0, ValueError, "top_k must be >= 1"), (9, ValueError, "top_k must be <= the sequence length"),
     (2.5, TypeError, "top_k"), (torch.tensor([1.0] * 8), TypeError, "top_k")],
)
def test_bad_k_is_rejected_with_its_name(k, exc, match):
    with pytest.raises(exc, match=match):
        select_topk(torch.zeros(1, 8, 8), k)


def test_bad_shapes_and_dtypes_are_rejected():
    with pytest.raises(ValueError, match="scores"):
        select_topk(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="top_k tensor must have shape"):
        select_topk(torch.zeros(1, 8, 8), torch.ones(7, dtype=torch.long))
    with pytest.raises(TypeError, match="q_idx"):
        indexer_scores(torch.zeros(1, 4, 2, 3, dtype=torch.long), torch.zeros(1, 4, 3), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="d_I"):
        indexer_scores(torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 5), torch.zeros(1, 4, 2))


def test_indexer_inputs_are_checked_by_name(gen):
    q, k, w = _rand(gen, 2, 8, 2, 4), _rand(gen, 2, 8, 4), _rand(gen, 2, 8, 2)
    with pytest.raises(ValueError, match=r"k_idx.shape\[0\] \(B\)"):
        indexer_topk(q, k[:1], w, 3)  # a batch of one was broadcast silently before
    with pytest.raises(ValueError, match=r"k_idx.shape\[1\] \(L\)"):
        indexer_topk(q, k[:, :7], w, 3)
    with pytest.raises(ValueError, match=r"w.shape\[1\] \(L\)"):
        indexer_topk(q, k, w[:, :7], 3)
    bad = q.clone()
    bad[0, 3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="q_idx holds NaN"):
        indexer_topk(bad, k, w, 3)
    with pytest.raises(ValueError, match="impl must be one of"):
        indexer_topk(q, k, w, 3, impl="gather")


def test_nan_scores_are_refused_not_selected(gen):
    scores = _rand(gen, 1, 6, 6)
    scores[0, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="scores holds NaN"):
        select_topk(scores, 2)
    with pytest.raises(ValueError, match="scores holds NaN"):
        topk_positions(scores, 2)


def test_topk_positions_reference_is_ascending_and_pads_short_rows(gen):
    scores = _rand(gen, 3, 10)
    out = topk_positions(scores, 4, torch.tensor([10, 2, 0]))
    assert out[1].tolist()[2:] == [-1, -1] and out[2].tolist() == [-1] * 4
    assert torch.equal(out[0], torch.topk(scores[0], 4).indices.sort().values)


def test_ties_and_minus_inf_take_the_first_past_positions():
    """A past -inf ranks before the masked future (torch.topk's order did not ensure it); tied scores go to
    the first positions, as the Triton top-k breaks them."""
    s = torch.full((1, 4, 8), float("-inf"))
    s[0, :, 0] = 1.0
    assert select_topk(s, 3, impl="reference").tolist() == [[[0, -1, -1], [0, 1, -1], [0, 1, 2], [0, 1, 2]]]
    z = torch.zeros(1, 6, 6)
    z[0, :, 3] = 1.0
    assert select_topk(z, 2, impl="reference")[0, 5].tolist() == [3, 0]
    with pytest.raises(ValueError, match="q_start"):
        select_topk(z, 2, q_start=-1)
