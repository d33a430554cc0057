"""Sparse-attention kernel benchmark at DeepSeek-V3.2's MLA-MQA shape (and the study's other layouts).

    python -m dsa.bench.mla                        # CPU: a tiny MLA-like layout, the reference path (smoke test)
    python -m dsa.bench.mla --seq-lens 8192 32768 65536 --layouts mla128 --dkv atomic inverted headsum \
        --tiles fwd:64:32:8:1 bwd:64:16:8:1 dkv:16:32:8:2 --check --out data/bench/mla/h200-mla.json

One JSON per run with :func:`dsa.provenance.provenance`. Per (layout, L): the forward alone and the backward
alone (the op's backward through autograd minus nothing: ``bwd_ms`` = fwd+bwd - fwd of the same run), once per
dK/dV strategy (``atomic``: fp32 atomics in the dQ kernel; ``inverted``: a key -> queries index, no atomics,
deterministic; ``headsum``: a second kernel sums the G heads of a K/V head before its atomics) and per
forward/backward/headsum-dK/dV tile asked for. On CUDA each row gives the dK/dV atomic bytes per (query, key)
pair by the kernels' docstring (``dkv_atomic_bytes_per_pair``) and the rate they imply over the backward. Inputs: bf16 on CUDA, q (1, H, L, d_qk), one latent
K/V (MLA: v is the first d_v columns of k, as DeepSeek's latent cache), a causal selection by the indexer
top-k (4 x 64 random indexer: scattered rows, no locality to help). With --check, the output and every
gradient at a small L against the fp32 gather reference (relative Frobenius error).

FLOPs (causal pairs counted: P = sum_t min(t+1, k) (query, key) pairs, the same for every head):
forward 2·H·(d_qk + d_v) per pair (S = QKᵀ and O = PV); backward 2·H·(3·d_qk + 2·d_v) per pair (S recomputed,
dP = dO Vᵀ, dV = Pᵀ dO, dK = dSᵀ Q, dQ = dS K). Timer: triton.testing.do_bench median on CUDA.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dsa import cli
from dsa.bench.layer import _measure, attention_pairs
from dsa.provenance import provenance, run_writing_json

# name -> (H, H_kv, d_qk, d_v)
LAYOUTS = {
    "mla128": (128, 1, 576, 512),  # DeepSeek-V3.2: MLA in MQA mode, 128 heads on one latent K/V
    "mla64": (64, 1, 576, 512),
    "mla16": (16, 1, 576, 512),
    "mqa64": (64, 1, 128, 128),
    "gqa16/2": (16, 2, 128, 128),
    "mha16": (16, 16, 128, 128),
    "tiny": (20, 1, 72, 40),  # the CPU smoke layout: two head blocks of 16, a score dim with a tail
}
DKV_MODES = ("atomic", "inverted", "headsum")  # the kernels' DKV_MODES less "auto" (not imported: triton)
PROBS_KERNELS = ("slots", "query")  # dsa.ops.kernels.sparse_attention.PROBS_KERNELS (not imported: triton)


def fwd_flops_per_pair(h: int, d_qk: int, d_v: int) -> int:
    """Forward FLOPs per causal (query, key) pair: S = QKᵀ (2·H·d_qk) and O = PV (2·H·d_v)."""
    return 2 * h * (d_qk + d_v)


def bwd_flops_per_pair(h: int, d_qk: int, d_v: int) -> int:
    """Backward FLOPs per pair: S recomputed and dK, dQ (3 products over d_qk), dP and dV (2 over d_v)."""
    return 2 * h * (3 * d_qk + 2 * d_v)


def dkv_atomic_bytes_per_pair(dkv: str, g: int, d_qk: int, d_v: int, block_h: int, v_view_of_k: bool) -> int:
    """fp32 atomic bytes that the backward adds to dK/dV per (query, key) pair (the kernels' docstring):
    'atomic' one row of d_qk + d_v per head block of block_h heads, 'headsum' one per K/V head (d_qk wide
    when v is a view of k: dV folded into dK), 'inverted' none."""
    if dkv == "inverted":
        return 0
    if dkv == "headsum":
        return 4 * (d_qk if v_view_of_k else d_qk + d_v)
    return 4 * -(-g // block_h) * (d_qk + d_v)


def parse_tile(spec: str) -> dict:
    """'fwd:64:32:8:1' -> {'pass': 'fwd', 'block_h': 64, 'block_k': 32, 'num_warps': 8, 'num_stages': 1}
    (a 0 keeps the launch code's default for that knob). Passes: fwd (forward), bwd (the dQ kernel, with
    atomic dK/dV in dkv 'atomic'), dkv (the headsum dK/dV kernel: rows of dkv 'headsum' only)."""
    parts = spec.split(":")
    if len(parts) != 5 or parts[0] not in ("fwd", "bwd", "dkv") or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"a tile is 'fwd|bwd|dkv:BLOCK_H:BLOCK_K:WARPS:STAGES' (0 = default), got {spec!r}")
    keys = ("block_h", "block_k", "num_warps", "num_stages")
    return {"pass": parts[0], **{k: int(v) or None for k, v in zip(keys, parts[1:])}}


@dataclass
class MLABenchConfig:
    """What ``python -m dsa bench-mla`` measures (each field is a flag), checked at construction."""

    seq_lens: list[int] = field(default_factory=lambda: [96], metadata={
        "help": "sequence lengths L", "metavar": "L"})
    layouts: list[str] = field(default_factory=lambda: ["tiny"], metadata={
        "help": "attention layouts to time (tiny: the CPU smoke layout)", "choices": tuple(LAYOUTS)})
    top_k: int = field(default=32, metadata={"help": "keys kept per query, <= every L", "metavar": "K"})
    dkv: list[str] = field(default_factory=lambda: list(DKV_MODES), metadata={
        "help": "dK/dV strategies to time", "choices": DKV_MODES})
    tiles: list[str] = field(default_factory=list, metadata={
        "help": "extra tiles fwd|bwd|dkv:BLOCK_H:BLOCK_K:WARPS:STAGES (0 = the default of that knob; dkv: the "
                "headsum dK/dV kernel)",
        "metavar": "TILE"})
    # the inverted dK/dV re-reads q and dO of all G heads per pair: small L only
    inverted_max_len: int = field(default=8192, metadata={"help": "largest L timed with dkv 'inverted'",
                                                          "metavar": "L"})
    probs: list[str] = field(default_factory=list, metadata={
        "help": "kernels of the indexer loss's target probabilities to time on each (layout, L) (CUDA only)",
        "choices": PROBS_KERNELS})
    check: bool = field(default=False, metadata={
        "help": "errors of the output and every gradient against the fp32 reference at a small L"})
    device: str = field(default="auto", metadata={"help": "where to run (cuda must be available)",
                                                  "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "seed of the inputs (>= 0)"})

    def __post_init__(self) -> None:
        if not self.seq_lens or any(isinstance(l, bool) or l < 1 for l in self.seq_lens):
            raise ValueError(f"seq_lens must be positive ints, got {self.seq_lens}")
        if isinstance(self.top_k, bool) or self.top_k < 1 or self.top_k > min(self.seq_lens):
            raise ValueError(f"top_k must be in 1..min(seq_lens), got {self.top_k}")
        for name in self.layouts:
            if name not in LAYOUTS:
                raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
        for mode in self.dkv:
            if mode not in DKV_MODES:
                raise ValueError(f"dkv must be among {DKV_MODES}, got {mode!r}")
        for spec in self.tiles:
            parse_tile(spec)
        for name in self.probs:
            if name not in PROBS_KERNELS:
                raise ValueError(f"probs kernels must be among {PROBS_KERNELS}, got {name!r}")
        for name, low in (("inverted_max_len", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available here")


def causal_selection(l: int, k: int, dev: torch.device, seed: int) -> torch.Tensor:
    """(1, L, k) int32 causal top-k of a random 4 x 64 indexer (-1 where t + 1 < k)."""
    from dsa import ops  # noqa: PLC0415

    g = torch.Generator(device=dev).manual_seed(seed)
    qi = torch.randn(1, l, 4, 64, device=dev, generator=g)
    ki = torch.randn(1, l, 64, device=dev, generator=g)
    w = torch.randn(1, l, 4, device=dev, generator=g)
    return ops.indexer_topk(qi, ki, w, k).to(torch.int32).contiguous()


def mla_inputs(layout: str, l: int, dev: torch.device, dtype: torch.dtype, seed: int):
    """q (1, H, L, d_qk), k (1, H_kv, L, d_qk), v (1, H_kv, L, d_v): for one K/V head with d_v < d_qk, v is
    a view of k's first d_v columns (the latent), as in DeepSeek's MLA."""
    h, hkv, d, dv = LAYOUTS[layout]
    g = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(1, h, l, d, device=dev, dtype=dtype, generator=g)
    k = torch.randn(1, hkv, l, d, device=dev, dtype=dtype, generator=g)
    v = k[..., :dv] if dv < d else torch.randn(1, hkv, l, dv, device=dev, dtype=dtype, generator=g)
    return q, k, v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30)) if torch.isfinite(a).all() else float("inf")


def check_against_reference(layout: str, dev: torch.device, dkv: str, seed: int, l: int = 1101, k: int = 500) -> dict:
    """Relative errors of o, dq, dk, dv (the public op on the kernels, bf16 on CUDA, inputs as
    :func:`mla_inputs` builds them: MLA's v a view of k, dk then the latent's whole gradient) against the
    fp32 gather reference; dK/dV by ``dkv``."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415
    from dsa.ops import sparse_attention  # noqa: PLC0415
    from dsa.ops.attention import sparse_attention_gather  # noqa: PLC0415

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    d, dv = LAYOUTS[layout][2:]
    q, kk, v = mla_inputs(layout, l, dev, dtype, seed)
    idx = causal_selection(l, k, dev, seed)
    go = torch.randn(q.shape[:3] + (dv,), device=dev, generator=torch.Generator(device=dev).manual_seed(seed))
    shared = v.data_ptr() == kk.data_ptr()
    grads = {}
    for name, cast in (("kernel", lambda x: x), ("reference", lambda x: x.float())):
        qs, ks = cast(q).clone().requires_grad_(), cast(kk).clone().requires_grad_()
        vs = ks[..., :dv] if shared else cast(v).clone().requires_grad_()
        if name == "kernel":
            default, sa.DKV_DEFAULT = sa.DKV_DEFAULT, dkv
            try:
                o = sparse_attention(qs, ks, vs, idx, scale=d**-0.5, impl="triton")
                o.backward(go.to(dtype))
            finally:
                sa.DKV_DEFAULT = default
        else:
            o = sparse_attention_gather(qs, ks, vs, idx, scale=d**-0.5, chunk=64)[0]
            o.backward(go.float())
        grads[name] = (o, qs.grad, ks.grad, None if shared else vs.grad)
    errs = {n: _rel(a, r) for n, a, r in zip(("o", "dq", "dk", "dv"), grads["kernel"], grads["reference"])
            if a is not None}
    return {"layout": layout, "dkv": dkv, "L": l, "k": k, "v_view_of_k": shared, "rel_err": errs}


def _kernel_fns(q, k, v, idx, scale, tiles: tuple[dict, dict, dict], dkv: str) -> tuple[Callable, Callable]:
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    tile_f, tile_b, tile_d = tiles
    o, lse = sa._fwd(q, k, v, idx, scale, **tile_f)
    do = torch.randn_like(o)

    def fwd():
        sa._fwd(q, k, v, idx, scale, **tile_f)

    def bwd():
        sa._bwd(q, k, v, idx, o, lse, do, scale, dkv=dkv, dkv_tile=tile_d, **tile_b)

    return fwd, bwd


def _atomic_fields(row: dict, q, k, v, tile_b: dict) -> dict:
    """The row's dK/dV atomic bytes per pair and, with bwd_ms, the rate they take (GB/s)."""
    import dsa.ops.kernels.sparse_attention as sa  # noqa: PLC0415

    g = q.shape[1] // k.shape[1]
    block_h = sa._meta(q, k, v, "bwd", **{n: tile_b.get(n) for n in ("block_h", "block_k")})[0]["BLOCK_H"]
    per_pair = dkv_atomic_bytes_per_pair(row["dkv"], g, q.shape[-1], v.shape[-1], block_h, sa.v_from_k(k, v))
    out = {"dkv_atomic_bytes_per_pair": per_pair}
    if row.get("bwd_ms"):
        out["dkv_atomic_GBps"] = row["pairs"] * per_pair / row["bwd_ms"] / 1e6
    return out


def _reference_fns(q, k, v, idx, scale) -> tuple[Callable, Callable]:
    from dsa.ops.attention import sparse_attention_gather  # noqa: PLC0415

    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    do = torch.randn(q.shape[:3] + v.shape[-1:], dtype=q.dtype)

    def fwd():
        with torch.no_grad():
            sparse_attention_gather(q, k, v, idx, scale=scale)

    def bwd():  # forward included on CPU: the reference keeps no saved state between calls
        sparse_attention_gather(qg, kg, vg, idx, scale=scale)[0].backward(do)

    return fwd, bwd


def bench_one(cfg: MLABenchConfig, layout: str, l: int, dev: torch.device, tiles: tuple[dict, dict, dict],
              dkv: str, tensors) -> dict:
    """One (layout, L, dK/dV mode, tiles) row: fwd and bwd ms, TFLOP/s on the causal pairs; tiles: the
    forward's, the dQ kernel's and the headsum dK/dV kernel's knobs."""
    cuda = dev.type == "cuda"
    h, hkv, d, dv = LAYOUTS[layout]
    q, k, v, idx = tensors
    pairs = attention_pairs(l, cfg.top_k)
    row = {"layout": layout, "H": h, "H_kv": hkv, "d_qk": d, "d_v": dv, "L": l, "k": cfg.top_k, "pairs": pairs,
           "dkv": dkv if cuda else "reference", "tile_fwd": tiles[0], "tile_bwd": tiles[1], "tile_dkv": tiles[2],
           "impl": "triton" if cuda else "reference", "dtype": str(q.dtype).replace("torch.", "")}
    fwd, bwd = _kernel_fns(q, k, v, idx, d**-0.5, tiles, dkv) if cuda else _reference_fns(q, k, v, idx, d**-0.5)
    for name, fn, per_pair in (("fwd", fwd, fwd_flops_per_pair(h, d, dv)), ("bwd", bwd, bwd_flops_per_pair(h, d, dv))):
        ms, why = _measure(fn, cuda)
        row[f"{name}_ms"] = ms
        if why:
            row[f"{name}_why"] = why
        if ms:
            row[f"{name}_tflops"] = pairs * per_pair / ms / 1e9
    if cuda:
        row.update(_atomic_fields(row, q, k, v, tiles[1]))
    return row


def _tile_sets(cfg: MLABenchConfig) -> list[tuple[dict, dict, dict]]:
    """(forward, dQ kernel, headsum dK/dV kernel) tiles: the defaults, then each asked-for tile with the
    others at their defaults."""
    out = [({}, {}, {})]
    for spec in cfg.tiles:
        t = parse_tile(spec)
        knobs = {k: v for k, v in t.items() if k != "pass" and v is not None}
        out.append(tuple(knobs if t["pass"] == p else {} for p in ("fwd", "bwd", "dkv")))
    return out


def _skip(cfg: MLABenchConfig, dkv: str, l: int, tiles: tuple[dict, dict, dict]) -> bool:
    """Rows not timed: inverted beyond its length or with any tile (tiles are timed with the default strategy
    only), a headsum dK/dV tile with another strategy (it does not use that kernel)."""
    if dkv == "inverted":
        return l > cfg.inverted_max_len or any(tiles)
    return bool(tiles[2]) and dkv != "headsum"


def run(cfg: MLABenchConfig, on_row: Callable[[dict], None] | None = None) -> dict:
    dev = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    cuda = dev.type == "cuda"
    res = {"config": asdict(cfg), "rows": [], "checks": [], "provenance": provenance(dev)}
    if cfg.check and cuda:
        for layout in cfg.layouts:
            for dkv in cfg.dkv:
                res["checks"].append(check_against_reference(layout, dev, dkv, cfg.seed))
                print("check", json.dumps(res["checks"][-1]), file=sys.stderr, flush=True)
    dtype = torch.bfloat16 if cuda else torch.float32
    for layout in cfg.layouts:
        for l in cfg.seq_lens:
            try:
                q, k, v = mla_inputs(layout, l, dev, dtype, cfg.seed)
                tensors = (q, k, v, causal_selection(l, cfg.top_k, dev, cfg.seed))
            except torch.cuda.OutOfMemoryError:
                res["rows"].append({"layout": layout, "L": l, "k": cfg.top_k, "fwd_ms": None, "fwd_why": "oom"})
                torch.cuda.empty_cache()
                continue
            for tiles in _tile_sets(cfg):
                for dkv in cfg.dkv if cuda else ("atomic",):
                    if _skip(cfg, dkv, l, tiles):
                        continue
                    row = bench_one(cfg, layout, l, dev, tiles, dkv, tensors)
                    res["rows"].append(row)
                    print(_line(row), file=sys.stderr, flush=True)
                    if on_row:
                        on_row(res)
            if cuda and cfg.probs:
                res.setdefault("probs", []).extend(bench_probs(cfg, layout, l, tensors))
                print("probs", json.dumps(res["probs"][-len(cfg.probs):]), file=sys.stderr, flush=True)
            del tensors, q, k, v
            if cuda:
                torch.cuda.empty_cache()
    return res


def bench_probs(cfg: MLABenchConfig, layout: str, l: int, tensors) -> list[dict]:
    """The indexer loss's target probabilities (``sparse_attention_probs``) on the forward's lse, once per
    kernel in cfg.probs: ms, TFLOP/s (2·H·d_qk per causal pair: S recomputed) and the largest difference
    from the first kernel's probabilities. CUDA only."""
    from dsa.ops.kernels.sparse_attention import _fwd, sparse_attention_probs  # noqa: PLC0415

    h, _, d, _ = LAYOUTS[layout]
    q, k, v, idx = tensors
    scale = d**-0.5
    _, lse = _fwd(q, k, v, idx, scale)
    pairs = attention_pairs(l, cfg.top_k)
    rows, first = [], None
    for name in cfg.probs:
        ms, why = _measure(lambda n=name: sparse_attention_probs(q, k, idx, lse, scale, kernel=n), q.is_cuda)
        row = {"layout": layout, "L": l, "k": cfg.top_k, "probs_kernel": name, "probs_ms": ms, "probs_why": why,
               "probs_tflops": pairs * 2 * h * d / ms / 1e9 if ms else None}
        if ms:
            p = sparse_attention_probs(q, k, idx, lse, scale, kernel=name)
            first = p if first is None else first
            row["max_abs_diff_vs_first"] = float((p - first).abs().max())
        rows.append(row)
    return rows


def _fmt(x, f="{:.2f}") -> str:
    return "-" if x is None else f.format(x)


def _line(r: dict) -> str:
    tile = ",".join(f"{p}.{k}={v}" for p in ("fwd", "bwd", "dkv") for k, v in r.get(f"tile_{p}", {}).items())
    atomics = f" dK/dV atomics {_fmt(r.get('dkv_atomic_GBps'), '{:.0f}')} GB/s" if "dkv_atomic_GBps" in r else ""
    return (f"{r['layout']:<8} L={r['L']:<6} {r['dkv']:<9} {tile or 'default':<40} fwd {_fmt(r.get('fwd_ms'))} ms "
            f"({_fmt(r.get('fwd_tflops'), '{:.0f}')} TF/s)  bwd {_fmt(r.get('bwd_ms'))} ms "
            f"({_fmt(r.get('bwd_tflops'), '{:.0f}')} TF/s){atomics} {r.get('fwd_why', '')}{r.get('bwd_why', '')}")


def table(res: dict) -> str:
    return "\n".join(_line(r) for r in res["rows"] if "dkv" in r)


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.bench.mla") -> int:
    """``python -m dsa bench-mla``: time the sparse attention op per layout, L, dK/dV strategy and tile."""
    p = cli.config_command_parser(MLABenchConfig, prog, __doc__, "JSON path (default runs/bench-mla-<device>"
                                  ".json), rewritten after every row")
    cfg, rest = cli.checked_config(p, MLABenchConfig, argv)
    out = Path(rest["out"] or f"runs/bench-mla-{'cuda' if torch.cuda.is_available() else 'cpu'}.json")
    res = run_writing_json(run, cfg, out)
    print(table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
