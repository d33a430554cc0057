"""Where the map's layer time goes, per kernel launch: the DSA layer and its dense counterpart at one
(layout, L, indexer), each pass (prefill forward, forward + backward) under ``torch.profiler``.

    python -m dsa.bench.launch_profile                       # CPU: a tiny MLA layout, seconds
    python -m dsa.bench.launch_profile --layout mla128 --seq-len 131072 --indexer 64x128:fp8 --top-k 2048 \\
        --d-model 2048 --out runs/profile-mla128-128k.json

The layers are built as :mod:`dsa.bench.map` builds them (the same config, weights and inputs), so a profile
explains a row of the map. Per (layer, pass): the profiled calls' kernel time per call (self device time of
the GPU kernels on CUDA, self CPU time of the operators on a CPU), grouped by :data:`CATEGORIES` (sparse
attention forward / backward, indexer scores, the FP8 indexer's rotation and quantization, top-k, indexer loss,
dense attention, matmul, other), and the
top kernels by name. JSON with provenance; the category shares are what a missed target is bounded by.
The categories mean something on CUDA, where each of our kernels has its own name; on a CPU the reference
ops' operators (matrix products shared by the indexer and the attention) do not separate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dsa import cli
from dsa.bench.layer import _dense_fns, _dsa_fns
from dsa.bench.map import DENSE_BACKENDS_CUDA, LAYOUTS, MapConfig, build_layer, parse_indexer_spec
from dsa.bench.step_profile import timed_rows
from dsa.checks import resolve_device
from dsa.provenance import provenance, write_json_atomic

PASSES = ("fwd", "fwdbwd")
# (category, substrings of a kernel / operator name, lower case); the first match names a launch
CATEGORIES = (
    ("sparse attention backward", ("sparse_attn_bwd", "sparse_attn_dkv")),
    ("sparse attention forward", ("sparse_attn_fwd", "dsa::sparse_attention")),
    ("indexer loss (KL)", ("sparse_attn_probs", "idx_at_")),
    ("indexer scores", ("idx_pass", "idx_scores", "indexer")),
    ("indexer FP8 rotation + quantization", ("quantize", "hadamard")),
    ("top-k", ("radix", "bracket", "write_positions", "topk", "sort")),
    ("dense attention", ("flash", "cudnn", "fmha", "sdpa", "scaled_dot_product", "flex", "triton_tem")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "aten::mm", "aten::bmm", "aten::addmm", "aten::matmul")),
)
OTHER = "other (elementwise, copies, reductions)"


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry a kernel or operator name falls in (:data:`OTHER` if none)."""
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), OTHER)


@dataclass
class LaunchProfileConfig:
    """What ``python -m dsa.bench.launch_profile`` profiles (each field is a flag), checked at construction."""

    layout: str = field(default="tiny-mla", metadata={"help": "attention layout, as dsa.bench.map names it",
                                                      "choices": tuple(LAYOUTS)})
    seq_len: int = field(default=64, metadata={"help": "sequence length L, tokens", "metavar": "L"})
    indexer: str = field(default="2x16", metadata={"help": "indexer HEADSxDIM[:bf16|fp8]", "metavar": "HxD[:PREC]"})
    top_k: int = field(default=16, metadata={"help": "keys kept per query, <= seq_len", "metavar": "K"})
    d_model: int = field(default=64, metadata={"help": "hidden size of the layers"})
    dense_backend: str = field(default="cudnn", metadata={
        "help": "dense kernel on CUDA (a CPU runs the math backend)", "choices": DENSE_BACKENDS_CUDA})
    layers: list[str] = field(default_factory=lambda: ["dense", "dsa"], metadata={
        "help": "which layers to profile", "choices": ("dense", "dsa")})
    calls: int = field(default=2, metadata={"help": "profiled calls per (layer, pass), after one warm-up call"})
    top: int = field(default=12, metadata={"help": "kernels listed per (layer, pass)"})
    device: str = field(default="auto", metadata={"help": "where to run", "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "seed of the weights and inputs (>= 0)"})

    def __post_init__(self) -> None:
        for name in ("calls", "top"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.layers or any(x not in ("dense", "dsa") for x in self.layers):
            raise ValueError(f"layers must name dense and/or dsa, got {self.layers}")
        if self.dense_backend not in DENSE_BACKENDS_CUDA:
            raise ValueError(f"dense_backend must be one of {', '.join(DENSE_BACKENDS_CUDA)}, "
                             f"got {self.dense_backend!r}")
        self.map_config()  # layout, L, k, indexer, d_model, device, seed: the map's own checks

    def map_config(self) -> MapConfig:
        return MapConfig(layouts=[self.layout], seq_lens=[self.seq_len], indexers=[self.indexer], top_k=self.top_k,
                         d_model=self.d_model, device=self.device, seed=self.seed)


def profile_calls(fn: Callable[[], object], calls: int, cuda: bool, top: int) -> dict:
    """One warm-up call of ``fn``, then ``calls`` under the profiler -> kernel ms per call in all, per
    category (ms and share) and the ``top`` launches by name (ms per call, launches per call, category)."""
    fn()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    events, key = timed_rows(prof.key_averages(), cuda)
    launches = [{"name": e.key, "category": category(e.key), "ms": getattr(e, key, 0.0) / 1e3 / calls,
                 "launches": e.count / calls} for e in events if getattr(e, key, 0.0) > 0]
    total = sum(r["ms"] for r in launches)
    cats: dict[str, float] = {}
    for r in launches:
        cats[r["category"]] = cats.get(r["category"], 0.0) + r["ms"]
    return {"kernel_ms": total, "time_kind": "self device time of GPU kernels" if cuda else "self CPU time",
            "categories": {c: {"ms": ms, "share": ms / total if total else None}
                           for c, ms in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top": sorted(launches, key=lambda r: -r["ms"])[:top]}


def _layer_fns(cfg: LaunchProfileConfig, layer: str, dev: torch.device) -> tuple[Callable, Callable]:
    """(fwd, fwdbwd) of the dense or the DSA layer, built as the map builds them (weights, inputs)."""
    mod, x, go = build_layer(cfg.map_config(), cfg.layout, cfg.seq_len, dev, cfg.indexer if layer == "dsa" else None)
    if layer == "dense":
        cuda = dev.type == "cuda"
        return _dense_fns(mod, cfg.dense_backend if cuda else "math", x, go, cuda)
    fwd, fwdbwd = _dsa_fns(mod, x, go)
    return fwd, fwdbwd


def run(cfg: LaunchProfileConfig, log: Callable[[str], None] = print) -> dict:
    """Every (layer, pass) profiled -> {'config', 'rows', 'provenance'}; each row as :func:`profile_calls`.
    One layer lives at a time (at L = 128K each holds tens of GiB)."""
    dev = resolve_device(cfg.device)
    h_i, d_i, prec = parse_indexer_spec(cfg.indexer)
    rows = []
    for layer in cfg.layers:
        for pass_, fn in zip(PASSES, _layer_fns(cfg, layer, dev)):
            prof = profile_calls(fn, cfg.calls, dev.type == "cuda", cfg.top)
            rows.append({"layer": layer, "pass": pass_, "layout": cfg.layout, "L": cfg.seq_len, "k": cfg.top_k,
                         "H_I": h_i, "d_I": d_i, "indexer_precision": prec,
                         "dense_backend": cfg.dense_backend if dev.type == "cuda" else "math", **prof})
            log(summary_line(rows[-1]))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"config": asdict(cfg), "rows": rows, "provenance": provenance(dev)}


def summary_line(row: dict) -> str:
    """One line: layer, pass, kernel ms per call and the categories' shares."""
    cats = ", ".join(f"{c} {v['ms']:.2f} ms ({100 * (v['share'] or 0):.0f}%)" for c, v in row["categories"].items())
    return f"{row['layer']:<5} {row['pass']:<6} {row['kernel_ms']:.2f} ms per call: {cats}"


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.bench.launch_profile") -> int:
    """Profile the map's two layers at one point; print a line per (layer, pass), write the JSON."""
    p = cli.config_command_parser(LaunchProfileConfig, prog, __doc__,
                                  "JSON path (default runs/profile-<layout>-<L>.json)")
    cfg, rest = cli.checked_config(p, LaunchProfileConfig, argv)
    out = Path(rest["out"] or f"runs/profile-{cfg.layout.replace('/', '-')}-{cfg.seq_len}.json")
    res = run(cfg)
    print(f"wrote {write_json_atomic(out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
