"""Decode benchmark: one generated token's attention per layer, DSA against dense decode over the whole cache,
in one process, against the context length; and a whole request (prefill of the prompt + generated tokens).

    python -m dsa.bench.decode                        # CPU: tiny shapes, the reference ops, seconds
    python -m dsa.bench.decode --layouts mqa mla --contexts 4096 16384 65536 131072 --batches 1 16 64

Layouts (GPU sizes; ``--tiny`` shrinks them for the CPU):
- ``mqa``: 64 query heads x 128 on one K/V head, cache rows k + v = 256 values;
- ``mla``: DeepSeek's MLA in MQA mode, 128 heads on one latent row of 576 (512 latent + 64 RoPE), values its
  first 512 dims: the row is read once for keys and values (FlashMLA's decode layout).
DSA: the indexer (64 x 128 by default) scores every cached key, the radix top-k keeps k = 2048, the split-K
sparse kernel reads the k rows. ``--indexer-dtype``: the cached indexer keys in bf16, or ``fp8`` as DeepSeek-V3.2
caches them (Hadamard-rotated e4m3 + one fp32 scale per token: 132 bytes a token at d_I = 128 against 256; the
step quantizes its new query, :func:`dsa.ops.decode_indexer_topk` with ``k_scale``).

Per (layout, context S, batch B), each timed on the same cache, one new token per sequence at position S-1:
- ``dense``: :func:`dsa.ops.decode_dense_attention` (on CUDA the split-K flash-decoding Triton kernel);
- ``dense_sdpa``: SDPA with the heads as queries over the one K/V head (exact for one token per sequence and
  no mask; PyTorch picks flash / cuDNN for d <= 256, the math backend for MLA's 576);
- ``dsa``: :func:`dsa.ops.decode_indexer_topk` + :func:`dsa.ops.decode_sparse_attention`, and its parts
  ``dsa_indexer_topk`` and ``dsa_sparse`` (on a precomputed selection); ``dsa_indexer_scores``, the indexer's
  scores alone (their difference from ``dsa_indexer_topk`` is the top-k's time); ``dsa_topk`` our top-k alone
  over those scores, ``dsa_topk_split`` the same in two stages (chunks of 4k scores per row first) and
  ``dsa_topk_torch`` ``torch.topk`` over the same (which one decode should run: B rows of S scores give the
  one-stage radix top-k only B programs), ``dsa_topk_torch_exact`` our top-k's contract (lengths, ties to the
  first positions) by torch.topk (``radix_topk.torch_topk_positions``).
Projections are left out (the same for both). On CUDA every step is captured in a CUDA graph and replayed
(launch overhead would hide the bandwidth), with a 128 MiB write between replays to flush L2 (as the other
60 layers of a real model would), its own time subtracted. ``*_ms``: median per step; ``tokens_per_s``:
B / step time (one layer); ``bytes``: modelled HBM reads per step (dense: B·S rows; DSA: B·(S indexer keys
(with FP8 their scales too, at the bytes the cache holds them in) + the fp32 score round trip + k rows));
``gbps``: bytes / time, ``hbm_frac``: of the copy bandwidth measured in the same run (``hbm_gbps``). Raw
timings only: the ratios are derived on read (``dsa.study.inference``).

Request rows: prefill of an L-token prompt (dense: causal SDPA, MLA in its MHA form 128 x 192/128 as
DeepSeek prefills; DSA: indexer top-k + sparse attention at the MQA shape) + ``gen_tokens`` decode steps
from position L (the graph advances the positions itself). Results: JSON with ``dsa.provenance`` under
``runs/bench/decode/`` unless ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dsa import cli, ops
from dsa.checks import check_out_file
from dsa.ops.dispatch import impl_on_device
from dsa.ops.quantize import fp8_cache_dtype, indexer_key_bytes, quantize_indexer_keys
from dsa.provenance import provenance, run_writing_json

DEFAULT_OUT_DIR = Path("runs/bench/decode")
INDEXER_DTYPES = ("bf16", "fp8")  # the cached indexer keys: the model's dtype, or e4m3 + a per-token fp32 scale


@dataclass(frozen=True)
class Layout:
    name: str
    heads: int
    d_qk: int
    d_v: int
    latent: bool  # MLA: values are the first d_v dims of the key row (one cached row)
    prefill_mha: tuple[int, int, int] | None = None  # MLA's dense prefill form: heads, d_qk, d_v

    @property
    def row_values(self) -> int:
        """Values cached per token (one K/V head)."""
        return self.d_qk if self.latent else self.d_qk + self.d_v


LAYOUTS = {
    "mqa": Layout("mqa", 64, 128, 128, False),
    "mla": Layout("mla", 128, 576, 512, True, (128, 192, 128)),
}
TINY_LAYOUTS = {
    "mqa": Layout("mqa", 4, 16, 16, False),
    "mla": Layout("mla", 4, 24, 16, True, (4, 12, 8)),
}


@dataclass
class DecodeBenchConfig:
    layouts: list[str] = field(default_factory=lambda: ["mqa", "mla"])
    contexts: list[int] = field(default_factory=lambda: [64, 160])
    batches: list[int] = field(default_factory=lambda: [1, 2])
    top_k: int = 16
    indexer: str = "4x16"  # heads x dim
    indexer_dtype: str = "bf16"
    request_contexts: list[int] = field(default_factory=lambda: [64])
    request_batch: int = 1
    gen_tokens: int = 4
    tiny: bool = True  # the CPU layouts
    device: str = "auto"
    cuda_graphs: bool = True
    flush_l2: bool = True
    max_cache_gib: float = 40.0  # skip a (layout, batch) whose caches would pass this
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "request_batch", "gen_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("contexts", "batches"):
            v = getattr(self, name)
            if not v or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {v!r}")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in self.request_contexts):
            raise ValueError(f"request_contexts must be positive ints, got {self.request_contexts!r}")
        bad = [x for x in self.layouts if x not in LAYOUTS]
        if not self.layouts or bad:
            raise ValueError(f"layouts must be some of {sorted(LAYOUTS)}, got {self.layouts!r}")
        if self.indexer_dtype not in INDEXER_DTYPES:
            raise ValueError(f"indexer_dtype must be one of {INDEXER_DTYPES}, got {self.indexer_dtype!r}")
        d_i = parse_indexer(self.indexer)[1]
        if self.indexer_dtype == "fp8" and d_i & (d_i - 1):
            raise ValueError(f"indexer_dtype 'fp8' needs a power-of-two indexer dim (the Hadamard rotation), "
                             f"got {self.indexer}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available here")
        if not self.max_cache_gib > 0:
            raise ValueError(f"max_cache_gib must be > 0, got {self.max_cache_gib}")
        if self.top_k > min(self.contexts):
            raise ValueError(f"top_k ({self.top_k}) must be <= every context (smallest {min(self.contexts)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")


def parse_indexer(spec: str) -> tuple[int, int]:
    """'64x128' -> (64, 128): indexer heads x head size."""
    parts = str(spec).lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"indexer is 'HEADSxDIM', e.g. 64x128, got {spec!r}")
    return int(parts[0]), int(parts[1])


# ------------------------------------------------------------------------------------------------- timing


class Timer:
    """Median ms per call of a step: CUDA graph replays (or eager launches) between events, L2 flushed between
    calls and the flush's own time subtracted; on CPU a perf_counter median."""

    def __init__(self, dev: torch.device, graphs: bool, flush_l2: bool) -> None:
        self.cuda = dev.type == "cuda"
        self.graphs = graphs and self.cuda
        self.flush = torch.empty(32 * 2**20, dtype=torch.float32, device=dev) if self.cuda and flush_l2 else None
        self.flush_ms = self._loop(self._flush, 20) if self.flush is not None else 0.0

    def _flush(self) -> None:
        if self.flush is not None:
            self.flush.zero_()

    def _loop(self, fn: Callable[[], object], n: int, rounds: int = 5) -> float:
        times = []
        for _ in range(rounds):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(n):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / n)
        return statistics.median(times)

    def capture(self, fn: Callable[[], object]) -> tuple[Callable[[], object], str | None]:
        """The step to time: a graph replay, or fn itself (CPU, graphs off, or a capture that failed: why)."""
        fn()  # compiles the kernels, allocates
        if not self.graphs:
            return fn, None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            return g.replay, None
        except Exception as exc:  # recorded; the eager step is timed instead
            torch.cuda.synchronize()
            return fn, f"{type(exc).__name__}: {str(exc)[:160]}"

    def time(self, step: Callable[[], object], budget_ms: float = 100.0) -> float:
        """Median ms of ``step`` over 3 rounds of about ``budget_ms / 3`` of calls each on CUDA (2 to 20 calls)."""
        if not self.cuda:
            ts = []
            for _ in range(7):  # a shared CPU is noisy: the median of a few calls
                t0 = time.perf_counter()
                step()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)

        def flushed() -> None:
            self._flush()
            step()

        once = self._loop(flushed, 1, rounds=1)
        n = max(2, min(20, int(budget_ms / 3 / max(once, 1e-3))))
        return max(self._loop(flushed, n, rounds=3) - self.flush_ms, 1e-6)


def measure(timer: Timer, fn: Callable[[], object]) -> dict:
    """{'ms', 'graph'} or {'error'}: a shape that cannot run (memory, resources) is recorded, not fatal."""
    try:
        step, why = timer.capture(fn)
        out = {"ms": timer.time(step), "graph": timer.graphs and why is None}
        if why:
            out["graph_error"] = why
        return out
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "oom"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def hbm_bandwidth(dev: torch.device) -> float | None:
    """GB/s of a 1 GiB device-to-device copy (read + write), the roofline's ceiling; None on CPU."""
    if dev.type != "cuda":
        return None
    x = torch.empty(2**28, dtype=torch.float32, device=dev)
    y = torch.empty_like(x)
    t = Timer(dev, graphs=False, flush_l2=False)
    ms = t._loop(lambda: y.copy_(x), 10)
    return 2 * x.numel() * 4 / ms / 1e6


# ------------------------------------------------------------------------------------------------ bytes


def decode_bytes(lay: Layout, s: int, b: int, k: int, d_i: int, idx_bytes: int = 2, val_bytes: int = 2,
                 scale_bytes: int = 0) -> dict:
    """Modelled HBM reads per decode step at context s: dense reads every cached row; DSA reads every indexer
    key (d_i values of idx_bytes, and scale_bytes of its scale: 4 for FP8 keys), writes and reads one fp32
    score per key (the top-k's input) and reads k rows; the scores alone read the keys and write the scores;
    a top-k alone reads the scores once."""
    row = lay.row_values * val_bytes
    idx = s * (d_i * idx_bytes + scale_bytes + 8)
    return {"dense": b * s * row, "dsa": b * (idx + min(k, s) * row), "dsa_indexer_topk": b * idx,
            "dsa_indexer_scores": b * s * (d_i * idx_bytes + scale_bytes + 4), "dsa_sparse": b * min(k, s) * row,
            "dsa_topk": b * s * 4, "dsa_topk_split": b * s * 4, "dsa_topk_torch": b * s * 4,
            "dsa_topk_torch_exact": b * s * 4}


# ------------------------------------------------------------------------------------------------- steps


@dataclass
class Inputs:
    q: torch.Tensor  # (B, H, 1, d_qk)
    k: torch.Tensor  # (B, 1, S, d_qk)
    v: torch.Tensor  # (B, 1, S, d_v): a view of k for MLA
    qi: torch.Tensor  # (B, 1, H_I, d_I)
    ki: torch.Tensor  # (B, S, d_I): e4m3 values (or their bf16 copy) when ks is set
    w: torch.Tensor  # (B, 1, H_I)
    pos: torch.Tensor  # (B, 1)
    ks: torch.Tensor | None = None  # (B, S) fp32: the FP8 keys' scales

    def indexer_bytes(self) -> tuple[int, int]:
        """(bytes per cached indexer value, bytes of its per-token scale) as the cache holds them."""
        return self.ki.element_size(), 0 if self.ks is None else self.ks.element_size()


def _caches(lay: Layout, b: int, s_max: int, d_i: int, dev: torch.device, dtype: torch.dtype, gen: torch.Generator,
            fp8: bool = False) -> tuple[torch.Tensor, ...]:
    """Random caches for the longest context (shorter contexts read a prefix): k (B, 1, S, d_qk), v (B, 1, S, d_v),
    indexer keys (B, S, d_I), and with ``fp8`` their per-token scales (B, S) (the keys then quantized as an
    FP8 model's cache holds them)."""
    k = torch.randn(b, 1, s_max, lay.d_qk, device=dev, dtype=dtype, generator=gen)
    v = k[..., : lay.d_v] if lay.latent else torch.randn(b, 1, s_max, lay.d_v, device=dev, dtype=dtype, generator=gen)
    ki = torch.randn(b, s_max, d_i, device=dev, dtype=dtype, generator=gen)
    if not fp8:
        return k, v, ki
    k8, ks = quantize_indexer_keys(ki)
    return k, v, k8.to(fp8_cache_dtype(dev)), ks


def _inputs(lay, caches, s, h_i, d_i, dev, dtype, gen) -> Inputs:
    k, v, ki, *ks = (c[:, :, :s] if c.ndim == 4 else c[:, :s] for c in caches)
    b = k.shape[0]
    return Inputs(torch.randn(b, lay.heads, 1, lay.d_qk, device=dev, dtype=dtype, generator=gen) * lay.d_qk**-0.25,
                  k, v, torch.randn(b, 1, h_i, d_i, device=dev, dtype=dtype, generator=gen), ki,
                  torch.rand(b, 1, h_i, device=dev, dtype=dtype, generator=gen),
                  torch.full((b, 1), s - 1, dtype=torch.long, device=dev), ks[0] if ks else None)


def step_fns(x: Inputs, top_k: int, scale: float) -> dict[str, Callable[[], object]]:
    """The decode steps timed per row (one new token per sequence); FP8 keys (x.ks set) include the
    quantization of the new query in the indexer's step."""
    b, h = x.q.shape[:2]
    idx = ops.decode_indexer_topk(x.qi, x.ki, x.w, top_k, x.pos, k_scale=x.ks)
    scores = ops.decode_indexer_scores(x.qi, x.ki, x.w, x.pos, k_scale=x.ks).view(b, -1)  # (B, S): T = 1
    lengths = (x.pos[:, 0] + 1).clamp(max=scores.shape[1])
    k_sel = min(top_k, scores.shape[1])

    def dense():
        return ops.decode_dense_attention(x.q, x.k, x.v, x.pos, scale=scale)

    def dense_sdpa():  # heads as the query length over the one K/V head: exact for one token, no mask
        return F.scaled_dot_product_attention(x.q.view(b, 1, h, -1), x.k, x.v, scale=scale)

    def dsa():
        sel = ops.decode_indexer_topk(x.qi, x.ki, x.w, top_k, x.pos, k_scale=x.ks)
        return ops.decode_sparse_attention(x.q, x.k, x.v, sel, scale=scale)

    def dsa_indexer_topk():
        return ops.decode_indexer_topk(x.qi, x.ki, x.w, top_k, x.pos, k_scale=x.ks)

    def dsa_indexer_scores():  # the scores alone: with the above, the top-k's share of the indexer step
        return ops.decode_indexer_scores(x.qi, x.ki, x.w, x.pos, k_scale=x.ks)

    def dsa_sparse():
        return ops.decode_sparse_attention(x.q, x.k, x.v, idx, scale=scale)

    def dsa_topk():  # our top-k alone over the step's scores: one program per row, B rows at decode
        return ops.topk_positions(scores, k_sel, lengths, out_dtype=torch.int32)

    def dsa_topk_split():  # ours in two stages: each row's chunks of 4k scores first, then their candidates
        return ops.topk_positions(scores, k_sel, lengths, out_dtype=torch.int32, chunk=4 * k_sel)

    def dsa_topk_torch():  # torch.topk over the same scores (every row is its full length here): a baseline
        return torch.topk(scores, k_sel, dim=-1, sorted=False).indices.sort(-1).values

    def dsa_topk_torch_exact():  # our contract by torch.topk (ties: the first positions; lengths)
        from dsa.ops.kernels.radix_topk import torch_topk_positions  # noqa: PLC0415

        return torch_topk_positions(scores, k_sel, lengths)

    return {"dense": dense, "dense_sdpa": dense_sdpa, "dsa": dsa, "dsa_indexer_topk": dsa_indexer_topk,
            "dsa_indexer_scores": dsa_indexer_scores, "dsa_sparse": dsa_sparse, "dsa_topk": dsa_topk,
            "dsa_topk_split": dsa_topk_split, "dsa_topk_torch": dsa_topk_torch,
            "dsa_topk_torch_exact": dsa_topk_torch_exact}


def bench_decode_row(cfg: DecodeBenchConfig, lay: Layout, caches, s: int, timer: Timer, hbm: float | None,
                     dev: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    h_i, d_i = parse_indexer(cfg.indexer)
    x = _inputs(lay, caches, s, h_i, d_i, dev, dtype, gen)
    b = x.q.shape[0]
    idx_bytes, scale_bytes = x.indexer_bytes()
    row = {"kind": "decode", "layout": lay.name, "context": s, "batch": b, "top_k": cfg.top_k,
           "indexer": cfg.indexer, "indexer_dtype": cfg.indexer_dtype, "heads": lay.heads, "d_qk": lay.d_qk,
           "d_v": lay.d_v, "impl": impl_on_device("auto", dev), "indexer_value_bytes": idx_bytes,
           "indexer_scale_bytes": scale_bytes}
    nbytes = decode_bytes(lay, s, b, cfg.top_k, d_i, idx_bytes=idx_bytes, scale_bytes=scale_bytes)
    for name, fn in step_fns(x, cfg.top_k, lay.d_qk**-0.5).items():
        m = measure(timer, fn)
        if "error" in m:
            row[f"{name}_error"] = m["error"]
            continue
        row[f"{name}_ms"] = m["ms"]
        row[f"{name}_graph"] = m["graph"]
        if m.get("graph_error"):
            row[f"{name}_graph_error"] = m["graph_error"]
        row[f"{name}_tokens_per_s"] = b / (m["ms"] / 1e3)
        key = "dense" if name.startswith("dense") else name
        row[f"{name}_bytes"] = nbytes[key]
        row[f"{name}_gbps"] = nbytes[key] / m["ms"] / 1e6
        if hbm:
            row[f"{name}_hbm_frac"] = row[f"{name}_gbps"] / hbm
    return row


# ------------------------------------------------------------------------------------------------ request


def _prefill_fns(lay: Layout, cfg: DecodeBenchConfig, l: int, b: int, dev, dtype, gen) -> dict[str, Callable]:
    """One layer's prefill of an l-token prompt: dense causal SDPA (MLA in its MHA form) and DSA."""
    h_i, d_i = parse_indexer(cfg.indexer)
    hd, dqk, dv = lay.prefill_mha or (lay.heads, lay.d_qk, lay.d_v)

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=dtype, generator=gen)

    qd, kd, vd = rnd(b, hd, l, dqk), rnd(b, 1 if lay.prefill_mha is None else hd, l, dqk), None
    vd = rnd(*kd.shape[:3], dv)
    q, k = rnd(b, lay.heads, l, lay.d_qk), rnd(b, 1, l, lay.d_qk)
    v = k[..., : lay.d_v] if lay.latent else rnd(b, 1, l, lay.d_v)
    qi, ki, w = rnd(b, l, h_i, d_i), rnd(b, l, d_i), torch.rand(b, l, h_i, device=dev, dtype=dtype, generator=gen)
    top_k = min(cfg.top_k, l)

    def dense():
        return ops.dense_attention(qd, kd, vd)

    def dsa():  # FP8: the prefill quantizes the prompt's indexer queries and keys itself
        sel = ops.indexer_topk(qi, ki, w, top_k, precision=cfg.indexer_dtype)
        return ops.sparse_attention(q, k, v, sel)

    return {"dense": dense, "dsa": dsa}


def bench_request(cfg: DecodeBenchConfig, lay: Layout, l: int, timer: Timer, dev, dtype, gen) -> dict:
    """Prefill of an l-token prompt + gen_tokens decode steps (positions l .. l + gen - 1), one layer."""
    b, n = cfg.request_batch, cfg.gen_tokens
    h_i, d_i = parse_indexer(cfg.indexer)
    row = {"kind": "request", "layout": lay.name, "prompt": l, "gen_tokens": n, "batch": b, "top_k": cfg.top_k,
           "indexer": cfg.indexer, "indexer_dtype": cfg.indexer_dtype}
    for name, fn in _prefill_fns(lay, cfg, l, b, dev, dtype, gen).items():
        m = measure(timer, fn)
        row[f"prefill_{name}_ms" if "ms" in m else f"prefill_{name}_error"] = m.get("ms", m.get("error"))
    caches = _caches(lay, b, l + n, d_i, dev, dtype, gen, fp8=cfg.indexer_dtype == "fp8")
    x = _inputs(lay, caches, l + n, h_i, d_i, dev, dtype, gen)
    fns = step_fns(x, cfg.top_k, lay.d_qk**-0.5)
    for name in ("dense", "dsa"):
        def advancing(fn=fns[name]):
            fn()
            x.pos.add_(1)  # the next token's position: the graph replays walk the context

        try:
            x.pos.fill_(l)
            step, why = timer.capture(advancing)
            x.pos.fill_(l)
            t0 = time.perf_counter()
            if timer.cuda:
                a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            for _ in range(n):
                step()
            if timer.cuda:
                e.record()
                e.synchronize()
                ms = a.elapsed_time(e)
            else:
                ms = (time.perf_counter() - t0) * 1e3
            row[f"decode_{name}_ms"] = ms
            row[f"decode_{name}_graph"] = timer.graphs and why is None
        except Exception as exc:
            row[f"decode_{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if row.get(f"prefill_{name}_ms") is not None and row.get(f"decode_{name}_ms") is not None:
            row[f"request_{name}_ms"] = row[f"prefill_{name}_ms"] + row[f"decode_{name}_ms"]
    return row


# -------------------------------------------------------------------------------------------------- run


def _cache_gib(lay: Layout, b: int, s: int, d_i: int, fp8: bool = False) -> float:
    """GiB of the K/V rows (2 bytes a value) and indexer keys (FP8: 1 byte a value + a 4-byte scale)."""
    return b * s * (2 * lay.row_values + indexer_key_bytes(d_i, fp8)) / 2**30


def run(cfg: DecodeBenchConfig, on_row: Callable[[dict], None] | None = None, log: Callable[[str], None] = print
        ) -> dict:
    """Every decode row and request of ``cfg``; the result dict (config, hbm_gbps, rows, provenance).
    On CPU the ops run on one thread (restored after): at tiny shapes the thread pool's wake-ups on a shared
    machine would be all that is timed."""
    threads = torch.get_num_threads()
    if cfg.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(1)
    try:
        return _run(cfg, on_row, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: DecodeBenchConfig, on_row: Callable[[dict], None] | None, log: Callable[[str], None]) -> dict:
    dev = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    layouts = TINY_LAYOUTS if cfg.tiny else LAYOUTS
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    timer = Timer(dev, cfg.cuda_graphs, cfg.flush_l2)
    hbm = hbm_bandwidth(dev)
    res = {"config": asdict(cfg), "hbm_gbps": hbm, "l2_flush_ms": timer.flush_ms, "rows": [],
           "provenance": provenance(dev)}
    log(f"dsa.bench.decode on {res['provenance'].get('device', dev)}: copy bandwidth "
        f"{'n/a' if hbm is None else f'{hbm:.0f} GB/s'}")
    _, d_i = parse_indexer(cfg.indexer)
    fp8 = cfg.indexer_dtype == "fp8"
    for name in cfg.layouts:
        lay = layouts[name]
        for b in cfg.batches:
            fits = [s for s in cfg.contexts if _cache_gib(lay, b, s, d_i, fp8) <= cfg.max_cache_gib]
            for s in sorted(set(cfg.contexts) - set(fits)):
                res["rows"].append({"kind": "decode", "layout": name, "context": s, "batch": b,
                                    "skipped": f"caches over max_cache_gib={cfg.max_cache_gib}"})
            if not fits:
                continue
            caches = _caches(lay, b, max(fits), d_i, dev, dtype, gen, fp8)
            for s in sorted(fits):
                t0 = time.perf_counter()
                row = bench_decode_row(cfg, lay, caches, s, timer, hbm, dev, dtype, gen)
                res["rows"].append(row)
                log(_progress(row, time.perf_counter() - t0))
                if on_row:
                    on_row(res)
            del caches
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for l in cfg.request_contexts:
            row = bench_request(cfg, lay, l, timer, dev, dtype, gen)
            res["rows"].append(row)
            log(f"  request {name} prompt={l} +{cfg.gen_tokens}: dense {row.get('request_dense_ms', '-')} ms, "
                f"dsa {row.get('request_dsa_ms', '-')} ms")
            if on_row:
                on_row(res)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return res


def _progress(row: dict, secs: float) -> str:
    def f(key: str) -> str:
        v = row.get(key)
        return "-" if v is None else f"{v:.4g}"

    ratio = f"{row['dense_ms'] / row['dsa_ms']:.4g}" if row.get("dense_ms") and row.get("dsa_ms") else "-"
    return (f"  {row['layout']} S={row['context']} B={row['batch']}: dense {f('dense_ms')} ms "
            f"(sdpa {f('dense_sdpa_ms')}), dsa {f('dsa_ms')} ms = idx {f('dsa_indexer_topk_ms')} + sparse "
            f"{f('dsa_sparse_ms')}; x{ratio}; dsa {f('dsa_gbps')} GB/s [{secs:.1f} s]")


def default_out(dev_type: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUT_DIR / f"decode-{dev_type}-{stamp}.json"


def build_parser(prog: str | None = "python -m dsa.bench.decode") -> argparse.ArgumentParser:
    """The flags of ``python -m dsa decode-bench``: a default of None is the device's (the help says both)."""
    d = DecodeBenchConfig()
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_option(p)
    p.add_argument("--layouts", nargs="+", default=d.layouts, choices=tuple(LAYOUTS),
                   help="cache layouts to time (default: %(default)s)")
    p.add_argument("--contexts", type=int, nargs="+", default=None, metavar="S",
                   help="cached tokens S (default: 4096 .. 131072 on CUDA, 64 160 on CPU)")
    p.add_argument("--batches", type=int, nargs="+", default=None, metavar="B",
                   help="sequences per step (default: 1 16 64 on CUDA, 1 2 on CPU)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="rows kept per token, <= every context (default: 2048 on CUDA, 16 on CPU)")
    p.add_argument("--indexer", default=None, metavar="HxD",
                   help="indexer HEADSxDIM (default: 64x128 on CUDA, 4x16 on CPU)")
    p.add_argument("--indexer-dtype", default=d.indexer_dtype, choices=INDEXER_DTYPES,
                   help="the cached indexer keys: bf16, or fp8 (e4m3 + a per-token fp32 scale, d_I a power of "
                        "two; default: %(default)s)")
    p.add_argument("--request-contexts", type=int, nargs="*", default=None, metavar="S",
                   help="prompt lengths of whole requests, none for no requests (default: 4096 16384 65536 on "
                        "CUDA, 64 on CPU)")
    p.add_argument("--request-batch", type=int, default=d.request_batch, metavar="B",
                   help="sequences per whole request (default: %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=None, metavar="N",
                   help="tokens generated per request (default: 256 on CUDA, 4 on CPU)")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                   help="the tiny CPU layouts (default: on CPU only)")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"),
                   help="where to run (cuda must be available; default: %(default)s)")
    p.add_argument("--no-graphs", action="store_true", help="time eager launches instead of CUDA graph replays")
    p.add_argument("--no-flush", action="store_true", help="keep L2 warm between steps")
    p.add_argument("--max-cache-gib", type=float, default=d.max_cache_gib, metavar="GIB",
                   help="skip a (layout, batch) whose caches would pass this size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the caches and inputs (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help=f"JSON path (default {DEFAULT_OUT_DIR}/decode-<device>-<time>.json)")
    return p


def config_from_args(a: argparse.Namespace) -> DecodeBenchConfig:
    """The config of the parsed flags, the device's defaults filled in (ValueError on a bad value)."""
    d = DecodeBenchConfig()
    big = torch.cuda.is_available() and a.device != "cpu"
    return DecodeBenchConfig(
        layouts=a.layouts,
        contexts=a.contexts or ([4096, 8192, 16384, 32768, 65536, 131072] if big else d.contexts),
        batches=a.batches or ([1, 16, 64] if big else d.batches),
        top_k=(2048 if big else d.top_k) if a.top_k is None else a.top_k,
        indexer=a.indexer or ("64x128" if big else d.indexer), indexer_dtype=a.indexer_dtype,
        request_contexts=a.request_contexts if a.request_contexts is not None else
        ([4096, 16384, 65536] if big else d.request_contexts),
        request_batch=a.request_batch, gen_tokens=(256 if big else d.gen_tokens) if a.gen_tokens is None else
        a.gen_tokens, tiny=(not big) if a.tiny is None else a.tiny, device=a.device, cuda_graphs=not a.no_graphs,
        flush_l2=not a.no_flush, max_cache_gib=a.max_cache_gib, seed=a.seed)


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.bench.decode") -> int:
    """``python -m dsa decode-bench``: one decode step per layout, context and batch, DSA against dense."""
    p = build_parser(prog)
    a = cli.parse_args(p, argv)
    with cli.usage_errors(p):
        check_out_file("--out", a.out)
        cfg = config_from_args(a)
    big = torch.cuda.is_available() and cfg.device != "cpu"
    out = Path(a.out) if a.out else default_out("cuda" if big else "cpu")
    res = run_writing_json(run, cfg, out, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
