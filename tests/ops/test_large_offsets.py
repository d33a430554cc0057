"""Kernels at sizes whose element offsets pass 2^31 (CUDA only: the tensors take ~5 GB).

MLA-MQA's q at 128 heads x 576 reaches 2^31 elements from L = 32K, and a 64 x 128 indexer's queries over a
batch of two rows of a little more than 128K do too (two rows of exactly 128K hold 2^31 elements: their last
offset, 2^31 - 1, still fits in int32). A kernel that computes such an offset in int32 reads or writes out of bounds
(the map's MLA run at 32K ended with "an illegal memory access" in the sparse KL's probability kernel). The
checks compare the last query rows, those whose offsets are largest, with the formula computed on slices.
"""

import pytest
import torch

from dsa import ops

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs CUDA: ~5 GB tensors")


def _mla_inputs(l: int, ksel: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, 128, l, 576, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 1, l, 576, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, _causal_selection(1, l, ksel, g)


def _causal_selection(b: int, l: int, ksel: int, g: torch.Generator) -> torch.Tensor:
    """(B, L, K) int32: for each query t, K random positions s <= t (repeats allowed)."""
    t = torch.arange(l, device="cuda")[:, None]
    return torch.stack([t - torch.randint(0, l, (l, ksel), device="cuda", generator=g) % (t + 1)
                        for _ in range(b)]).to(torch.int32)


def _rows_reference(q, k, idx, rows, scale):
    """(out (H, R, 512), lse (H, R), p (R, K)) of the given query rows, in fp32 from slices."""
    qs = q[0, :, rows].float()  # (H, R, 576)
    kg = k[0, 0][idx[0, rows].long()].float()  # (R, K, 576)
    s = torch.einsum("hrd,rkd->hrk", qs, kg) * scale
    lse = s.logsumexp(-1)
    p = (s - lse[..., None]).exp()
    out = torch.einsum("hrk,rkd->hrd", p, kg[..., :512])
    return out, lse, p.mean(0)


def test_mla_forward_and_kl_probabilities_at_32k():
    from dsa.ops.kernels.sparse_attention import sparse_attention_probs  # noqa: PLC0415

    l, ksel = 32768, 64
    q, k, idx = _mla_inputs(l, ksel, seed=3)
    scale = 576**-0.5
    out, lse = ops.sparse_attention(q, k, k[..., :512], idx, scale=scale, return_lse=True, impl="triton")
    p = sparse_attention_probs(q, k, idx, lse, scale)
    torch.cuda.synchronize()
    rows = torch.arange(l - 8, l, device="cuda")
    want_out, want_lse, want_p = _rows_reference(q, k, idx, rows, scale)
    torch.testing.assert_close(lse[0][:, rows], want_lse, rtol=0, atol=2e-2)
    torch.testing.assert_close(out[0][:, rows].float(), want_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(p[0, rows], want_p, rtol=2e-2, atol=1e-3)


def test_indexer_scores_at_selection_over_a_batch_of_two_128k_rows():
    b, l, ksel = 2, 131072 + 1031, 16  # past 128K: batch row 1's last offsets pass 2^31 (at 128K they end at 2^31 - 1)
    g = torch.Generator(device="cuda").manual_seed(5)
    qi = torch.randn(b, l, 64, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    ki = torch.randn(b, l, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(b, l, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    assert qi.numel() > 2**31  # else every offset fits in int32 and the test could not fail
    idx = _causal_selection(b, l, ksel, g)
    got = ops.indexer_scores_at(qi, ki, w, idx, impl="triton")
    torch.cuda.synchronize()
    rows = torch.arange(l - 4, l, device="cuda")
    logits = torch.einsum("rhd,rkd->rkh", qi[1, rows].float(), ki[1][idx[1, rows].long()].float()).relu()
    want = torch.einsum("rkh,rh->rk", logits, w[1, rows].float())
    torch.testing.assert_close(got[1, rows], want, rtol=2e-2, atol=5e-2)


def test_mla_backward_headsum_matches_atomic_at_32k():
    """The headsum dK/dV kernel at MLA 128 x 576 from L = 32K, where head index x head stride passes 2^31
    (its head loop in int64): the same dq and latent gradient as the atomic strategy, whose head blocks come
    from int64 program ids. ~25 GB of tensors (q, o, dO and two dq at 128 x 32K x 576 bf16)."""
    from dsa.ops.kernels.sparse_attention import _bwd, _fwd  # noqa: PLC0415

    l = 32768
    q, k, idx = _mla_inputs(l, 16, seed=7)
    scale = 576**-0.5
    o, lse = _fwd(q, k, k[..., :512], idx, scale)
    do = torch.randn_like(o)
    hq, hk, hv = _bwd(q, k, k[..., :512], idx, o, lse, do, scale, dkv="headsum")
    aq, ak, av = _bwd(q, k, k[..., :512], idx, o, lse, do, scale, dkv="atomic")
    torch.cuda.synchronize()
    ak = ak.float()
    ak[..., :512] += av.float()
    assert not hv.any()
    for got, want in ((hq.float(), aq.float()), (hk.float(), ak)):
        rel = float((got - want).norm() / want.norm())
        assert rel < 1e-2, rel
