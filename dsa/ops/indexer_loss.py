"""Training signals and quality measures of the indexer, against the main attention distribution.

- dense warm-up loss:  mean_t KL( p[t,:]   || softmax(I[t,:])   )
- sparse-stage loss:   mean_t KL( p[t,S_t] || softmax(I[t,S_t]) )
- recall: the share of the dense attention mass that falls on the selected set S_t.

p[t,:] is the main attention distribution averaged over heads (L1-normalised per query). It never carries a
gradient: the indexer learns from these losses only, the main model from the LM loss.
"""

from __future__ import annotations

import torch

from ..checks import check_same
from .attention import expand_kv
from .checks import check_indexer, check_qkv, check_scale, check_selection
from .dispatch import resolve_impl
from .indexer import indexer_scores_at, indexer_scores_at_reference, indexer_scores_reference
from .memory import chunk_rows


def _check_loss_inputs(q, k, q_idx, k_idx, w) -> None:
    check_qkv(q, k, k)  # no v here: k stands in for it
    check_indexer(q_idx, k_idx, w)
    check_same("q_idx.shape[1] (L)", q_idx.shape[1], "q.shape[2] (L)", q.shape[2])
    check_same("q_idx.shape[0] (B)", q_idx.shape[0], "q.shape[0] (B)", q.shape[0])


@torch.no_grad()
def dense_attention_target(q: torch.Tensor, k: torch.Tensor, c0: int, c1: int,
                           scale: float | None = None) -> torch.Tensor:
    """Head-averaged causal attention of queries c0..c1-1 over all keys.

    q: (B, H, L, d); k: (B, H_kv, L, d) -> (B, C, L) float32, zero for s > t, rows summing to 1."""
    h, d = q.shape[1], q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    s = torch.einsum("bhcd,bhkd->bhck", q[:, :, c0:c1].float(), expand_kv(k, h).float()) * scale
    t = torch.arange(c0, c1, device=q.device)[:, None]
    s = s.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > t, float("-inf"))
    p = s.softmax(-1).sum(1)
    return p / p.sum(-1, keepdim=True)


@torch.no_grad()
def sparse_attention_target(
    q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, c0: int, c1: int, scale: float | None = None
) -> torch.Tensor:
    """Head-averaged sparse attention over the selected slots of queries c0..c1-1 (the reference).

    q: (B, H, L, d); k: (B, H_kv, L, d); idx (B, L, K) -> (B, C, K) float32, zero at unused slots.
    One dense product over the chunk, then a gather: gathering C*K key rows instead moves K*d floats per
    query with no reuse and was the slowest part of a DSA step on CPU.
    """
    b, h, _, d = q.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    ic = idx[:, c0:c1].long()
    ok = ic >= 0
    qc = q[:, :, c0:c1].float().reshape(b, hkv, h // hkv, c1 - c0, d)
    s = torch.einsum("bhgcd,bhkd->bhgck", qc, k.float()) * scale  # (B, H_kv, G, C, L)
    s = s.gather(-1, ic.clamp(min=0)[:, None, None].expand(-1, hkv, h // hkv, -1, -1))
    s = s.masked_fill(~ok[:, None, None], float("-inf"))
    p = s.softmax(-1).nan_to_num(0.0).sum((1, 2))
    return p / p.sum(-1, keepdim=True).clamp(min=1e-30)


def kl_rows(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_s p log(p / q) per row, with 0 log 0 = 0 (p: (..., S) float32, log_q: (..., S))."""
    pos = p > 0
    terms = torch.where(pos, p * (torch.log(p.clamp(min=1e-30)) - log_q), torch.zeros((), device=p.device))
    return terms.sum(-1)


def dense_indexer_kl(
    q: torch.Tensor,
    k: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    *,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Warm-up loss, mean over queries of KL(p[t,:] || softmax(I[t,:])) over s <= t.

    q: (B, H, L, d), k: (B, H_kv, L, d) main attention (no gradient flows to them);
    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) indexer outputs (gradient flows).
    returns a scalar float32 tensor. Reference only (the dense warm-up is a short stage): 'triton' raises.
    """
    _check_loss_inputs(q, k, q_idx, k_idx, w)
    check_scale(scale)
    resolve_impl(impl, q, k, q_idx, op="dense_indexer_kl", unsupported="no Triton kernel: the warm-up stage "
                 "runs the reference")
    b, h, l, _ = q.shape
    total = q_idx.new_zeros((), dtype=torch.float32)
    chunk = chunk_rows(b * max(h, q_idx.shape[2]) * l, l)  # (B, H, rows, L) float32 products per chunk
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = dense_attention_target(q, k, c0, c1, scale)
        log_q = indexer_scores_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], q_start=c0).log_softmax(-1)
        total = total + kl_rows(p, log_q).sum()
    return total / (b * l)


def sparse_indexer_kl(
    q: torch.Tensor,
    k: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    idx: torch.Tensor,
    *,
    lse: torch.Tensor | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Sparse-stage loss, mean over queries of KL(p[t,S_t] || softmax(I[t,S_t])).

    Shapes as :func:`dense_indexer_kl`, plus idx (B, L, K) and optionally lse (B, H, L) float32, the
    log-sum-exp the sparse attention forward returned (the Triton path reuses it: the target then costs
    one Q.K product over the selected rows, O(L * K) memory). Returns a scalar float32 tensor.
    """
    _check_loss_inputs(q, k, q_idx, k_idx, w)
    check_scale(scale)
    b, h, l, d = q.shape
    check_selection(idx, b, l, l)
    if lse is not None and (tuple(lse.shape) != (b, h, l) or not lse.dtype.is_floating_point):
        raise ValueError(f"lse must be a float tensor of shape (B, H, L)=({b}, {h}, {l}), got {tuple(lse.shape)} "
                         f"{lse.dtype}")
    scale = d**-0.5 if scale is None else float(scale)
    if resolve_impl(impl, q, k, q_idx, k_idx, w, idx, op="sparse_indexer_kl") == "triton":
        return _sparse_kl_triton(q, k, q_idx, k_idx, w, idx, lse, scale)
    total = q_idx.new_zeros((), dtype=torch.float32)
    chunk = chunk_rows(b * h * l, l)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = sparse_attention_target(q, k, idx, c0, c1, scale)
        log_q = indexer_scores_at_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], idx[:, c0:c1]).log_softmax(-1)
        total = total + kl_rows(p, log_q).sum()
    return total / (b * l)


def _sparse_kl_triton(q, k, q_idx, k_idx, w, idx, lse, scale) -> torch.Tensor:
    """The sparse KL on kernels: target from the attention's lse, indexer scores at the selection."""
    from dsa.ops.kernels.registered import sparse_attention_op as attn  # noqa: PLC0415
    from dsa.ops.kernels.registered import sparse_attention_probs_op

    idx32 = idx.to(torch.int32).contiguous()
    q, k = q.detach(), k.detach()
    if lse is None:
        with torch.no_grad():
            lse = attn(q, k, k, idx32, scale)[1]  # v = k: only the lse is used
    p = sparse_attention_probs_op(q, k, idx32, lse.detach().float().contiguous(), scale)
    log_q = indexer_scores_at(q_idx, k_idx, w, idx32, impl="triton").log_softmax(-1)
    return kl_rows(p, log_q).sum() / (q.shape[0] * q.shape[2])


@torch.no_grad()
def indexer_recall(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, *, scale: float | None = None
                   ) -> dict[str, float]:
    """Share of the dense attention mass (head-averaged) on the selected tokens (a measurement: reference only).

    q: (B, H, L, d), k: (B, H_kv, L, d), idx (B, L, K); scale: the attention's softmax scale (default d^-1/2;
    MLA's absorbed form needs its own). Returns ``recall``: mean over queries that had to
    drop something (more past tokens than selected), the study's measure of indexer quality;
    ``recall_all``: mean over every query (trivial ones count as 1); ``n_nontrivial``: how many queries
    the first mean is over.
    """
    check_qkv(q, k, k)
    check_scale(scale)
    b, h, l, _ = q.shape
    check_selection(idx, b, l, l)
    mass_sum, n_nt, all_sum = 0.0, 0, 0.0
    t_all = torch.arange(l, device=q.device)
    chunk = chunk_rows(b * h * l, l)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = dense_attention_target(q, k, c0, c1, scale)
        ic = idx[:, c0:c1].long()
        mass = (p.gather(-1, ic.clamp(min=0)) * (ic >= 0)).sum(-1)  # (B, C)
        nontrivial = (ic >= 0).sum(-1) < (t_all[c0:c1] + 1)[None, :]
        mass_sum += float(mass[nontrivial].sum())
        n_nt += int(nontrivial.sum())
        all_sum += float(mass.sum())
    return {"recall": mass_sum / n_nt if n_nt else 1.0, "recall_all": all_sum / (b * l), "n_nontrivial": n_nt}


@torch.no_grad()
def selection_score_mass(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, idx: torch.Tensor, idx_ref: torch.Tensor
) -> dict[str, float]:
    """How much of a reference selection's indexer mass another selection keeps (the FP8 indexer's check).

    The mass of a set S for query t: sum over s in S of softmax_s(I[t, s <= t]), I the reference (bf16 formula,
    fp32) indexer scores: the indexer's own distribution, the one its KL loss trains. q_idx (B, L, H_I, d_I),
    k_idx (B, L, d_I), w (B, L, H_I), idx and idx_ref (B, L, K) selections (-1 = unused).
    Over the queries with more than K past tokens (the others keep everything): ``mass_ratio`` the mean of
    mass(idx) / mass(idx_ref), ``mass_ratio_min`` its minimum, ``overlap`` the mean share of idx_ref's positions
    that idx selects too; ``n_nontrivial`` the number of such queries (ratios 1.0 when there are none)."""
    check_indexer(q_idx, k_idx, w)
    b, l = q_idx.shape[:2]
    check_selection(idx, b, l, l)
    check_selection(idx_ref, b, l, l, name="idx_ref")
    ratios, overlaps = [], []
    chunk = chunk_rows(b * q_idx.shape[2] * l, l)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = indexer_scores_reference(q_idx[:, c0:c1], k_idx, w[:, c0:c1], q_start=c0).softmax(-1)  # (B, C, L)
        ic, rc = idx[:, c0:c1].long(), idx_ref[:, c0:c1].long()
        mass = (p.gather(-1, ic.clamp(min=0)) * (ic >= 0)).sum(-1)
        mass_ref = (p.gather(-1, rc.clamp(min=0)) * (rc >= 0)).sum(-1)
        in_ref = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, rc.clamp(min=0), rc >= 0)
        both = (in_ref.gather(-1, ic.clamp(min=0)) & (ic >= 0)).sum(-1)
        n_ref = (rc >= 0).sum(-1)
        nontrivial = n_ref < torch.arange(c0 + 1, c1 + 1, device=p.device)[None, :]
        ratios.append((mass / mass_ref.clamp(min=1e-30))[nontrivial])
        overlaps.append((both / n_ref.clamp(min=1))[nontrivial])
    r, o = torch.cat(ratios), torch.cat(overlaps)
    if not r.numel():
        return {"mass_ratio": 1.0, "mass_ratio_min": 1.0, "overlap": 1.0, "n_nontrivial": 0}
    return {"mass_ratio": float(r.mean()), "mass_ratio_min": float(r.min()), "overlap": float(o.float().mean()),
            "n_nontrivial": int(r.numel())}
