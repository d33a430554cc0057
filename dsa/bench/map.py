"""The map of where DSA pays: the model's own DSA layer against its dense layer, per layout, indexer and L.

    python -m dsa.bench.map                                   # CPU: tiny layouts, the reference path (seconds)
    python -m dsa.bench.map --layouts mha16 gqa16/2 mqa64 mla128 --seq-lens 2048 4096 8192 16384 32768 65536 \
        131072 --indexers 4x64 64x128 64x128:fp8 --budget-s 400 --out data/bench/map/h200-map.json

For each layout (``LAYOUTS``) and L, one :class:`dsa.layers.DenseAttention` and, per indexer, one
:class:`dsa.layers.DSAAttention` of the same shape (bf16 on CUDA) are timed on hidden states (1, L, d_model),
forward (prefill, no grad) and forward+backward (training: DSA with its indexer KL loss), as
:mod:`dsa.bench.layer` does. The dense layer runs on cuDNN SDPA, flash SDPA and FlexAttention in the same run
(a backend that cannot run a shape, e.g. flash at d_qk != d_v, is recorded with the reason). MLA: DSA runs
the absorbed MQA form (128 heads on one latent K/V, d_qk 576, d_v 512), the dense layer DeepSeek's prefill
form, MLA in MHA mode (128 heads, d_qk 192, d_v 128). Indexer 'HxD' in the layer's dtype, 'HxD:fp8' through
``SparseConfig.indexer_precision`` (an error naming the missing option where the FP8 indexer is absent).

Raw timings only (ms; None with ``*_why`` = 'oom', an error, or 'budget' when --budget-s ran out, larger L
first skipped), one JSON per run with :func:`dsa.provenance.provenance`; ratios, the cost model and the
crossover L are derived in :mod:`dsa.study.map_tables`. Timer: one warm-up call, then the median of up to
``reps`` calls (fewer for slow calls: about 0.3 s of timing per measurement) with CUDA events; perf_counter
on CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dsa import cli
from dsa.bench.layer import _dense_fns, _dsa_fns, parse_indexer
from dsa.checks import resolve_device
from dsa.layers import AttentionConfig, DenseAttention, DSAAttention, SparseConfig
from dsa.layers.config import MLAConfig
from dsa.ops.dispatch import impl_on_device
from dsa.provenance import provenance, run_writing_json

# name -> AttentionConfig keywords (d_model and max_seq_len added per run)
LAYOUTS: dict[str, dict] = {
    "mha16": dict(n_heads=16, n_kv_heads=16, head_dim=128),
    "gqa16/2": dict(n_heads=16, n_kv_heads=2, head_dim=128),
    "mqa64": dict(n_heads=64, n_kv_heads=1, head_dim=128),
    "mla128": dict(n_heads=128, mla=dict(kv_rank=512, rope_dim=64, nope_dim=128, v_dim=128)),
    # CPU smoke layouts
    "tiny-mqa": dict(n_heads=4, n_kv_heads=1, head_dim=16),
    "tiny-mla": dict(n_heads=4, mla=dict(kv_rank=32, rope_dim=8, nope_dim=16, v_dim=16)),
}
DENSE_BACKENDS_CUDA = ("cudnn", "flash", "flex")


def parse_indexer_spec(spec: str) -> tuple[int, int, str]:
    """'64x128' -> (64, 128, 'bf16'); '64x128:fp8' -> (64, 128, 'fp8')."""
    size, _, prec = spec.partition(":")
    prec = prec or "bf16"
    if prec not in ("bf16", "fp8"):
        raise ValueError(f"an indexer precision is bf16 or fp8, got {spec!r}")
    return (*parse_indexer(size), prec)


def fp8_available() -> bool:
    """Whether this tree's SparseConfig has the FP8 indexer option (``indexer_precision``)."""
    return "indexer_precision" in {f.name for f in dataclasses.fields(SparseConfig)}


def layout_shape(name: str) -> dict:
    """The attention shapes of a layout: H, H_kv, d_qk, d_v of the DSA form and of the dense form."""
    spec = LAYOUTS[name]
    h = spec["n_heads"]
    if "mla" in spec:
        m = spec["mla"]
        return dict(H=h, H_kv=1, d_qk=m["kv_rank"] + m["rope_dim"], d_v=m["kv_rank"], dense_H_kv=h,
                    dense_d_qk=m["nope_dim"] + m["rope_dim"], dense_d_v=m["v_dim"])
    d = spec["head_dim"]
    return dict(H=h, H_kv=spec["n_kv_heads"], d_qk=d, d_v=d, dense_H_kv=spec["n_kv_heads"], dense_d_qk=d,
                dense_d_v=d)


@dataclass
class MapConfig:
    """What ``python -m dsa map`` measures (each field is a flag), checked at construction."""

    layouts: list[str] = field(default_factory=lambda: ["tiny-mqa", "tiny-mla"], metadata={
        "help": "attention layouts to time (tiny-*: the CPU smoke layouts)", "choices": tuple(LAYOUTS)})
    seq_lens: list[int] = field(default_factory=lambda: [64, 128], metadata={
        "help": "sequence lengths L", "metavar": "L"})
    indexers: list[str] = field(default_factory=lambda: ["2x16"], metadata={
        "help": "indexer sizes HEADSxDIM[:bf16|fp8], e.g. 4x64 64x128:fp8", "metavar": "HxD[:PREC]"})
    top_k: int = field(default=32, metadata={"help": "keys kept per query, <= every L", "metavar": "K"})
    d_model: int = field(default=64, metadata={"help": "hidden size of the layers"})
    reps: int = field(default=10, metadata={"help": "timed calls per measurement (at most)"})
    budget_s: float = field(default=0.0, metadata={
        "help": "seconds for the whole run, larger L skipped once spent (0: no limit)", "metavar": "SECONDS"})
    device: str = field(default="auto", metadata={"help": "where to run (cuda must be available)",
                                                  "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "seed of the weights and inputs (>= 0)"})

    def __post_init__(self) -> None:
        for name in self.layouts:
            if name not in LAYOUTS:
                raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
        if not self.seq_lens or any(isinstance(l, bool) or not isinstance(l, int) or l < 1 for l in self.seq_lens):
            raise ValueError(f"seq_lens must be positive ints, got {self.seq_lens}")
        for name in ("top_k", "d_model", "reps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.top_k > min(self.seq_lens):
            raise ValueError(f"top_k ({self.top_k}) must be <= every seq_len (smallest {min(self.seq_lens)})")
        if not self.budget_s >= 0 or self.budget_s == float("inf"):  # NaN fails the comparison
            raise ValueError(f"budget_s must be a finite number >= 0, got {self.budget_s}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for spec in self.indexers:
            if parse_indexer_spec(spec)[2] == "fp8" and not fp8_available():
                raise ValueError(f"indexer {spec!r}: the FP8 indexer is not in this tree (SparseConfig has no "
                                 "indexer_precision option); run the bf16 indexers or merge the FP8 indexer first")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available here")


def time_ms(fn: Callable[[], object], cuda: bool, reps: int, target_ms: float = 300.0) -> float:
    """Median ms of ``fn`` after one warm-up call: up to ``reps`` timed calls, fewer when one call is slow."""
    fn()
    if cuda:
        torch.cuda.synchronize()

    def once() -> float:
        if not cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)

    first = once()
    n = max(0, min(reps, int(target_ms / max(first, 1e-3))) - 1)
    return statistics.median([first] + [once() for _ in range(n)])


def _failure(exc: BaseException) -> str:
    """'oom' for an out-of-memory error (also one wrapped by torch.compile), else the error in a line."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def measure(fn: Callable[[], object], cuda: bool, reps: int) -> tuple[float | None, str | None]:
    """(ms, None), or (None, 'oom' / the error) without stopping the run."""
    try:
        return time_ms(fn, cuda, reps), None
    except Exception as exc:  # a backend that cannot run this shape is recorded, not fatal
        return None, _failure(exc)
    finally:
        if cuda:
            torch.cuda.empty_cache()


def _attention_config(cfg: MapConfig, layout: str, l: int, dense: bool) -> AttentionConfig:
    spec = dict(LAYOUTS[layout])
    if "mla" in spec:
        spec["mla"] = MLAConfig(**spec["mla"], dense_mode="mha" if dense else "mqa")
    return AttentionConfig(d_model=cfg.d_model, max_seq_len=l, **spec)


def _sparse_config(cfg: MapConfig, spec: str) -> SparseConfig:
    hi, di, prec = parse_indexer_spec(spec)
    extra = {"indexer_precision": prec} if fp8_available() else {}
    return SparseConfig(top_k=cfg.top_k, indexer_heads=hi, indexer_dim=di, **extra)


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds if seconds > 0 else None

    def spent(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


def _skipped(names: list[str], why: str) -> dict:
    return {f"{n}_ms": None for n in names} | {f"{n}_why": why for n in names}


def _inputs(cfg: MapConfig, l: int, dev: torch.device, dtype: torch.dtype):
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    x = torch.randn(1, l, cfg.d_model, device=dev, dtype=dtype, generator=g, requires_grad=True)
    return x, torch.randn(1, l, cfg.d_model, device=dev, dtype=dtype, generator=g)


def build_layer(cfg: MapConfig, layout: str, l: int, dev: torch.device, indexer: str | None = None):
    """(layer, x, go): the dense layer (``indexer`` None) or the DSA layer with that indexer at (layout, L), in
    bf16 on CUDA and fp32 on a CPU, weights from cfg.seed; x (1, L, d_model) requiring grad, go its output
    gradient (the same inputs for both layers)."""
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(cfg.seed)
    if indexer is None:
        layer = DenseAttention(_attention_config(cfg, layout, l, dense=True))
    else:
        layer = DSAAttention(_attention_config(cfg, layout, l, dense=False), _sparse_config(cfg, indexer))
    return (layer.to(dev, dtype), *_inputs(cfg, l, dev, dtype))


def dense_timings(cfg: MapConfig, layout: str, l: int, dev: torch.device, budget: _Budget) -> dict:
    """dense_<backend>_{fwd,fwdbwd}_ms of the dense layer at (layout, L)."""
    cuda = dev.type == "cuda"
    backends = DENSE_BACKENDS_CUDA if cuda else ("math",)
    names = [f"dense_{b}_{p}" for b in backends for p in ("fwd", "fwdbwd")]
    if budget.spent():
        return _skipped(names, "budget")
    out: dict = {}
    try:
        dense, x, go = build_layer(cfg, layout, l, dev)
    except torch.cuda.OutOfMemoryError:
        return _skipped(names, "oom")
    for backend in backends:
        try:  # FlexAttention builds its block mask here, outside the timed calls
            fwd, fwdbwd = _dense_fns(dense, backend, x, go, cuda)
        except Exception as exc:  # a compiled block mask's OOM may come back wrapped by dynamo / inductor
            out |= _skipped([f"dense_{backend}_{p}" for p in ("fwd", "fwdbwd")], _failure(exc))
            if cuda:
                torch.cuda.empty_cache()
            continue
        for pass_, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            _time_into(out, f"dense_{backend}_{pass_}", fn, cfg, budget, x)
    return out


def _time_into(out: dict, name: str, fn: Callable[[], object], cfg: MapConfig, budget: _Budget,
               x: torch.Tensor) -> None:
    """out[name_ms] (None once the budget is spent or on failure) and out[name_why] (why not); x's grad reset."""
    ms, why = (None, "budget") if budget.spent() else measure(fn, x.is_cuda, cfg.reps)
    out[f"{name}_ms"] = ms
    if why:
        out[f"{name}_why"] = why
    x.grad = None


def dsa_timings(cfg: MapConfig, layout: str, l: int, indexer: str, dev: torch.device, budget: _Budget) -> dict:
    """dsa_{fwd,fwdbwd}_ms of the DSA layer at (layout, L, indexer)."""
    names = ["dsa_fwd", "dsa_fwdbwd"]
    if budget.spent():
        return _skipped(names, "budget")
    try:
        dsa, x, go = build_layer(cfg, layout, l, dev, indexer)
    except torch.cuda.OutOfMemoryError:
        return _skipped(names, "oom")
    out: dict = {"impl": impl_on_device(dsa.cfg.impl, dev)}
    for name, fn in zip(names, _dsa_fns(dsa, x, go)):
        _time_into(out, name, fn, cfg, budget, x)
    return out


def run(cfg: MapConfig, on_row: Callable[[dict], None] | None = None) -> dict:
    """Every (layout, L, indexer) row; layouts in the order given, L ascending (the budget cuts the largest)."""
    dev = resolve_device(cfg.device)
    res = {"config": asdict(cfg), "rows": [], "provenance": provenance(dev)}
    budget = _Budget(cfg.budget_s)
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    for layout in cfg.layouts:
        for l in sorted(cfg.seq_lens):
            dense = dense_timings(cfg, layout, l, dev, budget)
            for spec in cfg.indexers:
                hi, di, prec = parse_indexer_spec(spec)
                row = {"layout": layout, "L": l, "k": cfg.top_k, "d_model": cfg.d_model, **layout_shape(layout),
                       "H_I": hi, "d_I": di, "indexer_precision": prec, "dtype": dtype, **dense,
                       **dsa_timings(cfg, layout, l, spec, dev, budget)}
                res["rows"].append(row)
                print(_line(row), file=sys.stderr, flush=True)
                if on_row:
                    on_row(res)
    return res


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _line(r: dict) -> str:
    dense = {k[len("dense_"):-len("_ms")]: v for k, v in r.items() if k.startswith("dense_") and k.endswith("_ms")}
    why = sorted({v for k, v in r.items() if k.endswith("_why")})
    return (f"{r['layout']:<8} L={r['L']:<7} idx {r['H_I']}x{r['d_I']} {r['indexer_precision']:<4} "
            f"dsa fwd {_fmt(r.get('dsa_fwd_ms'))} fwdbwd {_fmt(r.get('dsa_fwdbwd_ms'))} ms | dense "
            + " ".join(f"{k} {_fmt(v)}" for k, v in dense.items()) + (f" | {'; '.join(why)}" if why else ""))


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.bench.map") -> int:
    """``python -m dsa map``: time the layouts' dense and DSA layers, one JSON of raw timings."""
    p = cli.config_command_parser(MapConfig, prog, __doc__, "JSON path (default runs/bench-map-<device>.json), "
                                  "rewritten after every row")
    cfg, rest = cli.checked_config(p, MapConfig, argv)
    out = Path(rest["out"] or f"runs/bench-map-{'cuda' if torch.cuda.is_available() else 'cpu'}.json")
    res = run_writing_json(run, cfg, out)
    print(f"wrote {out} ({len(res['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
