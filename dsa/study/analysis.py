"""Analysis helpers for the notebooks: the indexer formula term by term, per-head score contributions,
what each indexer head would select (local vs distant), sparsity statistics, attention probabilities for
plots, FLOP tables, and the model whose layers the notebooks inspect (random init or a checkpoint).

Everything here works on small L (plots, L x L tensors); the chunked paths for long sequences live in
``dsa.ops``. A selection is a (B, L, K) int32 tensor of positions, -1 in unused slots.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dsa.checks import check_int
from dsa.ops import attention_flops, expand_kv, indexer_flops, select_topk, selection_to_mask


# ------------------------------------------------------------------------------- the formula, by hand
def explain_pair(q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, t: int, s: int, b: int = 0) -> dict:
    """I[t,s] = sum_j w[t,j] * ReLU(q_I[t,j] . k_I[s]), term by term, for one (t, s) pair of batch ``b``.

    returns {'q': (H_I, d_I), 'k': (d_I,), 'w': (H_I,), 'dot': (H_I,), 'relu': (H_I,), 'contrib': (H_I,),
             'score': float} (float64 tensors, computed with explicit loops so it is an independent check).
    """
    q = q_idx[b, t].double()
    k = k_idx[b, s].double()
    wt = w[b, t].double()
    h, d = q.shape
    dot = torch.zeros(h, dtype=torch.float64)
    for j in range(h):
        acc = 0.0
        for i in range(d):
            acc += float(q[j, i]) * float(k[i])
        dot[j] = acc
    relu = dot.clamp(min=0.0)
    contrib = wt * relu
    return {"q": q, "k": k, "w": wt, "dot": dot, "relu": relu, "contrib": contrib, "score": float(contrib.sum())}


def head_contributions(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, *, causal: bool = True
) -> torch.Tensor:
    """Per indexer head j: C[b,j,t,s] = w[t,j] * ReLU(q_I[t,j] . k_I[s]); sum over j gives indexer_scores.

    q_idx (B, L, H_I, d_I), k_idx (B, L, d_I), w (B, L, H_I) -> (B, H_I, L, L) float32 (s > t = -inf if causal).
    """
    c = torch.einsum("bthd,bsd->bhts", q_idx.float(), k_idx.float()).relu_() * w.float().permute(0, 2, 1)[..., None]
    if causal:
        l = c.shape[-1]
        fut = torch.ones(l, l, dtype=torch.bool, device=c.device).triu_(1)
        c = c.masked_fill(fut, float("-inf"))
    return c


# ------------------------------------------------------------------------------- attention for plots
def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention probabilities (B, H, L, L) float32 for plots and statistics (small L).

    q (B, H, L, d); k (B, H_kv, L, d); mask (B, L, L) bool: True = may attend (the top-k selection);
    causal: also forbid s > t (False reproduces the seed, whose mask alone decides). Rows with nothing
    allowed are all zero.
    """
    h, d = q.shape[1], q.shape[-1]
    scale = d**-0.5 if scale is None else scale
    s = torch.einsum("bhtd,bhsd->bhts", q.float(), expand_kv(k, h).float()) * scale
    l = s.shape[-1]
    allowed = torch.ones(1, 1, l, l, dtype=torch.bool, device=s.device)
    if causal:
        allowed = allowed & ~torch.ones(l, l, dtype=torch.bool, device=s.device).triu(1)
    if mask is not None:
        allowed = allowed & mask[:, None]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.nan_to_num(p, nan=0.0)


# ------------------------------------------------------------------------------- selection statistics
def selected_distances(sel: torch.Tensor, q_start: int = 0) -> torch.Tensor:
    """sel (B, L, K) -> t - s of every selected (t, s) pair, flattened (int64); negative = a future token."""
    t = torch.arange(q_start, q_start + sel.shape[1], device=sel.device)[None, :, None]
    return (t - sel.long())[sel >= 0]


def per_head_selection(
    q_idx: torch.Tensor, k_idx: torch.Tensor, w: torch.Tensor, top_k: int
) -> list[torch.Tensor]:
    """What each indexer head would select on its own: top-k of its contribution w[t,j]*ReLU(q.k).

    Ties (many zero contributions after the ReLU) are broken towards... whatever torch.topk returns, so
    distances of a head with mostly zero contributions are not meaningful: see ``local_mass_share``.
    """
    c = head_contributions(q_idx, k_idx, w, causal=True)  # (B, H_I, L, L)
    return [select_topk(c[:, j], top_k) for j in range(c.shape[1])]


def local_mass_share(contrib: torch.Tensor, window: int) -> torch.Tensor:
    """Per head, the share of |score| mass within the local window t - window < s <= t, among all s <= t.

    contrib: (B, H_I, L, L) from :func:`head_contributions` (causal). returns (H_I,) in [0, 1];
    compare with :func:`uniform_local_share` (the share a head spreading its mass evenly would get).
    """
    a = torch.nan_to_num(contrib.abs(), posinf=0.0, neginf=0.0)  # -inf (future) -> 0
    l = a.shape[-1]
    t = torch.arange(l, device=a.device)[:, None]
    s = torch.arange(l, device=a.device)[None, :]
    local = (t - s >= 0) & (t - s < window)
    num = (a * local).sum(dim=(0, 2, 3))
    den = a.sum(dim=(0, 2, 3)).clamp(min=1e-30)
    return num / den


def uniform_local_share(seq_len: int, window: int) -> float:
    """Local share of a uniform spread over s <= t, averaged over the same (t, s) weighting: sum of
    min(window, t+1) over sum of (t+1)."""
    num = sum(min(window, t + 1) for t in range(seq_len))
    return num / (seq_len * (seq_len + 1) / 2)


def sparsity_stats(sel: torch.Tensor, seq_len: int, dense_probs: torch.Tensor | None = None, window: int = 16) -> dict:
    """Sparsity statistics of a selection (batch- and query-averaged).

    returns {'keys_per_query', 'fraction_of_past_selected', 'mean_distance', 'local_fraction' (t-s < window),
             'future_selections' (count; must be 0 with the causal guard),
             'dense_mass_recall' (share of the dense attention probability mass, per head and query, that
             falls on selected keys; 1.0 = the sparse attention sees everything the dense one weighs)}.
    """
    counts = (sel >= 0).sum(-1).float()  # (B, L)
    past = torch.arange(1, seq_len + 1, device=counts.device, dtype=torch.float32)[None]
    dist = selected_distances(sel).float()
    out = {
        "keys_per_query": float(counts.mean()),
        "fraction_of_past_selected": float((counts / past).mean()),
        "mean_distance": float(dist.mean()) if dist.numel() else math.nan,
        "local_fraction": float(((dist >= 0) & (dist < window)).float().mean()) if dist.numel() else math.nan,
        "future_selections": int((dist < 0).sum()),
    }
    if dense_probs is not None:
        mask = selection_to_mask(sel, seq_len)  # (B, L, L)
        out["dense_mass_recall"] = float((dense_probs * mask[:, None]).sum(-1).mean())
    return out


def window_selection(batch: int, seq_len: int, top_k: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The sliding-window baseline: each query keeps its ``top_k`` most recent tokens (itself included).
    returns (batch, seq_len, top_k) int32, -1 in unused slots."""
    t = torch.arange(seq_len, device=device)[:, None]
    idx = t - torch.arange(top_k, device=device)[None, :]  # (L, K): t, t-1, ...
    return idx.clamp(min=-1).to(torch.int32).expand(batch, -1, -1).clone()


def layer_attention_fn(model: torch.nn.Module, layer: int, top_k: int, *, leak: bool):
    """The attention of one layer of a DSA ``TransformerLM`` as a function of its input hidden states
    x (B, L, D) -> (B, H, L, d), for the causality probe.

    leak False: the causal path (indexer_topk with the guard, then gather attention over the selected rows).
    leak True:  the seeds' recipe: top-k of unguarded indexer scores turned into a mask, SDPA without
                is_causal (``seed_masked_attention``).
    """
    from dsa.ops import indexer_scores, indexer_topk, seed_masked_attention, sparse_attention  # noqa: PLC0415

    attn = model.layers[layer].attn

    def fn(x: torch.Tensor) -> torch.Tensor:
        l = x.shape[1]
        t = attn.proj(x)
        qi, ki, wi = attn.indexer_outputs(x)
        kk = min(top_k, l)
        if leak:
            sel = select_topk(indexer_scores(qi, ki, wi, causal=False), kk, leak_future=True)
            return seed_masked_attention(t.q, t.k, t.v, selection_to_mask(sel, l), scale=t.scale)
        return sparse_attention(t.q, t.k, t.v, indexer_topk(qi, ki, wi, kk), scale=t.scale, impl="reference")

    return fn


# ------------------------------------------------------------------------------- per-query k
@contextmanager
def k_policy_override(model: torch.nn.Module, policy: str, *, mass: float | None = None,
                      top_k: int | None = None, k_min: int | None = None):
    """Temporarily run a DSA ``TransformerLM`` with another k policy ('fixed', 'mass', 'entropy'), mass
    target, k cap or smallest adaptive k (every layer shares the model's config); restored on exit."""
    cfg = model.cfg
    if policy not in ("fixed", "mass", "entropy"):
        raise ValueError(f"policy must be fixed, mass or entropy, got {policy!r}")
    if top_k is not None and not 1 <= top_k <= cfg.max_seq_len:
        raise ValueError(f"top_k must be in [1, max_seq_len={cfg.max_seq_len}], got {top_k}")
    if k_min is not None and not 1 <= k_min <= (top_k or cfg.top_k):
        raise ValueError(f"k_min must be in [1, top_k={top_k or cfg.top_k}], got {k_min}")
    changes = {"k_policy": policy, "k_mass": cfg.k_mass if mass is None else mass,
               "top_k": cfg.top_k if top_k is None else top_k, "k_min": cfg.k_min if k_min is None else k_min}
    with model.selection_override(**changes):
        yield model


@torch.no_grad()
def chosen_k_counts(model: torch.nn.Module, batches, *, max_batches: int | None = None) -> torch.Tensor:
    """The number of keys each query attends to, per layer of a DSA ``TransformerLM`` (sparse forward with
    its current k policy), over ``batches`` of (x, y) token pairs: (n_layers, N sequences, L) int64."""
    if getattr(model.cfg, "attention", None) != "dsa":
        raise ValueError("chosen_k needs a DSA model (attention='dsa')")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_layers)]
    try:
        for i, (x, _) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            out = model(x.to(dev), sparse=True)
            for li, aux in enumerate(out.aux):
                per_layer[li].append((aux.selection >= 0).sum(-1).cpu())
    finally:
        model.train(was_training)
    if not per_layer[0]:
        raise ValueError("no batches given")
    return torch.stack([torch.cat(p) for p in per_layer])


def chosen_k(model: torch.nn.Module, batches, *, max_batches: int | None = None):
    """:func:`chosen_k_counts` summarised per (layer, query position): a DataFrame with columns layer,
    position, mean_k (over the sequences), min_k, max_k, available (t + 1: the past tokens it could see)."""
    import pandas as pd  # noqa: PLC0415

    counts = chosen_k_counts(model, batches, max_batches=max_batches).float()
    rows = []
    for li, c in enumerate(counts):
        l = c.shape[1]
        rows.append(pd.DataFrame({"layer": li, "position": range(l), "mean_k": c.mean(0).numpy(),
                                  "min_k": c.min(0).values.numpy(), "max_k": c.max(0).values.numpy(),
                                  "available": range(1, l + 1)}))
    return pd.concat(rows, ignore_index=True)


def fixed_mean_k(seq_len: int, top_k: int) -> float:
    """Mean keys per query of a fixed top-k over a causal sequence: mean over t of min(k, t + 1) (the first
    queries have fewer than k past tokens)."""
    if seq_len < 1 or top_k < 1:
        raise ValueError(f"seq_len and top_k must be >= 1, got {seq_len}, {top_k}")
    k = min(top_k, seq_len)
    # sum_{t<k} (t+1) + (L-k) k
    return (k * (k + 1) / 2 + (seq_len - k) * k) / seq_len


def random_recall(seq_len: int, top_k: int) -> float:
    """The indexer recall (``dsa.ops.indexer_recall``'s ``recall``) that a selection of k of the t + 1
    past tokens drawn uniformly at random keeps in expectation, whatever the attention: k / (t + 1) for each
    query, averaged over the queries that must drop tokens (t + 1 > k); 1.0 when none must. The floor an
    untrained indexer is compared with."""
    if seq_len < 1 or top_k < 1:
        raise ValueError(f"seq_len and top_k must be >= 1, got {seq_len}, {top_k}")
    n = range(top_k + 1, seq_len + 1)  # t + 1 for the non-trivial queries
    return sum(top_k / m for m in n) / len(n) if len(n) else 1.0


def config_mean_k(cfg: dict) -> float:
    """Mean keys per query that a run's config implies without looking at the model: dense attends to all
    t + 1 past tokens, (L + 1) / 2 on average; a fixed top-k :func:`fixed_mean_k`; an adaptive policy
    depends on the trained indexer: NaN (measure it with :func:`chosen_k_counts`)."""
    l = int(cfg["seq_len"])
    if cfg.get("attention", "dense") == "dense":
        return (l + 1) / 2
    if cfg.get("k_policy", "fixed") == "fixed":
        return fixed_mean_k(l, int(cfg["top_k"]))
    return float("nan")


# ------------------------------------------------------------------------------- costs
def flops_table(lengths, *, indexer_heads: int, indexer_dim: int, heads: int, head_dim: int, top_k: int):
    """Forward FLOPs (projections excluded) per sequence for each L: indexer (causal L x L), dense causal
    attention, sparse attention over min(k, L) keys. Returns a pandas DataFrame (long format)."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for l in lengths:
        l = int(l)
        rows += [
            {"L": l, "part": "indexer (L² · H_I · d_I)", "flops": indexer_flops(l, indexer_heads, indexer_dim)},
            {"L": l, "part": "dense attention (L² · H · d)", "flops": attention_flops(l, heads, head_dim)},
            {"L": l, "part": f"sparse attention, k={top_k} (L · k · H · d)",
             "flops": attention_flops(l, heads, head_dim, keys_per_query=min(top_k, l))},
        ]
        rows.append({"L": l, "part": "DSA total (indexer + sparse)",
                     "flops": rows[-3]["flops"] + rows[-1]["flops"]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- the model inspected
@dataclass(frozen=True)
class InspectModelConfig:
    """The sizes of the small DSA model the notebooks inspect, for :func:`make_inspect_model` (random init)
    and :func:`train_inspect_model` (trained here) alike. ``max_seq_len``: the longest view the model accepts;
    ``top_k``: keys per query (capped at the sequence length); ``seed``: of the init (and the training)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    indexer_heads: int = 4
    indexer_dim: int = 16
    indexer_rope_dim: int = 8
    max_seq_len: int = 256
    top_k: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "indexer_heads", "indexer_dim", "max_seq_len", "top_k"):
            check_int(name, getattr(self, name), 1)
        check_int("indexer_rope_dim", self.indexer_rope_dim, 0)
        check_int("seed", self.seed, 0)


def _inspect_config(cfg: InspectModelConfig | None, sizes: dict[str, int]) -> InspectModelConfig:
    """``cfg`` (default :class:`InspectModelConfig`) with the sizes given one by one as keywords (the builders'
    older signature) replacing its fields; an unknown keyword is a TypeError naming it."""
    if cfg is not None and not isinstance(cfg, InspectModelConfig):
        raise TypeError(f"cfg must be an InspectModelConfig, got {type(cfg).__name__}")
    unknown = sorted(set(sizes) - set(InspectModelConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown model size argument(s) {', '.join(unknown)}: the fields of InspectModelConfig "
                        f"are {', '.join(InspectModelConfig.__dataclass_fields__)}")
    return replace(cfg or InspectModelConfig(), **sizes)


def train_inspect_model(
    cfg: InspectModelConfig | None = None,
    *,
    steps: int = 120,
    warmup_steps: int = 40,
    seq_len: int = 128,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **sizes: int,
) -> tuple[torch.nn.Module, str, dict]:
    """A small DSA ``TransformerLM`` of sizes ``cfg`` trained here on the Shakespeare corpus, for the notebooks
    to inspect: ``steps`` dense LM steps at ``seq_len`` (the cheap part of DeepSeek's recipe), then
    ``warmup_steps`` indexer-only steps of the KL warm-up, so the indexer has learned to point where dense
    attention looks. (No sparse phase: on a CPU it costs several times a dense step, and the explorer shows the
    indexer's selection next to the dense attention anyway.) RoPE has no learned positions, so the trained
    weights are re-hosted in a model accepting ``cfg.max_seq_len`` tokens: views longer than ``seq_len``
    extrapolate. ``sizes``: fields of :class:`InspectModelConfig` given one by one, replacing ``cfg``'s.

    returns (model in eval mode on ``device``, a label, the training record without the model).
    """
    from dsa.model.lm import TransformerLM  # noqa: PLC0415
    from dsa.train.trainer import TrainConfig, train  # noqa: PLC0415

    size = _inspect_config(cfg, sizes)
    top_k, max_seq_len = size.top_k, size.max_seq_len
    tcfg = TrainConfig(attention="dsa", recipe="deepseek", seq_len=seq_len, top_k=min(top_k, seq_len), steps=steps,
                       dense_steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, d_model=size.d_model,
                       n_layers=size.n_layers, n_heads=size.n_heads, indexer_heads=size.indexer_heads,
                       indexer_dim=size.indexer_dim, indexer_rope_dim=size.indexer_rope_dim,
                       eval_every=max(steps + warmup_steps, 1), eval_batches=1,
                       lr_warmup_steps=min(20, max(steps // 5, 1)), seed=size.seed, device=str(device), out="",
                       progress=progress, name=f"explorer-model-L{seq_len}")
    from .runs import gc_frozen  # noqa: PLC0415

    with gc_frozen():  # train() collects at phase changes: not the notebook's whole heap
        rec = train(tcfg)
    trained = rec.pop("model")
    mc = replace(trained.cfg, max_seq_len=max(max_seq_len, seq_len), top_k=min(top_k, max(max_seq_len, seq_len)))
    model = TransformerLM(mc).to(next(trained.parameters()).device)
    model.load_state_dict(trained.state_dict())
    model.eval()
    fin = rec.get("final", {})
    label = (f"DSA model trained here ({steps} dense LM steps + {warmup_steps} indexer warm-up steps at L={seq_len}, "
             f"val loss {fin.get('val_loss', float('nan')):.2f} nats/token, indexer recall "
             f"{fin.get('recall', float('nan')):.2f})")
    return model, label, rec


def corpus_tokens(batch: int, seq_len: int, *, vocab_size: int = 2048, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len) int64 tokens of the validation plays (the corpus and BPE tokenizer the study trains on),
    consecutive windows from a seeded offset."""
    from dsa.text.corpus import load_corpus  # noqa: PLC0415

    val = load_corpus("shakespeare", tokenizer="bpe", vocab_size=vocab_size).val
    val = torch.as_tensor(val, dtype=torch.long)
    need = batch * seq_len
    if len(val) < need:
        raise ValueError(f"the validation split has {len(val)} tokens, fewer than {need}")
    g = torch.Generator().manual_seed(seed)
    start = int(torch.randint(0, len(val) - need + 1, (1,), generator=g))
    return val[start:start + need].view(batch, seq_len).clone()


def make_inspect_model(
    checkpoint: str = "",
    cfg: InspectModelConfig | None = None,
    *,
    vocab_size: int = 256,
    init_gain: float = 1.0,
    device: str | torch.device = "cpu",
    **sizes: int,
) -> tuple[torch.nn.Module, str]:
    """A DSA ``TransformerLM`` whose layers the notebooks inspect, and a label saying what it is.

    checkpoint "" -> randomly initialised from ``cfg.seed`` with the sizes ``cfg``; otherwise a DSA checkpoint
    as training writes it (``runs/<name>.ckpt.pt``, read by :func:`dsa.train.checkpoints.load_model`; any dict
    with ``model_config`` and ``state_dict`` loads too). The sizes are then ignored (the checkpoint's own
    config wins) except ``max_seq_len``, which may extend the trained context (RoPE). ``sizes``: fields of
    :class:`InspectModelConfig` given one by one, replacing ``cfg``'s.
    init_gain: random model only: multiplies the attention and indexer projections (q, k and the indexer's
    q, k, head weights). The LM's own init (std 0.02) gives near-uniform attention, under which every
    selection of k keys keeps the same share of attention mass; a gain of ~8 makes patterns visible.
    """
    from dsa.model.config import ModelConfig  # noqa: PLC0415
    from dsa.model.lm import TransformerLM  # noqa: PLC0415

    size = _inspect_config(cfg, sizes)
    max_seq_len, seed = size.max_seq_len, size.seed
    if checkpoint:
        from dsa.train.checkpoints import load_checkpoint, model_from_checkpoint  # noqa: PLC0415

        path = Path(checkpoint)
        ck = load_checkpoint(path, arg="checkpoint")
        stored = ck["model_config"]
        if stored.get("attention") != "dsa":
            raise ValueError(f"checkpoint {checkpoint!r} is a {stored.get('attention')!r} model: it has no indexer "
                             "to inspect (train with attention='dsa')")
        model = model_from_checkpoint(ck, max_seq_len=max(max_seq_len, stored["max_seq_len"]), arg="checkpoint")
        label = f"checkpoint {path.name}"
    else:
        mc = ModelConfig(
            vocab_size=vocab_size, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
            max_seq_len=max_seq_len, attention="dsa", top_k=min(size.top_k, max_seq_len),
            indexer_heads=size.indexer_heads, indexer_dim=size.indexer_dim, indexer_rope_dim=size.indexer_rope_dim,
        )
        model = TransformerLM(mc, seed=seed)
        if init_gain != 1.0:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(("proj.wq.weight", "proj.wk.weight", "indexer.wq.weight", "indexer.wk.weight",
                                      "indexer.wh.weight")):
                        p.mul_(init_gain)
        label = f"randomly initialised DSA model (seed {seed}, init gain {init_gain:g})"
    return model.to(device).eval(), label


def structured_tokens(batch: int, seq_len: int, vocab_size: int, *, alphabet: int = 32, seed: int = 0) -> torch.Tensor:
    """(B, L) int64 tokens: random symbols from a small alphabet (so tokens recur and an indexer can find
    earlier copies), with the first quarter repeated in the last quarter (a long-distance match)."""
    g = torch.Generator().manual_seed(seed)
    a = min(alphabet, vocab_size)
    tok = torch.randint(0, a, (batch, seq_len), generator=g)
    q = seq_len // 4
    if q:
        tok[:, seq_len - q :] = tok[:, :q]
    return tok


@torch.no_grad()
def layer_tensors(model: torch.nn.Module, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer: {'q','k','v' (B,H,L,d) after RoPE, 'q_idx' (B,L,H_I,d_I), 'k_idx' (B,L,d_I), 'w' (B,L,H_I)}."""
    out = model(tokens.to(next(model.parameters()).device), keep_tensors=True)
    return [dict(a.tensors) for a in out.aux]


def explorer_views(
    tensors: dict[str, torch.Tensor],
    *,
    seq_len: int,
    top_k: int,
    head: int,
    indexer_head: int,
    causal: bool,
    b: int = 0,
) -> dict[str, Any]:
    """The four matrices the indexer explorer shows, for one layer's tensors and the widget settings.

    indexer_head -1 = the full score (sum over heads); j >= 0 = head j's contribution alone.
    causal False = the seed's leak: scores over all s, top-k without the guard, attention with the mask only.
    returns {'scores', 'selected', 'sparse', 'dense'}: (L, L) float32 CPU tensors (-inf/NaN-free: masked
    entries are NaN so the heatmap leaves them blank), plus 'stats' (a dict).
    """
    l = seq_len
    qi, ki, wi = (tensors[n][b : b + 1, :l] for n in ("q_idx", "k_idx", "w"))
    q, k = tensors["q"][b : b + 1, :, :l], tensors["k"][b : b + 1, :, :l]
    contrib = head_contributions(qi, ki, wi, causal=causal)  # (1, H_I, L, L)
    full = contrib.sum(1)  # (1, L, L): the indexer score
    sel = select_topk(full, min(top_k, l), leak_future=not causal)
    mask = selection_to_mask(sel, l)
    sparse = attention_probs(q, k, mask, causal=causal)[0, head]
    dense = attention_probs(q, k, None, causal=True)
    shown = full[0] if indexer_head < 0 else contrib[0, indexer_head]
    shown = torch.where(torch.isfinite(shown), shown, torch.full_like(shown, float("nan")))
    stats = sparsity_stats(sel, l, dense_probs=dense)
    dense_h = dense[0, head]
    return {
        "scores": shown.cpu(),
        "selected": mask[0].float().cpu(),
        "sparse": sparse.cpu(),
        "dense": dense_h.cpu(),
        "stats": stats,
    }


__all__ = [
    "InspectModelConfig",
    "attention_probs",
    "chosen_k",
    "chosen_k_counts",
    "config_mean_k",
    "corpus_tokens",
    "explain_pair",
    "explorer_views",
    "fixed_mean_k",
    "flops_table",
    "head_contributions",
    "k_policy_override",
    "layer_attention_fn",
    "layer_tensors",
    "local_mass_share",
    "make_inspect_model",
    "per_head_selection",
    "random_recall",
    "selected_distances",
    "sparsity_stats",
    "structured_tokens",
    "train_inspect_model",
    "uniform_local_share",
    "window_selection",
]
