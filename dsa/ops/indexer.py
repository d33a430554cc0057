"""The lightning indexer's scores, I[t,s] = sum_j w[t,j] * ReLU(q_I[t,j] . k_I[s]), as public ops.

- :func:`indexer_scores`: a block of query rows against every key (the L x L scores, for small L and plots).
- :func:`indexer_scores_at`: the scores at selected positions only, differentiable (the KL loss's path).

``precision="fp8"`` (:func:`indexer_scores`, and :func:`dsa.ops.indexer_topk`): DeepSeek-V3.2's FP8 indexer
(Hadamard rotation, e4m3 with per-token scales: :mod:`dsa.ops.quantize`), selection only, no gradient.

Each takes ``impl`` (see :mod:`dsa.ops.dispatch`); the ``*_reference`` functions are the specification.
"""

from __future__ import annotations

import torch

from .checks import check_indexer, check_selection
from .dispatch import resolve_impl
from .quantize import IndexerFP8, check_precision, fp8_operands, quantize_indexer


def indexer_scores_reference(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, *, causal: bool = True, q_start: int = 0
) -> torch.Tensor:
    """q_idx (B, Lq, H_I, d_I) for positions q_start .. q_start+Lq-1, k_idx (B, Lk, d_I), w (B, Lq, H_I)
    -> (B, Lq, Lk) float32; with ``causal`` the entries s > t are -inf. Differentiable."""
    logits = torch.einsum("bqhd,bkd->bqhk", q_idx.float(), k_idx.float()).relu_()
    scores = torch.einsum("bqhk,bqh->bqk", logits, w.float())
    if causal:
        lq, lk = scores.shape[1], scores.shape[2]
        t = torch.arange(q_start, q_start + lq, device=scores.device)[:, None]
        s = torch.arange(lk, device=scores.device)[None, :]
        scores = scores.masked_fill(s > t, float("-inf"))
    return scores


def indexer_scores_fp8_reference(z: IndexerFP8, *, causal: bool = True, q_start: int = 0) -> torch.Tensor:
    """FP8 scores k_scale[s] * sum_j w'[t,j] ReLU(q8[t,j] . k8[s]) of :func:`dsa.ops.quantize.quantize_indexer`'s
    output, in fp32 from the e4m3 values (their products are exact in fp32). Shapes and masking as
    :func:`indexer_scores_reference` (z.q (B, Lq, H_I, d_I) ... -> (B, Lq, Lk) float32)."""
    s = indexer_scores_reference(z.q.float(), z.k.float(), z.w, causal=causal, q_start=q_start)
    return s * z.k_scale[:, None, :]  # a positive scale: -inf stays -inf


def indexer_scores(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    *,
    causal: bool = True,
    q_start: int = 0,
    impl: str = "auto",
    precision: str = "bf16",
) -> torch.Tensor:
    """Indexer scores of a block of queries against all keys, in float32.

    q_idx: (B, Lq, H_I, d_I) indexer queries for positions q_start .. q_start+Lq-1
    k_idx: (B, Lk, d_I) one indexer key per token;  w: (B, Lq, H_I) per-token head weights
    returns (B, Lq, Lk) float32; with ``causal`` the entries s > t are -inf (never selectable).
    precision: 'bf16' (the inputs' dtype) or 'fp8' (Hadamard-rotated e4m3 with per-token scales, d_I a power
    of two; no gradient).
    The Triton path (forward only) covers the whole causal square: Lq = Lk, q_start = 0, no gradient.
    """
    check_indexer(q_idx, k_idx, w, same_length=False)
    fp8 = check_precision(precision) == "fp8"
    if isinstance(q_start, bool) or not isinstance(q_start, int) or q_start < 0:
        raise ValueError(f"q_start must be an int >= 0, got {q_start!r}")
    square = causal and q_start == 0 and q_idx.shape[1] == k_idx.shape[1]
    grad = not fp8 and torch.is_grad_enabled() and any(t.requires_grad for t in (q_idx, k_idx, w))
    why = None if square and not grad else "the kernel scores the causal square only, without gradient"
    path = resolve_impl(impl, q_idx, k_idx, w, op="indexer_scores", unsupported=why)
    z = quantize_indexer(q_idx, k_idx, w) if fp8 else None
    if path == "reference":
        if fp8:
            return indexer_scores_fp8_reference(z, causal=causal, q_start=q_start)
        return indexer_scores_reference(q_idx, k_idx, w, causal=causal, q_start=q_start)
    from dsa.ops.kernels.indexer_chunked import indexer_scores_triton  # noqa: PLC0415 (triton on demand)

    if fp8:
        return indexer_scores_triton(*fp8_operands(z), z.w, k_scale=z.k_scale)
    return indexer_scores_triton(q_idx, k_idx, w)


def indexer_scores_at_reference(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, *, chunk: int = 256
) -> torch.Tensor:
    """I[t, idx[t, j]] (-inf at idx = -1) from the scores of each query chunk against every key, then a
    gather: autograd turns the gather into a scatter-add (gathering the K key rows per query instead makes it
    a sorting index_put: 20-75% of a DSA step on an H100, data/bench/step-profile/before-kl-fix/).
    q_idx (B, L, H_I, d_I), k_idx (B, Lk, d_I), w (B, L, H_I), idx (B, L, K) -> (B, L, K) float32."""
    outs = []
    for c0 in range(0, q_idx.shape[1], chunk):
        c1 = min(c0 + chunk, q_idx.shape[1])
        sc = indexer_scores_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], causal=False)
        ic = idx[:, c0:c1]
        outs.append(sc.gather(-1, ic.clamp(min=0).long()).masked_fill(ic < 0, float("-inf")))
    return torch.cat(outs, 1)


def indexer_scores_at(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, *, impl: str = "auto"
) -> torch.Tensor:
    """Indexer scores at the selected positions only: I[t, idx[t, j]], -inf at unused slots (idx = -1).

    q_idx (B, L, H_I, d_I), k_idx (B, Lk, d_I), w (B, L, H_I), idx (B, L, K) int32/int64
    -> (B, L, K) float32, differentiable w.r.t. q_idx, k_idx and w. Memory O(L * K) on the Triton path, which
    computes in the queries' dtype (bf16 queries: bf16 products, fp32 accumulation), as the indexer top-k does.
    """
    check_indexer(q_idx, k_idx, w, same_length=False)
    check_selection(idx, q_idx.shape[0], q_idx.shape[1], k_idx.shape[1])
    if resolve_impl(impl, q_idx, k_idx, w, idx, op="indexer_scores_at") == "reference":
        return indexer_scores_at_reference(q_idx, k_idx, w, idx)
    from dsa.ops.kernels.indexer import indexer_scores_at_triton  # noqa: PLC0415

    # the kernel takes one dtype: the queries' (autocast hands over bf16 queries and weights with fp32 keys from
    # the LayerNorm; promoting all to fp32 ran the fp32 path, 3-4x slower on an H200 at L = 64K, and the
    # indexer top-k already scores in the queries' dtype)
    dt = q_idx.dtype
    return indexer_scores_at_triton(q_idx, k_idx.to(dt), w.to(dt), idx)
