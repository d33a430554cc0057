"""The Triton kernels as ``torch.library`` custom ops (``torch.ops.dsa.*``).

``torch.compile(fullgraph=True)`` sees each op as one node with a fake (shape-only) implementation and, for
the differentiable ones, an autograd formula: no graph break, no tracing into launch code. The ops in
:mod:`dsa.ops` call these on their Triton path, so eager and compiled runs take the same kernels.

- ``dsa::sparse_attention`` (q, k, v, idx32, scale) -> (o, lse); backward ``dsa::sparse_attention_bwd``
- ``dsa::sparse_attention_probs`` (q, k, idx32, lse, scale) -> p (no gradient)
- ``dsa::indexer_topk`` (q_idx, k_idx, w, top_k) -> idx32 (no gradient)
- ``dsa::indexer_topk_fp8`` (q8, k8, w, k_scale, top_k) -> idx32 (no gradient)
- ``dsa::indexer_scores_at`` (q_idx, k_idx, w, idx32) -> scores; backward ``dsa::indexer_scores_at_bwd``
- ``dsa::quantize_rows`` (x, rotate, amax_floor) -> (e4m3 values, scales) (no gradient)
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("dsa::sparse_attention", mutates_args=())
def sparse_attention_op(q: Tensor, k: Tensor, v: Tensor, idx32: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """q (B, H, L, d_qk), k (B, H_kv, L, d_qk), v (B, H_kv, L, d_v), idx32 (B, L, K) -> o (B, H, L, d_v) in
    q's dtype, lse (B, H, L) fp32."""
    from .sparse_attention import _fwd  # noqa: PLC0415

    return _fwd(q, k, v, idx32, scale)


@sparse_attention_op.register_fake
def _(q, k, v, idx32, scale):
    b, h, l, _ = q.shape
    return q.new_empty(b, h, l, v.shape[-1]), q.new_empty(b, h, l, dtype=torch.float32)


@torch.library.custom_op("dsa::sparse_attention_bwd", mutates_args=())
def sparse_attention_bwd_op(q: Tensor, k: Tensor, v: Tensor, idx32: Tensor, o: Tensor, lse: Tensor, do: Tensor,
                         scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of :func:`sparse_attention` for the output gradient do (B, H, L, d_v)."""
    from .sparse_attention import _bwd  # noqa: PLC0415

    return _bwd(q, k, v, idx32, o, lse, do, scale)


@sparse_attention_bwd_op.register_fake
def _(q, k, v, idx32, o, lse, do, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_context(ctx, inputs, output) -> None:
    q, k, v, idx32, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, idx32, o, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)  # the lse is returned for the KL target only


def _attention_backward(ctx, do, dlse):
    q, k, v, idx32, o, lse = ctx.saved_tensors
    dq, dk, dv = sparse_attention_bwd_op(q, k, v, idx32, o, lse, do.contiguous(), ctx.scale)
    return dq, dk, dv, None, None


sparse_attention_op.register_autograd(_attention_backward, setup_context=_attention_context)


@torch.library.custom_op("dsa::sparse_attention_probs", mutates_args=())
def sparse_attention_probs_op(q: Tensor, k: Tensor, idx32: Tensor, lse: Tensor, scale: float) -> Tensor:
    """Head-averaged attention probabilities at the selected slots: (B, L, K) fp32."""
    from .sparse_attention import sparse_attention_probs as kernel  # noqa: PLC0415

    return kernel(q, k, idx32, lse, scale)


@sparse_attention_probs_op.register_fake
def _(q, k, idx32, lse, scale):
    return q.new_empty(idx32.shape, dtype=torch.float32)


# The fixed-k selection behind both top-k ops: 'chunked' (score rows stored in chunks, then the radix top-k:
# measured, the default) or 'fused' (indexer_fused: candidates appended by the score pass, no score stored;
# same result; fewer bytes by the model, dsa.ops.flops.topk_bytes; not yet timed on a GPU: see
# dsa.bench.indexer's 'fused' rows before switching).
SELECTION = "chunked"


def _fixed_k_topk(q_idx: Tensor, k_idx: Tensor, w: Tensor, top_k: int, k_scale: Tensor | None) -> Tensor:
    if SELECTION == "fused":
        from .indexer_fused import indexer_topk_fused  # noqa: PLC0415

        return indexer_topk_fused(q_idx, k_idx, w, top_k, k_scale=k_scale)
    from .indexer_chunked import indexer_topk_chunked  # noqa: PLC0415

    return indexer_topk_chunked(q_idx, k_idx, w, top_k, k_scale=k_scale)


@torch.library.custom_op("dsa::indexer_topk", mutates_args=())
def indexer_topk_op(q_idx: Tensor, k_idx: Tensor, w: Tensor, top_k: int) -> Tensor:
    """Causal indexer top-k, one k: (B, L, top_k) int32, -1 in unused slots."""
    return _fixed_k_topk(q_idx, k_idx, w, top_k, None)


@indexer_topk_op.register_fake
def _(q_idx, k_idx, w, top_k):
    return q_idx.new_empty(q_idx.shape[0], q_idx.shape[1], top_k, dtype=torch.int32)


@torch.library.custom_op("dsa::indexer_topk_fp8", mutates_args=())
def indexer_topk_fp8_op(q8: Tensor, k8: Tensor, w: Tensor, k_scale: Tensor, top_k: int) -> Tensor:
    """Causal indexer top-k on FP8 scores (``dsa.ops.quantize``): q8 (B, L, H_I, d_I), k8 (B, L, d_I) e4m3
    values (in e4m3 or bf16), w (B, L, H_I) fp32 with the query scales, k_scale (B, L) fp32 -> (B, L, top_k)
    int32, -1 in unused slots."""
    return _fixed_k_topk(q8, k8, w, top_k, k_scale)


@indexer_topk_fp8_op.register_fake
def _(q8, k8, w, k_scale, top_k):
    return q8.new_empty(q8.shape[0], q8.shape[1], top_k, dtype=torch.int32)


@torch.library.custom_op("dsa::indexer_scores_at", mutates_args=())
def indexer_scores_at_op(q_idx: Tensor, k_idx: Tensor, w: Tensor, idx32: Tensor) -> Tensor:
    """I[t, idx[t, j]]: (B, L, K) fp32, -inf at unused slots; the three inputs share one dtype."""
    from .indexer import _scores_at_fwd  # noqa: PLC0415

    return _scores_at_fwd(q_idx, k_idx, w, idx32)


@indexer_scores_at_op.register_fake
def _(q_idx, k_idx, w, idx32):
    return q_idx.new_empty(idx32.shape, dtype=torch.float32)


@torch.library.custom_op("dsa::indexer_scores_at_bwd", mutates_args=())
def indexer_scores_at_bwd_op(q_idx: Tensor, k_idx: Tensor, w: Tensor, idx32: Tensor, go: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`indexer_scores_at` w.r.t. q_idx, k_idx, w for the output gradient go (B, L, K)."""
    from .indexer import _scores_at_bwd  # noqa: PLC0415

    return _scores_at_bwd(q_idx, k_idx, w, idx32, go)


@indexer_scores_at_bwd_op.register_fake
def _(q_idx, k_idx, w, idx32, go):
    return torch.empty_like(q_idx), torch.empty_like(k_idx), torch.empty_like(w)


def _scores_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _scores_backward(ctx, go):
    q_idx, k_idx, w, idx32 = ctx.saved_tensors
    return (*indexer_scores_at_bwd_op(q_idx, k_idx, w, idx32, go.float().contiguous()), None)


indexer_scores_at_op.register_autograd(_scores_backward, setup_context=_scores_context)


@torch.library.custom_op("dsa::quantize_rows", mutates_args=())
def quantize_rows_op(x: Tensor, rotate: bool, amax_floor: float) -> tuple[Tensor, Tensor]:
    """x (..., d) -> (e4m3 values (..., d), fp32 scale (...)): the FP8 indexer's rotation and per-row
    quantization (:func:`dsa.ops.kernels.quantize.quantize_rows_triton`)."""
    from .quantize import quantize_rows_triton  # noqa: PLC0415

    return quantize_rows_triton(x, rotate, amax_floor=amax_floor)


@quantize_rows_op.register_fake
def _(x, rotate, amax_floor):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:-1], dtype=torch.float32)
