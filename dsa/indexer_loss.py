"""Training signals and quality measures for the indexer, against the main attention distribution.

- dense warm-up loss:  mean_t KL( p[t,:]   || softmax(I[t,:])   )
- sparse-stage loss:   mean_t KL( p[t,S_t] || softmax(I[t,S_t]) )
- recall: the share of the dense attention mass that falls on the selected set S_t.

p[t,:] is the main attention distribution summed over heads and L1-normalised per query. It is always
computed without gradient: the indexer learns from these losses only, the main model from the LM loss.
Everything runs in query chunks so memory stays O(chunk * L).
"""

from __future__ import annotations

import torch

from .indexer import indexer_scores
from .sparse_attention import expand_kv
from .topk import Selection


@torch.no_grad()
def dense_attention_target(q: torch.Tensor, k: torch.Tensor, c0: int, c1: int, scale: float | None = None) -> torch.Tensor:
    """Head-summed, L1-normalised causal attention of queries c0..c1-1 over all keys.

    q: (B, H, L, d); k: (B, H_kv, L, d) -> (B, C, L) float32, zero for s > t.
    """
    h, d = q.shape[1], q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    kk = expand_kv(k, h).float()
    s = torch.einsum("bhcd,bhkd->bhck", q[:, :, c0:c1].float(), kk) * scale
    t = torch.arange(c0, c1, device=q.device)[:, None]
    s = s.masked_fill(torch.arange(k.shape[2], device=q.device)[None, :] > t, float("-inf"))
    p = s.softmax(-1).sum(1)
    return p / p.sum(-1, keepdim=True)


@torch.no_grad()
def sparse_attention_target(
    q: torch.Tensor, k: torch.Tensor, sel: Selection, c0: int, c1: int, scale: float | None = None
) -> torch.Tensor:
    """Head-summed, L1-normalised sparse attention over the selected slots of queries c0..c1-1.

    q: (B, H, L, d); k: (B, H_kv, L, d); sel idx/valid (B, L, K) -> (B, C, K) float32, zero at invalid slots.
    Memory O(B * H * C * L): one dense product over the chunk, then a gather. Gathering C*K key rows
    instead moves K*d floats per query with no reuse and was the slowest part of a DSA training step.
    """
    b, h, _, d = q.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    idx = sel.idx[:, c0:c1].clamp(min=0)  # (B, C, K)
    valid = sel.valid[:, c0:c1]
    qc = q[:, :, c0:c1].float().reshape(b, hkv, h // hkv, c1 - c0, d)
    s = torch.einsum("bhgcd,bhkd->bhgck", qc, k.float()) * scale  # (B, H_kv, G, C, L)
    s = s.gather(-1, idx[:, None, None].expand(-1, hkv, h // hkv, -1, -1))  # (B, H_kv, G, C, K)
    s = s.masked_fill(~valid[:, None, None], float("-inf"))
    p = s.softmax(-1).nan_to_num(0.0).sum((1, 2))
    return p / p.sum(-1, keepdim=True).clamp(min=1e-30)


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
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
    chunk: int = 128,
) -> torch.Tensor:
    """Warm-up loss, mean over queries of KL(p[t,:] || softmax(I[t,:])) over s <= t.

    q: (B, H, L, d), k: (B, H_kv, L, d) main attention (no gradient flows to them);
    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) indexer outputs (gradient flows).
    returns a scalar float32 tensor.
    """
    b, _, l, _ = q.shape
    total = q_idx.new_zeros((), dtype=torch.float32)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = dense_attention_target(q, k, c0, c1)
        log_q = indexer_scores(q_idx[:, c0:c1], k_idx, w[:, c0:c1], causal=True, q_start=c0).log_softmax(-1)
        total = total + _kl(p, log_q).sum()
    return total / (b * l)


def _kernel_applies(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, sel: Selection,
                    use_kernel: bool | None) -> bool:
    """Whether the Triton scores-at kernel runs: use_kernel=None picks it for CUDA tensors when Triton is
    there; True asks for it (on CPU it then needs TRITON_INTERPRET=1). It takes all L queries at once (not
    a chunk) and no float64."""
    if use_kernel is False or q_idx.shape[1] != k_idx.shape[1] or torch.float64 in (q_idx.dtype, k_idx.dtype, w.dtype):
        return False
    if use_kernel is None and not q_idx.is_cuda:
        return False
    # imported here, not at module level: importing dsa.kernels imports triton, which reads TRITON_INTERPRET
    # once, and every model import would otherwise fix it before a test or user could set it
    from .kernels import use_triton  # noqa: PLC0415

    return use_triton(q_idx, k_idx, w, sel.idx)


def _scores_at_kernel(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, sel: Selection) -> torch.Tensor:
    """The Triton scores-at kernel on one dtype (autocast hands over bf16 queries and fp32 keys)."""
    from .kernels import indexer_scores_at as kernel  # noqa: PLC0415 (see _kernel_applies)

    dt = torch.promote_types(torch.promote_types(q_idx.dtype, k_idx.dtype), w.dtype)
    return kernel(q_idx.to(dt), k_idx.to(dt), w.to(dt), sel.idx, sel.valid)


def indexer_scores_at(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, sel: Selection, *,
                      use_kernel: bool | None = None) -> torch.Tensor:
    """Indexer scores at the selected positions only: I[t, idx[t, j]], -inf at unused slots.

    q_idx (B, C, H_I, d_I), k_idx (B, L, d_I), w (B, C, H_I), sel (B, C, K) -> (B, C, K) float32;
    differentiable w.r.t. all three inputs. The Triton kernel (``use_kernel``: see :func:`_kernel_applies`)
    when C = L; otherwise the scores of the C queries against all L keys, then a gather (memory
    O(B * C * L * H_I)). Gathering the K key rows per query instead makes autograd scatter them back with a
    sorting index_put: 20-75% of a DSA step on an H100 (data/bench/step-profile/before-kl-fix/).
    """
    if _kernel_applies(q_idx, k_idx, w, sel, use_kernel):
        return _scores_at_kernel(q_idx, k_idx, w, sel)
    scores = indexer_scores(q_idx, k_idx, w, causal=False)  # (B, C, L)
    out = scores.gather(-1, sel.idx.clamp(min=0).long())
    return out.masked_fill(~sel.valid, float("-inf"))


def sparse_indexer_kl(
    q: torch.Tensor,
    k: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    w: torch.Tensor,
    sel: Selection,
    *,
    chunk: int = 128,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """Sparse-stage loss, mean over queries of KL(p[t,S_t] || softmax(I[t,S_t])).

    Shapes as :func:`dense_indexer_kl`, plus sel (B, L, K). Returns a scalar float32 tensor.
    use_kernel: the Triton scores-at kernel (None: on CUDA when Triton is there; True: also on CPU under
    TRITON_INTERPRET=1; False: the reference).
    """
    b, _, l, _ = q.shape
    total = q_idx.new_zeros((), dtype=torch.float32)
    # the kernel scores every query at once in O(L * K) memory; the reference goes chunk by chunk
    log_q_all = None
    if _kernel_applies(q_idx, k_idx, w, sel, use_kernel):
        log_q_all = _scores_at_kernel(q_idx, k_idx, w, sel).log_softmax(-1)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        sub = Selection(sel.idx[:, c0:c1], sel.valid[:, c0:c1])
        p = sparse_attention_target(q, k, sel, c0, c1)
        if log_q_all is not None:
            log_q = log_q_all[:, c0:c1]
        else:
            log_q = indexer_scores_at(q_idx[:, c0:c1], k_idx, w[:, c0:c1], sub, use_kernel=False).log_softmax(-1)
        total = total + _kl(p, log_q).sum()
    return total / (b * l)


@torch.no_grad()
def indexer_recall(q: torch.Tensor, k: torch.Tensor, sel: Selection, *, chunk: int = 128) -> dict[str, float]:
    """Share of the dense attention mass (head-summed, normalised) on the selected tokens.

    q: (B, H, L, d), k: (B, H_kv, L, d), sel (B, L, K). Returns
    ``recall``: mean over queries that had to drop something (more past tokens than selected), the
    study's measure of indexer quality; ``recall_all``: mean over every query (trivial ones count as 1);
    ``n_nontrivial``: how many queries the first mean is over.
    """
    b, _, l, _ = q.shape
    mass_sum, n_nt, all_sum = 0.0, 0, 0.0
    t_all = torch.arange(l, device=q.device)
    for c0 in range(0, l, chunk):
        c1 = min(c0 + chunk, l)
        p = dense_attention_target(q, k, c0, c1)
        idx = sel.idx[:, c0:c1]
        mass = (p.gather(-1, idx.clamp(min=0)) * sel.valid[:, c0:c1]).sum(-1)  # (B, C)
        nontrivial = sel.valid[:, c0:c1].sum(-1) < (t_all[c0:c1] + 1)[None, :]
        mass_sum += float(mass[nontrivial].sum())
        n_nt += int(nontrivial.sum())
        all_sum += float(mass.sum())
    return {
        "recall": mass_sum / n_nt if n_nt else 1.0,
        "recall_all": all_sum / (b * l),
        "n_nontrivial": n_nt,
    }
