"""Shared memory, registers and spills of the lightning-indexer and sparse-attention Triton kernels, compiled
ahead of time for Hopper (sm_90a) on a machine without a GPU: does every launch fit an H100 / H200 at the
indexer sizes, DeepSeek-V3.2's 64 heads x 128 dims included, and at the attention layouts, its MLA in MQA
mode (128 query heads on one latent K/V, d_qk 576, d_v 512) included?

One line per kernel x (H_I, d_I) x tile: the dynamic shared memory the launch would ask for (a block may
have at most SHARED_LIMIT bytes: Triton raises OutOfResources above it), the registers per thread and the
bytes spilled to local memory (ptxas -v on the PTX that Triton produced, with Triton's ptxas options).
The constexprs come from the launch code (``_pass_meta`` / ``_at_meta``), the heads padded as the wrappers
pad them. Exit status 1 when a launch would not fit.

    python scripts/check_kernel_resources.py [--sizes 4x64,64x128] [--dtypes bf16,fp32,fp8] [--all-tiles]
    python scripts/check_kernel_resources.py --only attention [--attention 128x1x576x512] [--all-tiles]
    (the indexer kernels by default; --attention adds the attention layouts, --only picks one family)

Attention sizes are H x H_kv x d_qk x d_v; each gives the forward, the backward with atomic dK/dV and with
dQ only (the first kernel of dkv 'inverted' and 'headsum'), the inverted dK/dV kernel, the headsum dK/dV
kernel and the probabilities kernel, at the launch code's tiles (``dsa.ops.kernels.sparse_attention.attn_meta``,
``dkv_meta``), with --all-tiles also at ATTN_TILES and HEADSUM_TILES.

fp8: the score pass on e4m3 operands with per-key scales (the FP8 indexer, ``dsa.ops.quantize``); the
scores-at kernels have no fp8 launch (the KL loss scores in the indexer's own dtype). The FP8 indexer's
quantization kernel (``quantize_rows``, rotated and not) runs once per d_I in each non-fp8 dtype.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHARED_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (H100, H200): 227 KiB
ARCH = 90
SIZES = ((1, 16), (3, 24), (4, 64), (8, 64), (4, 128), (5, 64), (48, 128), (64, 128), (128, 128), (256, 128))
FAST_TILE = (64, 64, 4)  # indexer_topk_threshold's default block_m (compiled), block_n and warps
BENCH_TILES = tuple((bm, bn, w) for bm in (64, 128) for bn in (64, 128) for w in (4, 8))  # dsa.bench.kernels's tuning set
ATTN_SIZES = ((128, 1, 576, 512), (64, 1, 576, 512), (16, 1, 576, 512), (64, 1, 128, 128), (16, 2, 128, 128),
              (16, 16, 128, 128))
# (pass, block_h, block_k, warps, stages): the tiles timed by dsa.bench.mla's tuning sweep
ATTN_TILES = tuple(("fwd", bh, bk, 8, st) for bh in (32, 64) for bk in (32, 64) for st in (2, 3)) + \
    tuple(("bwd", bh, bk, 8, st) for bh in (32, 64) for bk in (16, 32) for st in (1, 2))
# (block_h, block_k, warps, stages) of the headsum dK/dV kernel tried at sm_90a (the reasoning of the chosen ones:
# dsa.ops.kernels.sparse_attention._HEADSUM_TILE); 8 heads only where v is a view of k (interleaved rows)
HEADSUM_TILES = ((8, 64, 8, 1), (8, 64, 8, 2), (8, 64, 8, 3), (16, 64, 8, 2), (16, 64, 8, 3), (32, 64, 8, 2),
                 (8, 64, 16, 2), (8, 32, 8, 2), (16, 32, 8, 2), (32, 32, 8, 2), (16, 16, 4, 2))
L, KSEL = 8192, 2048  # a representative sequence and selection: they only decide the 16-divisible integers


@dataclass
class Case:
    """One launch configuration: kernel name, heads and dims as the caller gives them, dtype of q/k,
    tile label and the compile-time arguments."""

    kernel: str
    h: int
    di: int
    dtype: str
    tile: str
    meta: dict
    types: dict  # pointer argument -> triton type
    ints: dict  # integer argument -> a representative value


def _torch_dtype(name: str):
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}
    return dtypes[name]


TRITON_TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp8": "fp8e4nv"}


def pass_cases(h: int, di: int, dtype: str, tiles) -> list[Case]:
    """idx_pass_kernel: modes 0-2 at indexer_topk_threshold's tile, mode 3 (the score pass of
    indexer_topk_chunked) at each of ``tiles`` (block_m, block_n, warps), mode 2 at the fused top-k's tile
    (indexer_fused.FUSED_TILE; every one of ``tiles`` when several); heads padded to a power of two."""
    from dsa.ops.kernels._common import next_pow2
    from dsa.ops.kernels.indexer import _pass_meta

    hp = next_pow2(h)
    cases = []
    # mode 3 (the chunked top-k's score pass) at the score tile(s), mode 2 at the fused top-k's (indexer_fused)
    from dsa.ops.kernels.indexer_fused import FUSED_TILE

    fused_tiles = tiles if len(tiles) > 1 else (FUSED_TILE,)
    configs = ([(mode, FAST_TILE, 16) for mode in (0, 1, 2)] + [(3, tile, 4) for tile in tiles]
               + [(2, tile, 4) for tile in fused_tiles])
    for mode, (bm, bn, warps), nt in configs:
        meta = _pass_meta(mode, hp, di, _torch_dtype(dtype), bm, bn, nt, warps, interp=False,
                          ks_scaled=dtype == "fp8")
        ty = TRITON_TYPES[dtype]
        types = dict(QI=f"*{ty}", KI=f"*{ty}", W="*fp32", THR="*fp32", CNT="*i32", LO="*fp32", HI="*fp32",
                     OUT="*fp32" if mode == 3 else "*i32", BND="*i32", BNDV="*fp32", RMAX="*fp32", RMIN="*fp32",
                     KS="*fp32")
        ints = dict(sqb=L * hp * di, sql=hp * di, skb=L * di, skl=di, swb=L * hp, swl=hp, stb=L * nt, stl=nt,
                    slb=L, sob=L * KSEL, sol=KSEL, sksb=L, L=L, KMAX=KSEL, ROW0=0, ROW_END=L)
        cases.append(Case(f"idx_pass mode {mode}", h, di, dtype, f"{bm}x{bn}/{warps}w", meta, types, ints))
    return cases


# (queries, keys, warps) of the heads-as-N score kernel tried at sm_90a (indexer_chunked.HN_TILE first)
HN_TILES = ((2, 64, 4), (1, 64, 4), (2, 128, 8), (4, 64, 8), (2, 32, 4))


def hn_cases(h: int, di: int, dtype: str, tiles=HN_TILES[:1]) -> list[Case]:
    """idx_scores_hn_kernel (indexer_chunked.score_rows_hn, the heads-as-N score kernel) at each of ``tiles``."""
    from dsa.ops.kernels._common import next_pow2
    from dsa.ops.kernels.indexer_chunked import hn_meta

    hp, ty = next_pow2(h), TRITON_TYPES[dtype]
    types = dict(QI=f"*{ty}", KI=f"*{ty}", W="*fp32", OUT="*fp32", KS="*fp32")
    ints = dict(sqb=L * hp * di, sql=hp * di, skb=L * di, skl=di, swb=L * hp, swl=hp, sob=L * KSEL, sol=KSEL,
                sksb=L, L=L, ROW0=0, ROW_END=L)
    return [Case("idx_scores_hn", h, di, dtype, f"{bq}q{bn}k/{w}w",
                 hn_meta(hp, di, _torch_dtype(dtype), bq, bn, w, interp=False, ks_scaled=dtype == "fp8"), types, ints)
            for bq, bn, w in tiles]


def at_cases(h: int, di: int, dtype: str) -> list[Case]:
    """idx_at_fwd_kernel and idx_at_bwd_kernel (indexer_scores_at and its backward)."""
    from dsa.ops.kernels.indexer import _at_meta

    meta = _at_meta(h, di, _torch_dtype(dtype), interp=False)
    tile = f"{meta['BLOCK_K']}/{meta['num_warps']}w"
    ints = dict(sqb=L * h * di, sql=h * di, skb=L * di, skl=di, swb=L * h, swl=h, sib=L * KSEL, sil=KSEL,
                sdkb=L * di, sdkl=di, KSEL=KSEL)
    fwd = dict(QI=f"*{dtype}", KI=f"*{dtype}", W=f"*{dtype}", IDX="*i32", OUT="*fp32")
    bwd = dict(fwd, GO="*fp32", DQ="*fp32", DK="*fp32", DW="*fp32")
    del bwd["OUT"]
    return [Case("idx_at_fwd", h, di, dtype, tile, meta, fwd, ints),
            Case("idx_at_bwd", h, di, dtype, tile, meta, bwd, ints)]


def quant_cases(di: int, dtype: str) -> list[Case]:
    """quantize_rows_kernel (the FP8 indexer's rotation + quantization, dsa.ops.kernels.quantize) on rows of
    d_I values, rotated (d_I a power of two) and not; no fp8 launch (it reads the bf16/fp16/fp32 rows it
    quantizes)."""
    from dsa.ops.kernels.quantize import quantize_meta

    ty = TRITON_TYPES[dtype]
    types = dict(X=f"*{ty}", H=f"*{ty}", V="*fp8e4nv", S="*fp32", AMAX_FLOOR="fp32")
    cases = []
    for rotate in (True, False) if di & (di - 1) == 0 else (False,):
        meta = quantize_meta(di, _torch_dtype(dtype), rotate, interp=False)
        cases.append(Case("quantize_rows" + (" rot" if rotate else ""), 1, di, dtype,
                          f"{meta['BLOCK_R']}r/{meta['num_warps']}w", meta, types, dict(N=L * 64)))
    return cases


def attn_cases(h: int, hkv: int, d: int, dv: int, dtype: str, tiles=(), headsum_tiles=()) -> list[Case]:
    """The sparse-attention kernels at one layout: forward, backward (atomic dK/dV, and dQ only), the inverted
    dK/dV kernel, the headsum dK/dV kernel, the probabilities kernel, at the launch code's tiles; then each of
    ``tiles`` and ``headsum_tiles``."""
    from dsa.ops.kernels._common import next_pow2
    from dsa.ops.kernels.sparse_attention import attn_meta, dkv_meta, split_dim

    g, td = h // hkv, _torch_dtype(dtype)
    # MLA's latent layout (d_v = the power-of-two part of d_qk, one K/V head): the layer passes v as a view
    # of k, and the kernels reuse each K block as the V block
    shared = dict(shared_kv=hkv == 1 and dv == split_dim(d)[0] < d)
    ints = dict(sqb=L * h * d, sqh=L * d, sql=d, skb=L * hkv * d, skh=L * d, skl=d, svb=L * hkv * dv, svh=L * dv,
                svl=dv, sib=L * KSEL, sil=KSEL, sob=L * h * dv, soh=L * dv, sol=dv, slb=L * h, slh=L,
                sdob=L * h * dv, sdoh=L * dv, sdol=dv, sgqb=L * h * d, sgqh=L * d, sgql=d, sgkb=L * hkv * d,
                sgkh=L * d, sgkl=d, sgvb=L * hkv * dv, sgvh=L * dv, sgvl=dv, spb=L * KSEL, spl=KSEL, HKV=hkv,
                KSEL=KSEL, NHB=3, NKB=64, L=L)
    ptr = f"*{dtype}"
    fwd_t = dict(Q=ptr, K=ptr, V=ptr, IDX="*i32", O=ptr, LSE="*fp32", sm_scale="fp32")
    bwd_t = dict(fwd_t, DO=ptr, DELTA="*fp32", GQ=ptr, GK="*fp32", GV="*fp32")
    size = f"{h}/{hkv}x{d}/{dv}"

    def case(kernel, meta, types):
        tile = f"{meta.get('BLOCK_H', g)}h{meta.get('BLOCK_K', meta.get('BLOCK_T'))}k/{meta.get('num_warps', 4)}w" + \
            (f"/{meta['num_stages']}s" if "num_stages" in meta else "")
        return Case(kernel, size, 0, dtype, tile, meta, types, ints)

    cases = [case("attn_fwd", attn_meta(g, d, dv, td, "fwd", **shared), fwd_t),
             case("attn_bwd atomic", dict(attn_meta(g, d, dv, td, "bwd", **shared), DKV_ATOMIC=True), bwd_t),
             case("attn_bwd dq", dict(attn_meta(g, d, dv, td, "bwd", **shared), DKV_ATOMIC=False), bwd_t)]
    inv = dict(G=g, D=d, D_PAD=next_pow2(d), DV=dv, DV_PAD=next_pow2(dv),
               BLOCK_T=max(1, min(32, 8192 // max(next_pow2(d), next_pow2(dv)))), num_warps=4)
    cases.append(case("attn_dkv_inv", inv, dict(bwd_t, INV_T="*i32", INV_START="*i32", GK=ptr, GV=ptr)))
    # rows 16-byte aligned: the strides here (L * d, d) are multiples of 8 elements at every size above
    cases.append(case("attn_dkv_hsum", dkv_meta(g, d, dv, td, aligned=True, **shared), bwd_t))
    probs = {k: v for k, v in attn_meta(g, d, d, td, "fwd").items()
             if k not in ("DV", "DV_PAD", "num_warps", "V_FROM_K")}
    probs.update(BLOCK_K=32, num_warps=4, num_stages=2)
    probs_t = dict(Q=ptr, K=ptr, IDX="*i32", LSE="*fp32", P="*fp32", sm_scale="fp32", inv_h="fp32")
    cases.append(case("attn_probs", probs, probs_t))
    # the per-query probabilities kernel at the forward's tiles (sparse_attention._probs_by_query)
    probs_q = {k: v for k, v in attn_meta(g, d, d, td, "fwd").items() if k not in ("DV", "DV_PAD", "V_FROM_K")}
    cases.append(case("attn_probs_q", probs_q, probs_t))
    for pass_, bh, bk, w, st in tiles:
        meta = attn_meta(g, d, dv, td, pass_, block_h=bh, block_k=bk, num_warps=w, num_stages=st, **shared)
        if pass_ == "bwd":
            meta["DKV_ATOMIC"] = True
        cases.append(case(f"attn_{pass_}" + (" atomic" if pass_ == "bwd" else ""), meta,
                          fwd_t if pass_ == "fwd" else bwd_t))
    for bh, bk, w, st in headsum_tiles:
        if bh >= 16 or shared["shared_kv"]:
            meta = dkv_meta(g, d, dv, td, block_h=bh, block_k=bk, num_warps=w, num_stages=st, aligned=True, **shared)
            cases.append(case("attn_dkv_hsum", meta, bwd_t))
    return cases


def _jitted(kernel: str):
    """A compiled-mode JITFunction (whatever TRITON_INTERPRET says: the interpreter's function cannot be
    compiled ahead of time)."""
    from triton.runtime.jit import JITFunction

    from dsa.ops.kernels import _indexer_kernels as m
    from dsa.ops.kernels import _quantize_kernels as qk
    from dsa.ops.kernels import _sparse_attn_kernels as a

    fn = {"idx_pass": m.idx_pass_kernel, "idx_at_fwd": m.idx_at_fwd_kernel, "idx_at_bwd": m.idx_at_bwd_kernel,
          "idx_scores_hn": m.idx_scores_hn_kernel, "quantize_rows": qk.quantize_rows_kernel,
          "attn_fwd": a.sparse_attn_fwd_kernel, "attn_bwd": a.sparse_attn_bwd_kernel,
          "attn_dkv_inv": a.sparse_attn_dkv_inv_kernel, "attn_dkv_hsum": a.sparse_attn_dkv_headsum_kernel,
          "attn_probs": a.sparse_attn_probs_kernel, "attn_probs_q": a.sparse_attn_probs_query_kernel}
    return JITFunction(fn[kernel.split()[0]])


def compile_case(case: Case):
    """Compiles one case for sm_90a; returns triton's CompiledKernel (nothing is loaded on a device)."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = _jitted(case.kernel)
    meta = dict(case.meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in meta:
            signature[name] = "constexpr"
        elif name in case.types:
            signature[name] = case.types[name]
            if case.types[name].startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        else:
            signature[name] = "i32"
            if case.ints[name] % 16 == 0:  # as the launch specializes 16-divisible integers
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=meta, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=options)


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) from ptxas -v on ``ptx``, with Triton's ptxas for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([get_ptxas(ARCH).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{ARCH}a",
                              str(src), "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=True)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spills = re.search(r"(\d+) bytes spill stores", res.stderr)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


def measure(case: Case) -> dict:
    """Shared bytes, registers, spill bytes and whether the launch fits, for one case."""
    compiled = compile_case(case)
    regs, spills = ptxas_report(compiled.asm["ptx"])
    shared = int(compiled.metadata.shared)
    return dict(shared=shared, regs=regs, spills=spills, fits=shared <= SHARED_LIMIT)


def all_cases(sizes, dtypes, tiles, hn_tiles=HN_TILES[:1]) -> list[Case]:
    quant_dims = sorted({di for _, di in sizes})  # the quantization kernel depends on d_I only
    return [c for dtype in dtypes for h, di in sizes
            for c in pass_cases(h, di, dtype, tiles) + hn_cases(h, di, dtype, hn_tiles)
            + (at_cases(h, di, dtype) if dtype != "fp8" else [])] + \
        [c for dtype in dtypes if dtype != "fp8" for di in quant_dims for c in quant_cases(di, dtype)]


def all_attn_cases(sizes, dtypes, tiles, headsum_tiles=()) -> list[Case]:
    return [c for dtype in dtypes for size in sizes for c in attn_cases(*size, dtype, tiles, headsum_tiles)]


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in s.split("x")) for s in text.split(","))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=_parse_sizes, default=SIZES, help="H_IxD_I,... (default: %(default)s)")
    ap.add_argument("--dtypes", default="bf16,fp32", help="q/k dtypes: bf16, fp16, fp32, fp8 (default: %(default)s)")
    ap.add_argument("--all-tiles", action="store_true", help="the score pass at dsa.bench.kernels's 8 tiles too")
    ap.add_argument("--attention", type=_parse_sizes, default=None,
                    help=f"sparse-attention layouts H x H_kv x d_qk x d_v,... (with --only attention, default: "
                         f"{','.join('x'.join(map(str, s)) for s in ATTN_SIZES)})")
    ap.add_argument("--only", choices=("indexer", "attention"), default=None, help="one family of kernels")
    args = ap.parse_args(argv)
    from dsa.ops.kernels.indexer_chunked import SCORE_TILE

    tiles = BENCH_TILES if args.all_tiles else (SCORE_TILE,)
    dtypes = args.dtypes.split(",")
    cases = [] if args.only == "attention" else all_cases(args.sizes, dtypes, tiles,
                                                          HN_TILES if args.all_tiles else HN_TILES[:1])
    if args.only == "attention" or (args.attention and args.only != "indexer"):
        cases += all_attn_cases(args.attention or ATTN_SIZES, dtypes, *((ATTN_TILES, HEADSUM_TILES) if args.all_tiles
                                                                      else ((), ())))
    print(f"{'kernel':<16} {'dtype':<5} {'size':>14} {'tile':>14} {'shared B':>9} {'regs':>5} {'spill B':>8}  fits")
    bad = 0
    for case in cases:
        r = measure(case)
        bad += not r["fits"]
        size = case.h if isinstance(case.h, str) else f"{case.h}x{case.di}"
        print(f"{case.kernel:<16} {case.dtype:<5} {size:>14} {case.tile:>14} {r['shared']:>9} "
              f"{r['regs']:>5} {r['spills']:>8}  {'yes' if r['fits'] else 'NO'}", flush=True)
    print(f"{bad} launch(es) over the {SHARED_LIMIT} B shared-memory limit of sm_{ARCH}" if bad else "all fit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dsa package of this checkout
    sys.exit(main())
