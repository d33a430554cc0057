"""Decode ops: new queries (a prompt, or one token per sequence) against a cache of keys that starts at
position 0, each query at its own absolute position.

The full-sequence ops (:func:`dsa.ops.sparse_attention`, :func:`dsa.ops.indexer_topk`) take queries and keys
of one length, both from position 0. Here the T new queries of sequence b sit at positions
``q_pos[b, j]`` (the cache length before the call plus j) and see the cached keys s <= q_pos[b, j]:

- :func:`decode_indexer_topk`: indexer scores of the new queries over the cached indexer keys, then the top-k
  among the positions s <= q_pos (all of them when k >= q_pos + 1), the same set as the causal
  :func:`dsa.ops.indexer_topk` picks for that position in a full forward. With ``k_scale`` the cache holds
  FP8 keys (DeepSeek-V3.2's: Hadamard-rotated e4m3, one fp32 scale per token, 132 bytes a token at d_I = 128
  against 256 in bf16; :func:`dsa.ops.quantize.quantize_indexer_keys`) and the new queries are rotated and
  quantized here as the FP8 prefill does: the set of ``indexer_topk(..., precision="fp8")``.
- :func:`decode_sparse_attention`: attention of the new queries over their selected cached rows only.
- :func:`decode_dense_attention`: the dense baseline, attention over every cached row s <= q_pos.

Layouts: q (B, H, T, d_qk); caches k (B, H_kv, S, d_qk), v (B, H_kv, S, d_v) (MLA: one latent head, v a
view of k's first kv_rank dims); indexer q_idx (B, T, H_I, d_I), cached keys k_idx (B, S, d_I),
w (B, T, H_I), FP8 key scales k_scale (B, S); q_pos (B, T) integer, every entry in [0, S). Triton: a split-K
kernel for both attentions (the selected rows, or every row, split over programs and merged by their
log-sum-exp) and an indexer scoring kernel (bf16 or e4m3 operands) followed by the radix top-k
(``dsa.ops.kernels.decode``); inference only, no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import FLOAT_DTYPES, check_tensor, interpret_mode
from .attention import expand_kv, sparse_attention_gather
from .checks import INDEX_DTYPES, check_finite, check_scale, check_selection, values_checked
from .dispatch import resolve_impl
from .quantize import FP8_DTYPE, fp8_operands_dtype, quantize_indexer_queries


def check_decode_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (B, H, T, d_qk), k (B, H_kv, S, d_qk), v (B, H_kv, S, d_v)."""
    check_tensor("q", q, 4, FLOAT_DTYPES)
    check_tensor("k_cache", k, 4, FLOAT_DTYPES)
    check_tensor("v_cache", v, 4, FLOAT_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k_cache shape {tuple(k.shape)} does not fit q shape {tuple(q.shape)} as (B, H_kv, S, d_qk)")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v_cache shape {tuple(v.shape)} does not fit k_cache shape {tuple(k.shape)} "
                         "as (B, H_kv, S, d_v)")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"the query heads ({q.shape[1]}) must be a multiple of the cached K/V heads ({k.shape[1]})")


def check_positions(q_pos: torch.Tensor, b: int, t: int, s: int) -> None:
    """q_pos (B, T) integer, in [0, S): a query must see at least its own cached row."""
    check_tensor("q_pos", q_pos, 2, INDEX_DTYPES)
    if tuple(q_pos.shape) != (b, t):
        raise ValueError(f"q_pos must have shape (B, T)=({b}, {t}), got {tuple(q_pos.shape)}")
    if values_checked() and q_pos.numel() and (int(q_pos.min()) < 0 or int(q_pos.max()) >= s):
        raise ValueError(f"q_pos must hold positions in [0, S={s}) (the cache holds S rows, own row included)")


def visible(q_pos: torch.Tensor, s: int) -> torch.Tensor:
    """(B, T, S) bool: cached row s is visible to the query at q_pos (s <= q_pos)."""
    return torch.arange(s, device=q_pos.device)[None, None, :] <= q_pos[..., None]


# ------------------------------------------------------------------------------------------------ indexer


def decode_indexer_scores_reference(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, q_pos: torch.Tensor
) -> torch.Tensor:
    """sum_j w[b,t,j] ReLU(q_idx[b,t,j] . k_idx[b,s]), -inf where s > q_pos[b,t]. Shapes as
    :func:`decode_indexer_topk` -> (B, T, S) float32."""
    logits = torch.einsum("bqhd,bkd->bqhk", q_idx.float(), k_idx.float()).relu_()
    scores = torch.einsum("bqhk,bqh->bqk", logits, w.float())
    return scores.masked_fill(~visible(q_pos, k_idx.shape[1]), float("-inf"))


def decode_topk_reference(scores: torch.Tensor, top_k: int, q_pos: torch.Tensor) -> torch.Tensor:
    """scores (B, T, S) (-inf past q_pos) -> (B, T, min(top_k, S)) int32 positions by descending score, ties to
    the first positions (a stable sort, as :func:`dsa.ops.topk.select_topk_reference`), -1 past q_pos + 1."""
    k = min(top_k, scores.shape[-1])
    idx = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices[..., :k]
    n_sel = (q_pos.long() + 1).clamp(max=k)
    unused = torch.arange(k, device=scores.device)[None, None, :] >= n_sel[..., None]
    return idx.masked_fill(unused, -1).to(torch.int32)


def decode_indexer_scores_fp8_reference(
    q8: torch.Tensor, k8: torch.Tensor, w8: torch.Tensor, k_scale: torch.Tensor, q_pos: torch.Tensor
) -> torch.Tensor:
    """k_scale[b,s] * sum_j w8[b,t,j] ReLU(q8[b,t,j] . k8[b,s]) from the e4m3 values in fp32 (their products
    are exact), -inf where s > q_pos. q8 (B, T, H_I, d_I), k8 (B, S, d_I) e4m3 values (any dtype holding them),
    w8 (B, T, H_I) the head weights times the query scales, k_scale (B, S) -> (B, T, S) float32."""
    scores = decode_indexer_scores_reference(q8.float(), k8.float(), w8, q_pos)
    return scores * k_scale[:, None, :]  # positive: -inf stays -inf, and it commutes with the ReLU


# the stored forms of FP8 keys: e4m3 itself, or its exact copy where a GPU has no e4m3 (dsa.ops.quantize)
FP8_CACHE_DTYPES = (FP8_DTYPE, torch.bfloat16, torch.float32)


def _check_indexer_cache(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, q_pos: torch.Tensor,
                         k_scale: torch.Tensor | None) -> None:
    check_tensor("q_idx", q_idx, 4, FLOAT_DTYPES)
    if k_scale is None and isinstance(k_idx, torch.Tensor) and k_idx.dtype == FP8_DTYPE:
        raise TypeError("k_idx_cache holds float8_e4m3fn keys: pass their per-token k_scale (B, S)")
    check_tensor("k_idx_cache", k_idx, 3, FLOAT_DTYPES if k_scale is None else FP8_CACHE_DTYPES)
    check_tensor("w", w, 3, FLOAT_DTYPES)
    b, t, h_i, d_i = q_idx.shape
    if k_idx.shape[0] != b or k_idx.shape[2] != d_i:
        raise ValueError(f"k_idx_cache shape {tuple(k_idx.shape)} does not fit q_idx {tuple(q_idx.shape)} "
                         "as (B, S, d_I)")
    if tuple(w.shape) != (b, t, h_i):
        raise ValueError(f"w must have shape (B, T, H_I)=({b}, {t}, {h_i}), got {tuple(w.shape)}")
    check_positions(q_pos, b, t, k_idx.shape[1])
    if k_scale is not None:
        _check_k_scale(k_scale, k_idx, d_i)
    check_finite("q_idx", q_idx)
    check_finite("w", w)
    _check_key_values(k_idx, k_scale is not None)


def _check_k_scale(k_scale: torch.Tensor, k_idx: torch.Tensor, d_i: int) -> None:
    """k_scale (B, S) float32, finite and > 0 (a positive scale commutes with the ReLU); d_I a power of two (the
    queries' Hadamard rotation)."""
    check_tensor("k_scale", k_scale, 2, (torch.float32,))
    if tuple(k_scale.shape) != tuple(k_idx.shape[:2]):
        raise ValueError(f"k_scale must have shape (B, S)={tuple(k_idx.shape[:2])} (one scale per cached key), "
                         f"got {tuple(k_scale.shape)}")
    if d_i & (d_i - 1):
        raise ValueError(f"FP8 keys (k_scale given) need a power-of-two d_I for the Hadamard rotation of q_idx, "
                         f"got {d_i}")
    if values_checked() and k_scale.numel() and not bool((k_scale > 0).all() & torch.isfinite(k_scale).all()):
        raise ValueError("k_scale must hold finite scales > 0 (quantize_indexer_keys makes them)")


def _check_key_values(k_idx: torch.Tensor, fp8: bool) -> None:
    """Finite keys (a NaN score cannot be ranked); for e4m3, which torch cannot test for finiteness, no NaN byte
    (e4m3fn has no inf; NaN is every byte with all seven low bits set). FP8 keys stored as bf16/fp32 must be
    e4m3 values: the e4m3 kernel would round any other value and the reference would not."""
    if k_idx.dtype != FP8_DTYPE:
        check_finite("k_idx_cache", k_idx)
    if not values_checked():
        return
    if k_idx.dtype == FP8_DTYPE and bool(((k_idx.view(torch.uint8) & 0x7F) == 0x7F).any()):
        raise ValueError("k_idx_cache holds NaN values: the top-k cannot rank them")
    if fp8 and k_idx.dtype != FP8_DTYPE and not torch.equal(k_idx.to(FP8_DTYPE).to(k_idx.dtype), k_idx):
        raise ValueError("k_idx_cache must hold e4m3 values when k_scale is given (quantize_indexer_keys' keys, "
                         "or their bf16/fp32 copy)")


def _indexer_impl(impl: str, op: str, q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor,
                  q_pos: torch.Tensor, k_scale: torch.Tensor | None) -> str:
    """The decode indexer op's inputs checked, then the implementation ``impl`` resolves to for them."""
    _check_indexer_cache(q_idx, k_idx, w, q_pos, k_scale)
    tensors = (q_idx, k_idx, w, q_pos) + (() if k_scale is None else (k_scale,))
    return resolve_impl(impl, *tensors, op=op)


def _scores_reference(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, q_pos: torch.Tensor,
                      k_scale: torch.Tensor | None) -> torch.Tensor:
    """The reference scores (B, T, S) float32 of the checked op inputs, FP8 when k_scale is given."""
    if k_scale is None:
        return decode_indexer_scores_reference(q_idx, k_idx, w, q_pos)
    q8, w8 = quantize_indexer_queries(q_idx, w)  # per (token, head), as the FP8 prefill quantizes them
    return decode_indexer_scores_fp8_reference(q8, k_idx, w8, k_scale, q_pos)


def _triton_args(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, k_scale: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(q (B, T, H_I, d_I), k (B, S, d_I), w (B, T, H_I), k_scale (B, S)) as the decode indexer kernel takes them: FP8
    keys with e4m3 operands where the device multiplies them (else their exact bf16 copies), the raw queries in the
    keys' dtype otherwise."""
    if k_scale is None:
        return q_idx, k_idx, w, None
    q8, w8 = quantize_indexer_queries(q_idx, w)
    dt = fp8_operands_dtype(k_idx.device, interpret_mode())
    ks = k_scale if k_scale.stride(-1) == 1 else k_scale.contiguous()  # the cache's prefix: no copy per step
    return q8.to(dt), k_idx.to(dt), w8, ks


@torch.no_grad()
def decode_indexer_topk(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    top_k: int,
    q_pos: torch.Tensor,
    *,
    k_scale: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Each new query's top-k cached positions by the indexer, among s <= q_pos.

    q_idx (B, T, H_I, d_I); k_idx (B, S, d_I) the cached indexer keys; w (B, T, H_I); top_k int >= 1;
    q_pos (B, T) the queries' positions in [0, S). returns (B, T, min(top_k, S)) int32 positions, -1 in unused
    slots (query t keeps min(top_k, q_pos + 1)): the set :func:`dsa.ops.indexer_topk` selects for that position
    in a full forward. Reference: by descending score; Triton: by ascending position (the radix top-k).
    k_scale (B, S) float32: the keys are FP8 (Hadamard-rotated e4m3 values, as float8_e4m3fn or their exact
    bf16/fp32 copy, :func:`dsa.ops.quantize.quantize_indexer_keys`) with these per-token scales; q_idx and w
    stay the raw queries and weights (rotated and quantized here, d_I a power of two): the set of
    ``indexer_topk(..., precision="fp8")``. Without it the keys are read in their stored dtype.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if _indexer_impl(impl, "decode_indexer_topk", q_idx, k_idx, w, q_pos, k_scale) == "reference":
        return decode_topk_reference(_scores_reference(q_idx, k_idx, w, q_pos, k_scale), top_k, q_pos)
    from dsa.ops.kernels.decode import decode_indexer_topk_triton  # noqa: PLC0415

    q, k, wt, ks = _triton_args(q_idx, k_idx, w, k_scale)
    return decode_indexer_topk_triton(q, k, wt, min(top_k, k_idx.shape[1]), q_pos, k_scale=ks)


@torch.no_grad()
def decode_indexer_scores(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, q_pos: torch.Tensor, *,
    k_scale: torch.Tensor | None = None, impl: str = "auto",
) -> torch.Tensor:
    """The scores :func:`decode_indexer_topk` ranks: (B, T, S) float32, -inf where s > q_pos. Shapes and
    ``k_scale`` (FP8 keys) as there."""
    if _indexer_impl(impl, "decode_indexer_scores", q_idx, k_idx, w, q_pos, k_scale) == "reference":
        return _scores_reference(q_idx, k_idx, w, q_pos, k_scale)
    from dsa.ops.kernels.decode import decode_indexer_scores_triton  # noqa: PLC0415

    q, k, wt, ks = _triton_args(q_idx, k_idx, w, k_scale)
    return decode_indexer_scores_triton(q, k, wt, q_pos, k_scale=ks)


# ---------------------------------------------------------------------------------------------- attention


def decode_dense_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float
) -> torch.Tensor:
    """SDPA of each new query over the cached rows s <= q_pos. Shapes as :func:`decode_dense_attention`."""
    h = q.shape[1]
    mask = visible(q_pos, k.shape[2])[:, None]  # (B, 1, T, S)
    return F.scaled_dot_product_attention(q, expand_kv(k, h), expand_kv(v, h), attn_mask=mask, scale=scale)


@torch.no_grad()
def decode_dense_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Dense attention of the new queries over every cached row s <= q_pos (the baseline DSA is measured against).

    q (B, H, T, d_qk); k_cache (B, H_kv, S, d_qk); v_cache (B, H_kv, S, d_v); q_pos (B, T) in [0, S).
    scale: default d_qk^-1/2. returns (B, H, T, d_v) in q's dtype. Reference: SDPA with a mask (PyTorch picks
    the backend); Triton: the split-K flash-decoding kernel over every row.
    """
    check_decode_qkv(q, k_cache, v_cache)
    check_scale(scale)
    check_positions(q_pos, q.shape[0], q.shape[2], k_cache.shape[2])
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if resolve_impl(impl, q, k_cache, v_cache, q_pos, op="decode_dense_attention") == "reference":
        return decode_dense_attention_reference(q, k_cache, v_cache, q_pos, scale)
    from dsa.ops.kernels.decode import decode_attention_triton  # noqa: PLC0415

    return decode_attention_triton(q, k_cache, v_cache, None, q_pos, scale)


@torch.no_grad()
def decode_sparse_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    idx: torch.Tensor,
    *,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Attention of the new queries over their selected cached rows only (shared by every head).

    q (B, H, T, d_qk); k_cache (B, H_kv, S, d_qk); v_cache (B, H_kv, S, d_v); idx (B, T, K) int32/int64
    positions in [0, S), -1 = unused (a position listed twice weighs twice). returns (B, H, T, d_v) in q's
    dtype; a query with no selection gets zeros. Triton: the split-K kernel reading only the K selected rows.
    """
    check_decode_qkv(q, k_cache, v_cache)
    check_scale(scale)
    check_selection(idx, q.shape[0], q.shape[2], k_cache.shape[2])
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if resolve_impl(impl, q, k_cache, v_cache, idx, op="decode_sparse_attention") == "reference":
        return sparse_attention_gather(q, k_cache, v_cache, idx, scale=scale)[0]
    from dsa.ops.kernels.decode import decode_attention_triton  # noqa: PLC0415

    return decode_attention_triton(q, k_cache, v_cache, idx.to(torch.int32), None, scale)
