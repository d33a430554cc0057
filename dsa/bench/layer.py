"""Layer benchmark: the model's own DSA layer against the same layer with dense attention, in one process.

    python -m dsa bench-layer                                  # CPU: a tiny MQA layer, the reference path
    python -m dsa bench-layer --seq-lens 8192 32768 65536 --top-k 2048 --heads 64 --kv-heads 1 \
        --head-dim 128 --indexers 4x64 64x128 --out runs/bench-layer.json

Each configuration builds one :class:`dsa.layers.DSAAttention` and a :class:`dsa.layers.DenseAttention` with
the same projection weights (bf16 on CUDA) and times, on hidden states (1, L, d_model):
- ``dense_<backend>_fwd`` / ``_fwdbwd``: the dense layer with SDPA forced to cuDNN or flash, and the same
  projections around FlexAttention (the dense baselines; cuDNN is the one to beat on Hopper);
- ``dsa_fwd`` (prefill: projections, indexer, top-k, sparse attention) and ``dsa_fwdbwd`` (training: the
  same plus the indexer's sparse KL loss, all backward): exactly the code the model trains with;
- the DSA layer's parts: ``part_indexer_topk`` (indexer projections + top-k), ``part_sparse_fwd`` /
  ``part_sparse_fwdbwd`` (sparse attention alone), ``part_kl_fwdbwd`` (the KL loss alone).
Rows hold raw timings only: ratios (dense ms / DSA ms of the same run) are derived on read
(:func:`dsa.study.bench_tables.layer_bench_frame`, :func:`table`). TFLOP/s count the attention's causal pairs only
(dense L(L+1)/2, sparse sum_t min(t+1, k)) at 2·H·(d_qk + d_v) FLOPs per pair, x3.5 for fwd+bwd. Timer:
triton.testing.do_bench median on CUDA, a perf_counter median on CPU. Results go to ``runs/`` unless --out.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dsa import ops
from dsa.checks import check_int, resolve_device
from dsa.layers import AttentionConfig, DenseAttention, DSAAttention, SparseConfig
from dsa.ops.dispatch import impl_on_device
from dsa.provenance import provenance, run_writing_json

DENSE_BACKENDS = ("cudnn", "flash", "flex")


@dataclass
class LayerBenchConfig:
    """What ``python -m dsa bench-layer`` measures (each field is a flag), checked at construction."""

    seq_lens: list[int] = field(default_factory=lambda: [256], metadata={
        "help": "sequence lengths L", "metavar": "L"})
    top_k: int = field(default=64, metadata={"help": "keys kept per query, <= every L", "metavar": "K"})
    d_model: int = field(default=256, metadata={"help": "hidden size of the layer"})
    heads: int = field(default=8, metadata={"help": "query heads", "metavar": "H"})
    kv_heads: int = field(default=1, metadata={"help": "K/V heads, a divisor of heads (1 = MQA)", "metavar": "H_KV"})
    head_dim: int = field(default=32, metadata={"help": "per-head query/key/value size, even (RoPE)",
                                                "metavar": "D"})
    indexers: list[str] = field(default_factory=lambda: ["4x16"], metadata={
        "help": "indexer sizes HEADSxDIM, e.g. 4x64 64x128", "metavar": "HxD"})
    indexer_rope_dim: int = field(default=0, metadata={
        "help": "RoPE dims of each indexer head, even and <= every indexer DIM"})
    device: str = field(default="auto", metadata={"help": "where to run (cuda must be available)",
                                                  "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "seed of the weights and inputs (>= 0)"})

    def __post_init__(self) -> None:
        for name in ("top_k", "d_model", "heads", "kv_heads", "head_dim"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        if not isinstance(self.seq_lens, list) or not self.seq_lens:
            raise ValueError(f"seq_lens must be a non-empty list of ints, got {self.seq_lens!r}")
        for l in self.seq_lens:
            check_int("seq_lens", l, 1)
        if self.top_k > min(self.seq_lens):
            raise ValueError(f"top_k ({self.top_k}) must be <= every seq_len (smallest {min(self.seq_lens)})")
        if not isinstance(self.indexers, list) or not self.indexers:
            raise ValueError(f"indexers must be a non-empty list of HEADSxDIM, got {self.indexers!r}")
        for spec in self.indexers:
            hi, di = parse_indexer(spec)
            SparseConfig(top_k=self.top_k, indexer_heads=hi, indexer_dim=di, indexer_rope_dim=self.indexer_rope_dim)
        AttentionConfig(d_model=self.d_model, n_heads=self.heads, n_kv_heads=self.kv_heads, head_dim=self.head_dim)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        resolve_device(self.device)


def parse_indexer(spec: str) -> tuple[int, int]:
    """'64x128' -> (64, 128): indexer heads x head size."""
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"an indexer size is 'HEADSxDIM', e.g. 64x128, got {spec!r}")
    return int(parts[0]), int(parts[1])


def _timer(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        import triton.testing  # noqa: PLC0415

        return float(triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median"))
    ts = []
    for i in range(3):
        t0 = time.perf_counter()
        fn()
        if i:
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _measure(fn: Callable[[], object], cuda: bool) -> tuple[float | None, str | None]:
    """(ms, None), or (None, why) when the call runs out of memory or fails."""
    try:
        return _timer(fn, cuda), None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "oom"
    except Exception as exc:  # a baseline that cannot run this shape is recorded, not fatal
        return None, f"{type(exc).__name__}: {str(exc)[:160]}"


def attention_pairs(l: int, k: int | None) -> float:
    """Causal (query, key) pairs: dense L(L+1)/2, sparse sum_t min(t+1, k)."""
    return l * (l + 1) / 2 if k is None else k * (k + 1) / 2 + (l - k) * k


def _layers(cfg: LayerBenchConfig, l: int, hi: int, di: int, dev: torch.device, dtype: torch.dtype):
    acfg = AttentionConfig(d_model=cfg.d_model, n_heads=cfg.heads, n_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                           max_seq_len=l)
    scfg = SparseConfig(top_k=cfg.top_k, indexer_heads=hi, indexer_dim=di, indexer_rope_dim=cfg.indexer_rope_dim)
    torch.manual_seed(cfg.seed)
    dsa = DSAAttention(acfg, scfg).to(dev, dtype)
    dense = DenseAttention(acfg).to(dev, dtype)
    dense.proj.load_state_dict(dsa.proj.state_dict())
    return dense, dsa


FLEX_MAX_ELEMENTS = 2**31  # FlexAttention's compiled kernel indexes q/k/v in int32


def _dense_fns(dense: DenseAttention, backend: str, x: torch.Tensor, go: torch.Tensor, cuda: bool):
    """(fwd, fwdbwd) of the dense layer on one SDPA backend, or around FlexAttention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: PLC0415

        l = x.shape[1]
        with torch.no_grad():
            t = dense.proj(x)
            biggest = max(y.numel() for y in (t.q, t.k, t.v))
        if cuda and biggest >= FLEX_MAX_ELEMENTS:
            raise ValueError(f"flex: {biggest} elements in one of q/k/v, past 2^31; FlexAttention's kernel then "
                             "faults (illegal memory access measured at MLA-MHA 128 x 192, L = 128K, torch 2.11)")
        del t
        # _compile: the eager construction materialises the L x L mask (128 GiB asked for at L = 128K)
        mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, l, l, device=x.device, _compile=cuda)
        flex = torch.compile(flex_attention, dynamic=False)

        def run():
            t = dense.proj(x)
            o = flex(t.q, t.k, t.v, block_mask=mask, scale=t.scale, enable_gqa=t.k.shape[1] != t.q.shape[1])
            return dense.proj.output(o)
    else:
        chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend] if cuda \
            else SDPBackend.MATH

        def run():
            with sdpa_kernel(chosen):
                return dense(x)[0]

    def fwd():
        with torch.no_grad():
            run()

    def fwdbwd():
        run().backward(go)

    return fwd, fwdbwd


def _dsa_fns(dsa: DSAAttention, x: torch.Tensor, go: torch.Tensor):
    def fwd():
        with torch.no_grad():
            dsa(x)

    def fwdbwd():
        out, aux = dsa(x, indexer_loss="sparse")
        ((out.float() * go.float()).sum() + aux.indexer_kl).backward()

    return fwd, fwdbwd


def _part_fns(dsa: DSAAttention, x: torch.Tensor, go: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The DSA layer's parts on the layer's own tensors."""
    impl = dsa.cfg.impl
    t = dsa.proj(x)
    q, k, v = (a.detach().requires_grad_() for a in (t.q, t.k, t.v))
    with torch.no_grad():
        qi, ki, wi = dsa.indexer_outputs(x)
        idx = ops.indexer_topk(qi, ki, wi, dsa.sparse_cfg.top_k, impl=impl)
        lse = ops.sparse_attention(q, k, v, idx, scale=t.scale, return_lse=True, impl=impl)[1]
    qi_g, ki_g, wi_g = (a.detach().requires_grad_() for a in (qi, ki, wi))
    go_o = torch.randn(q.shape[:3] + (v.shape[-1],), device=x.device, dtype=q.dtype)

    def topk():
        with torch.no_grad():
            a, b, c = dsa.indexer_outputs(x)
            ops.indexer_topk(a, b, c, dsa.sparse_cfg.top_k, impl=impl)

    def sparse_fwd():
        with torch.no_grad():
            ops.sparse_attention(q, k, v, idx, scale=t.scale, impl=impl)

    def sparse_fwdbwd():
        ops.sparse_attention(q, k, v, idx, scale=t.scale, impl=impl).backward(go_o)

    def kl_fwdbwd():
        ops.sparse_indexer_kl(q.detach(), k.detach(), qi_g, ki_g, wi_g, idx, lse=lse, scale=t.scale,
                              impl=impl).backward()

    return {"part_indexer_topk": topk, "part_sparse_fwd": sparse_fwd, "part_sparse_fwdbwd": sparse_fwdbwd,
            "part_kl_fwdbwd": kl_fwdbwd}


def bench_one(cfg: LayerBenchConfig, l: int, indexer: str, dev: torch.device) -> dict:
    """One (L, indexer size) row: every dense baseline, the DSA layer, its parts (ms) and TFLOP/s."""
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    hi, di = parse_indexer(indexer)
    dense, dsa = _layers(cfg, l, hi, di, dev, dtype)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    x = torch.randn(1, l, cfg.d_model, device=dev, dtype=dtype, generator=g, requires_grad=True)
    go = torch.randn(1, l, cfg.d_model, device=dev, dtype=dtype, generator=g)
    row: dict = {"L": l, "k": cfg.top_k, "layout": dsa.cfg.layout, "d_model": cfg.d_model, "H": cfg.heads,
                 "H_kv": cfg.kv_heads, "d_qk": cfg.head_dim, "d_v": cfg.head_dim, "H_I": hi, "d_I": di,
                 "indexer_dtype": str(dtype).replace("torch.", ""), "dtype": str(dtype).replace("torch.", ""),
                 "impl": impl_on_device(dsa.cfg.impl, dev)}
    per_pair = 2 * cfg.heads * 2 * cfg.head_dim
    fns: dict[str, tuple[Callable, float]] = {}
    for backend in DENSE_BACKENDS if cuda else ("math",):
        fwd, fwdbwd = _dense_fns(dense, backend, x, go, cuda)
        fns[f"dense_{backend}_fwd"] = (fwd, attention_pairs(l, None) * per_pair)
        fns[f"dense_{backend}_fwdbwd"] = (fwdbwd, 3.5 * attention_pairs(l, None) * per_pair)
    fwd, fwdbwd = _dsa_fns(dsa, x, go)
    sparse_flops = attention_pairs(l, cfg.top_k) * per_pair
    fns["dsa_fwd"] = (fwd, sparse_flops)
    fns["dsa_fwdbwd"] = (fwdbwd, 3.5 * sparse_flops)
    for name, fn in _part_fns(dsa, x, go).items():
        fns[name] = (fn, 3.5 * sparse_flops if name == "part_sparse_fwdbwd" else
                     sparse_flops if name == "part_sparse_fwd" else 0.0)
    for name, (fn, flops) in fns.items():
        ms, why = _measure(fn, cuda)
        row[name + "_ms"] = ms
        if why:
            row[name + "_why"] = why
        if ms and flops:
            row[name + "_tflops"] = flops / ms / 1e9
    return row


def speedup(row: dict, backend: str, pass_: str) -> float | None:
    """Dense layer ms on ``backend`` / DSA layer ms for ``pass_`` ('fwd' or 'fwdbwd') of one row (> 1: DSA is
    faster), or None where either was not measured. Derived on read: rows store raw timings only."""
    dense, dsa = row.get(f"dense_{backend}_{pass_}_ms"), row.get(f"dsa_{pass_}_ms")
    return dense / dsa if dense and dsa else None


def run(cfg: LayerBenchConfig, on_row: Callable[[dict], None] | None = None) -> dict:
    from tqdm.auto import tqdm  # noqa: PLC0415

    dev = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    res = {"config": asdict(cfg), "rows": [], "provenance": provenance(dev)}
    for l in cfg.seq_lens:
        for indexer in tqdm(cfg.indexers, desc=f"dsa.bench.layer L={l}", file=sys.stderr):
            res["rows"].append(bench_one(cfg, l, indexer, dev))
            if on_row:
                on_row(res)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return res


def table(res: dict) -> str:
    """The rows as text against the cuDNN baseline (SDPA math on CPU), the ``speedup_*`` columns derived."""
    base = "cudnn" if not res["rows"] or "dense_cudnn_fwd_ms" in res["rows"][0] else "math"
    cols = [("L", "{}"), ("H_I", "{}"), ("d_I", "{}"), (f"dense_{base}_fwd_ms", "{:.1f}"), ("dsa_fwd_ms", "{:.1f}"),
            (f"speedup_{base}_fwd", "{:.2f}"), (f"dense_{base}_fwdbwd_ms", "{:.1f}"), ("dsa_fwdbwd_ms", "{:.1f}"),
            (f"speedup_{base}_fwdbwd", "{:.2f}"), ("part_indexer_topk_ms", "{:.1f}"),
            ("part_sparse_fwdbwd_ms", "{:.1f}"), ("part_kl_fwdbwd_ms", "{:.1f}")]
    lines = ["  ".join(c for c, _ in cols)]
    for r in res["rows"]:
        shown = {**r, **{f"speedup_{base}_{ps}": speedup(r, base, ps) for ps in ("fwd", "fwdbwd")}}
        lines.append("  ".join(f.format(shown[c]) if shown.get(c) is not None else "-" for c, f in cols))
    return "\n".join(lines)


def default_out() -> Path:
    return Path(f"runs/bench-layer-{'cuda' if torch.cuda.is_available() else 'cpu'}.json")


def bench(cfg: LayerBenchConfig, out: str | Path | None = None) -> dict:
    """Runs the benchmark, writing its result to ``out`` (default :func:`default_out`) after every row."""
    out = Path(out) if out else default_out()
    res = run_writing_json(run, cfg, out)
    res["_path"] = str(out)
    return res


if __name__ == "__main__":
    from dsa.bench.cli import bench_layer_main  # noqa: PLC0415

    sys.exit(bench_layer_main(prog="python -m dsa.bench.layer"))
