"""The indexer at DeepSeek-V3.2's size (64 heads x 128) in bf16 and FP8, and its top-k against one read.

Measures, on one GPU, in one run (``python -m dsa.bench.indexer --out FILE``; ``scripts/gpu/gpu_indexer.sh``):
- ``matmul``: the FP8 (e4m3, ``torch._scaled_mm``) and bf16 matrix-multiply rates of this card, the yardsticks;
- ``score_pass``: the score kernel alone (``indexer_chunked.score_rows``) on the last ``chunk`` query rows of
  each L, bf16 and FP8, in TFLOP/s (causal pairs x (2 H_I d_I + 2 H_I)) and as a share of the matmul rate of
  its precision (target for FP8: >= 0.6); beside it (``kernel`` 'heads_n') the heads-as-N score kernel
  (``score_rows_hn``) on the same rows, with its largest difference from the score pass;
- ``topk``: the whole ``ops.indexer_topk`` (scores + selection, no L x L tensor) in bf16 and FP8 per L, and
  the two fixed-k selections alone, chunked (stored score rows) and fused (``indexer_fused``: no score
  stored), with whether they agree;
- ``selection``: the radix top-k over those stored score rows against one read of them (a row max), with the
  bytes model of :func:`dsa.ops.flops.topk_bytes` beside it, and ``torch.topk`` over the same rows (their
  uncausal ends at -inf) beside it;
- ``fp8_tiles``: the FP8 score pass at a few other tiles, at the longest L;
- ``recall``: the FP8 selection against the bf16 one on random and structured inputs
  (:func:`dsa.ops.selection_score_mass`: share of the reference selection's indexer mass kept, and overlap).

On CPU it runs the same code at toy sizes through the references (a smoke run; nothing there is a speed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dsa import cli, ops
from dsa.checks import check_out_file
from dsa.ops.flops import indexer_flops, topk_bytes
from dsa.ops.quantize import FP8_DTYPE, fp8_dot_supported, quantize_indexer
from dsa.provenance import provenance, write_json_atomic


def random_indexer_inputs(b: int, l: int, h: int, d: int, gen: torch.Generator, device: str = "cpu",
                          dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, L, H, d), k (B, L, d) standard normal; w (B, L, H) normal times H^-1/2 d^-1/2, the layer's scale
    (scores of order one: the indexer's softmax is neither flat nor one-hot)."""
    q = torch.randn(b, l, h, d, generator=gen)
    k = torch.randn(b, l, d, generator=gen)
    w = torch.randn(b, l, h, generator=gen) * (h * d) ** -0.5
    return q.to(device, dtype), k.to(device, dtype), w.to(device, dtype)


def structured_indexer_inputs(b: int, l: int, h: int, d: int, gen: torch.Generator, device: str = "cpu",
                              dtype: torch.dtype = torch.bfloat16, n_outliers: int = 4, outlier: float = 20.0,
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs shaped like trained activations: a few channels ``outlier`` x larger than the rest in q and k
    (what one scale per token handles worst, and the Hadamard rotation is for), and each query head aimed at
    one random past key (q = 2 k_s + noise): a few keys stand out per query. Shapes as
    :func:`random_indexer_inputs`; w positive (the aimed heads count)."""
    ch = torch.ones(d)
    ch[torch.randperm(d, generator=gen)[:n_outliers]] = outlier
    k = torch.randn(b, l, d, generator=gen) * ch
    t = torch.arange(l)[None, :, None]
    target = (torch.rand(b, l, h, generator=gen) * (t + 1)).long()  # a past position per (query, head)
    aimed = k[torch.arange(b)[:, None, None], target]  # (B, L, H, d)
    q = (2 * aimed + torch.randn(b, l, h, d, generator=gen) * ch) / ch.norm()
    w = torch.rand(b, l, h, generator=gen) * (h * d) ** -0.5
    return q.to(device, dtype), k.to(device, dtype), w.to(device, dtype)


def _ms(fn, cuda: bool) -> float:
    if cuda:
        import triton.testing  # noqa: PLC0415

        return float(triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median"))
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def matmul_rates(device: str, n: int = 8192) -> dict:
    """TFLOP/s of an n x n x n matmul in bf16 and in FP8 (``torch._scaled_mm``, e4m3 operands, fp32 scales,
    bf16 out), measured here; FP8 None where the device has none."""
    cuda = device == "cuda"
    a = torch.randn(n, n, device=device).bfloat16()
    bm = torch.randn(n, n, device=device).bfloat16()
    flops = 2.0 * n**3
    out = {"n": n, "bf16_tflops": flops / _ms(lambda: a @ bm, cuda) / 1e9, "fp8_tflops": None}
    if cuda and fp8_dot_supported(device):
        a8, b8 = a.to(FP8_DTYPE), bm.t().contiguous().to(FP8_DTYPE).t()  # _scaled_mm wants b column-major
        one = torch.ones((), device=device)
        ms = _ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), cuda)
        out["fp8_tflops"] = flops / ms / 1e9
    return out


def score_pass(q, k, w, precision: str, chunk: int, tile: tuple[int, int, int] | None = None,
               kernel: str = "rows") -> dict:
    """The score kernel on the last ``chunk`` query rows (stored fp32), its time and TFLOP/s; tile: (query rows,
    keys, warps) per program (default: the launch's own, ``indexer_chunked.SCORE_TILE``). kernel: 'rows' (the
    score pass, ``score_rows``) or 'heads_n' (``score_rows_hn``: the queries' heads as the product's N; its
    tile (queries, keys, warps), default ``HN_TILE``); the same rows either way."""
    from dsa.ops.kernels._common import next_pow2  # noqa: PLC0415
    from dsa.ops.kernels.indexer import _pad_heads  # noqa: PLC0415
    from dsa.ops.kernels.indexer_chunked import HN_TILE, score_rows, score_rows_hn, score_tile  # noqa: PLC0415
    from dsa.ops.quantize import fp8_operands  # noqa: PLC0415

    b, l, h, d = q.shape
    bm = score_tile(tile if kernel == "rows" else None)[0]
    t0 = max(0, (l - chunk) // bm * bm)
    ks = None
    if precision == "fp8":
        z = quantize_indexer(q, k, w)
        (q, k), w, ks = fp8_operands(z), z.w, z.k_scale
    qp, wp = _pad_heads(q, w.float(), next_pow2(h))
    kc = k.contiguous()
    scores = torch.empty(b, l - t0, l, device=q.device, dtype=torch.float32)
    fn = score_rows if kernel == "rows" else score_rows_hn
    ms = _ms(lambda: fn(qp, kc, wp, scores, t0, l, tile=tile, k_scale=ks), q.is_cuda)
    flops = b * (indexer_flops(l, h, d) - indexer_flops(t0, h, d))
    return {"rows": l - t0, "ms": ms, "tflops": flops / ms / 1e9, "operands": str(qp.dtype), "kernel": kernel,
            "tile": list(score_tile(tile) if kernel == "rows" else tile or HN_TILE), "scores": scores}


def heads_n_pass(q, k, w, precision: str, chunk: int, scores: torch.Tensor, rate: float | None, l: int) -> dict:
    """The heads-as-N score kernel on the same rows as the score pass (whose ``scores`` it is checked against:
    the largest difference on the causal entries relative to the largest score)."""
    hn = score_pass(q, k, w, precision, chunk, kernel="heads_n")
    got = hn.pop("scores")
    t = torch.arange(l - got.shape[1], l, device=got.device)
    causal = torch.arange(l, device=got.device)[None, :] <= t[:, None]
    ref = scores[:, -got.shape[1]:]
    diff = ((got - ref).abs()[:, causal].max() / ref[:, causal].abs().max().clamp(min=1e-30)).item()
    return {**hn, "L": l, "precision": precision, "of_matmul": hn["tflops"] / rate if rate else None,
            "max_rel_diff_vs_rows": diff}


def selection_vs_read(scores: torch.Tensor, l: int, top_k: int) -> dict:
    """Radix top-k over stored causal score rows (the last rows of an L x L triangle) vs one read of them."""
    from dsa.ops.kernels.radix_topk import radix_topk  # noqa: PLC0415

    rows = scores.shape[1]
    lens = torch.arange(l - rows + 1, l + 1, device=scores.device, dtype=torch.int32)
    s2 = scores[0]
    cuda = scores.is_cuda
    topk_ms = _ms(lambda: radix_topk(s2, top_k, lens, out_dtype=torch.int32), cuda)
    read_ms = _ms(lambda: s2.amax(-1), cuda)
    causal = torch.arange(s2.shape[1], device=s2.device)[None, :] < lens[:, None]
    masked = s2.masked_fill(~causal, float("-inf"))  # torch.topk has no row lengths: the rest of a row at -inf
    torch_ms = _ms(lambda: torch.topk(masked, top_k, dim=-1, sorted=False), cuda)
    del masked, causal
    n_mean = float(lens.float().mean())
    read_bytes = 4.0 * float(lens.sum())  # the valid triangle part; amax reads the whole rows (about the same)
    from dsa.ops.flops import topk_bytes_per_row  # noqa: PLC0415

    model = topk_bytes_per_row(int(n_mean), top_k)
    return {"rows": rows, "topk_ms": topk_ms, "read_ms": read_ms, "topk_over_read": topk_ms / read_ms,
            "torch_topk_ms": torch_ms, "torch_topk_over_read": torch_ms / read_ms,
            "read_gbps": 4.0 * s2.numel() / read_ms / 1e6, "valid_bytes": read_bytes,
            "model_selection_over_read": model["selection_over_read"]}


def recall(l: int, h: int, d: int, top_k: int, device: str, seed: int = 0) -> dict:
    """The FP8 selection against the bf16 one, on random and structured inputs (one batch row each)."""
    out = {}
    for name, make in (("random", random_indexer_inputs), ("structured", structured_indexer_inputs)):
        q, k, w = make(1, l, h, d, torch.Generator().manual_seed(seed), device)
        ref = ops.indexer_topk(q, k, w, top_k)
        fp8 = ops.indexer_topk(q, k, w, top_k, precision="fp8")
        out[name] = ops.selection_score_mass(q.float(), k.float(), w.float(), fp8, ref)
    return out


def fused_selection(q, k, w, top_k: int, precision: str) -> dict:
    """The top-k fused into the score pass (``indexer_fused``) against the chunked one on the same inputs:
    times (kernels only, the FP8 quantization done before), whether they select the same positions, the
    fused path's fallback rows and candidates per past position."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415
    from dsa.ops.kernels.indexer_fused import indexer_topk_fused  # noqa: PLC0415
    from dsa.ops.quantize import fp8_operands  # noqa: PLC0415

    ks = None
    if precision == "fp8":
        z = quantize_indexer(q, k, w)
        (q, k), w, ks = fp8_operands(z), z.w, z.k_scale
    try:
        st = {}
        fused = indexer_topk_fused(q, k, w, top_k, k_scale=ks, stats=st)
        same = bool(torch.equal(fused, indexer_topk_chunked(q, k, w, top_k, k_scale=ks)))
        del fused
        out = {"fused_ms": _ms(lambda: indexer_topk_fused(q, k, w, top_k, k_scale=ks), True),
               "chunked_ms": _ms(lambda: indexer_topk_chunked(q, k, w, top_k, k_scale=ks), True),
               "fused_same_as_chunked": same, **{f"fused_{n}": v for n, v in st.items()}}
    except Exception as exc:  # keep the run going, record why
        out = {"fused_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    torch.cuda.empty_cache()
    return out


def tile_sweep(q, k, w, chunk: int, tiles: list[tuple[int, int, int]], fp8_rate: float | None,
               kernel: str = "rows") -> list[dict]:
    """The FP8 score kernel (``kernel`` as :func:`score_pass`) at other tiles: TFLOP/s per tile, or the error (a
    tile over the shared-memory limit raises OutOfResources)."""
    rows = []
    for tile in tiles:
        try:
            sp = score_pass(q, k, w, "fp8", chunk, tile, kernel)
            del sp["scores"]
            sp["of_matmul"] = sp["tflops"] / fp8_rate if fp8_rate else None
        except Exception as exc:  # keep the sweep going, record why
            sp = {"tile": list(tile), "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(sp)
        print(f"[indexer] fp8 {kernel} tile {sp}", flush=True)
        torch.cuda.empty_cache()
    return rows


def _parse_tile(text: str) -> tuple[int, int, int]:
    try:
        bm, bn, warps = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a tile is ROWSxKEYSxWARPS, e.g. 64x128x4, got {text!r}") from None
    return bm, bn, warps


def run(args, on_update=None) -> dict:
    """The measurements of the module docstring; ``on_update(res)`` after each L (a partial record survives a
    time limit)."""
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    cuda = device == "cuda"
    res = {"device_fp8": fp8_dot_supported(device), "heads": args.heads, "dim": args.dim, "top_k": args.top_k,
           "matmul": matmul_rates(device, 8192 if cuda else 256), "score_pass": [], "topk": [], "selection": [],
           "topk_bytes_model": [], "recall": None}
    print(f"[indexer] device {device}, native fp8: {res['device_fp8']}, matmul {res['matmul']}", flush=True)
    gen = torch.Generator().manual_seed(0)
    for l in args.seq_lens:
        q, k, w = random_indexer_inputs(1, l, args.heads, args.dim, gen, device)
        for precision in ("bf16", "fp8"):
            if cuda:
                sp = score_pass(q, k, w, precision, args.chunk)
                scores = sp.pop("scores")
                rate = res["matmul"][f"{precision}_tflops"]
                sp.update(L=l, precision=precision, of_matmul=sp["tflops"] / rate if rate else None)
                res["score_pass"].append(sp)
                print(f"[indexer] score pass {sp}", flush=True)
                if precision == "fp8":
                    sel = selection_vs_read(scores, l, args.top_k)
                    res["selection"].append({"L": l, **sel})
                    print(f"[indexer] selection {res['selection'][-1]}", flush=True)
                res["score_pass"].append(heads_n_pass(q, k, w, precision, args.chunk, scores, rate, l))
                print(f"[indexer] score pass, heads as N {res['score_pass'][-1]}", flush=True)
                del scores
            ms = _ms(lambda: ops.indexer_topk(q, k, w, args.top_k, precision=precision), cuda)
            res["topk"].append({"L": l, "precision": precision, "ms": ms})
            if precision == "fp8":  # included above: the rotation and quantization of q, k (no kernel of its own)
                res["topk"][-1]["quantize_ms"] = _ms(lambda: quantize_indexer(q, k, w), cuda)
            if cuda:
                res["topk"][-1].update(fused_selection(q, k, w, args.top_k, precision))
                print(f"[indexer] fused L={l} {precision}: {res['topk'][-1]}", flush=True)
            print(f"[indexer] indexer_topk L={l} {precision}: {ms:.2f} ms", flush=True)
            if cuda:
                torch.cuda.empty_cache()
        res["topk_bytes_model"].append({"L": l, **topk_bytes(l, args.top_k),
                                        "fused": topk_bytes(l, args.top_k, fused=True)})
        if on_update:
            on_update(res)
        if cuda and l == max(args.seq_lens) and (args.tiles or args.hn_tiles):
            res["fp8_tiles"] = tile_sweep(q, k, w, args.chunk, args.tiles, res["matmul"]["fp8_tflops"])
            res["fp8_tiles"] += tile_sweep(q, k, w, args.chunk, args.hn_tiles, res["matmul"]["fp8_tflops"], "heads_n")
    res["recall"] = {"L": args.recall_len, **recall(args.recall_len, args.heads, args.dim,
                                                    min(args.top_k, args.recall_len // 4), device)}
    print(f"[indexer] recall {res['recall']}", flush=True)
    return res


def build_parser(prog: str | None = "python -m dsa.bench.indexer") -> argparse.ArgumentParser:
    """The flags of ``python -m dsa indexer-bench``."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[16384, 32768, 65536, 131072], metavar="L",
                    help="sequence lengths L, each >= --top-k (default: %(default)s)")
    ap.add_argument("--heads", type=int, default=64, metavar="H_I", help="indexer heads (default: %(default)s)")
    ap.add_argument("--dim", type=int, default=128, metavar="D_I",
                    help="indexer head size, a power of two: the Hadamard rotation (default: %(default)s)")
    ap.add_argument("--top-k", type=int, default=2048, metavar="K", help="keys selected per query (default: "
                    "%(default)s)")
    ap.add_argument("--chunk", type=int, default=4096, metavar="ROWS",
                    help="query rows of the timed score pass, the last ones (default: %(default)s)")
    ap.add_argument("--recall-len", type=int, default=8192, metavar="L",
                    help="sequence length of the FP8-vs-bf16 recall check, >= 4 (default: %(default)s)")
    ap.add_argument("--tiles", type=_parse_tile, nargs="*", default=[(64, 64, 4), (128, 128, 8)], metavar="TILE",
                    help="extra tiles ROWSxKEYSxWARPS of the FP8 score pass, timed at the longest L (GPU only; "
                         "default: 64x64x4 128x128x8)")
    ap.add_argument("--hn-tiles", type=_parse_tile, nargs="*", default=[], metavar="TILE",
                    help="tiles QUERIESxKEYSxWARPS of the FP8 heads-as-N score kernel, QUERIES a power of two, "
                         "timed at the longest L (GPU only; default: none)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU (references, toy sizes: a smoke run)")
    ap.add_argument("--out", type=Path, default=None, metavar="PATH",
                    help="JSON path, rewritten after every L (default: none written)")
    return ap


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad flag."""
    for name, low in (("heads", 1), ("dim", 1), ("top_k", 1), ("chunk", 1), ("recall_len", 4)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if any(l < args.top_k for l in args.seq_lens):
        raise ValueError("every --seq-lens value must be >= --top-k")
    if args.dim & (args.dim - 1):
        raise ValueError("--dim must be a power of two (the Hadamard rotation)")
    if any(bq & (bq - 1) for bq, _, _ in args.hn_tiles):
        raise ValueError("--hn-tiles: the queries per program (QUERIES) must be powers of two")
    check_out_file("--out", args.out)


def main(argv: list[str] | None = None, prog: str | None = "python -m dsa.bench.indexer") -> int:
    """``python -m dsa indexer-bench``: the measurements of the module docstring, one JSON with provenance."""
    ap = build_parser(prog)
    args = ap.parse_args(argv)
    with cli.usage_errors(ap):
        check_args(args)
    dev = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    prov = provenance(dev)
    prov["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def save(res: dict, done: bool = False) -> None:
        if args.out:
            write_json_atomic(args.out, {"provenance": prov, "complete": done, **res})

    res = run(args, on_update=save)
    save(res, done=True)
    if args.out:
        print(f"[indexer] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
