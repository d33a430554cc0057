"""Benchmark: dense attention baselines vs the DSA path (indexer + top-k + sparse attention).

    python -m dsa bench                       # full sweep on CUDA (L = 1K..64K, k = 2048 and L/8)
    python -m dsa bench --quick               # tiny sizes; on CPU the reference paths only (smoke test)
    python -m dsa bench --seq-lens 4096 32768 --top-k 2048 --out data/bench/x.json

Every number of one run comes from the same process: triton.testing.do_bench (median) on CUDA, a
perf_counter median on CPU. Columns (ms): SDPA flash causal, FlexAttention causal, the seeds' masked SDPA
(L x L mask, small L only), the gather reference (small L only), torch.topk (sorted, and sorted=False) over
precomputed scores vs our top-k over the same scores (radix_topk), our indexer top-k with its scores (the fused
threshold search indexer_topk_fast, and stored score chunks + radix_topk: indexer_topk_chunked), the sparse
kernel alone, and selection + attention through ``dsa.ops`` (``dsa_*`` columns: the op's indexer top-k + sparse
attention; fwd+bwd = attention backward, the selection carries no gradient; the model's whole layer, with its
projections and KL loss, is ``dsa.bench.layer``), plus
indexer_scores_at fwd+bwd (the KL-loss path). FLOPs: dense causal fwd 2*L^2*H*d, sparse fwd 4*H*d*sum_t min(t+1, k)
(the pairs a causal top-k attends to), fwd+bwd = 3.5 x fwd for both.

The file holds raw timings only, with the project's one provenance schema (``dsa.provenance.provenance``, the
timer and the sparse path under ``provenance['bench']``) and each row's k rule as designed (``k_rule``:
'k=2048', 'k=L/8', or 'k=2048=L/8' where both give the same k); ratios (speed-ups) are derived when the
file is read (``dsa.study.bench_tables``).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from dsa import ops
from dsa.checks import check_int
from dsa.ops import expand_kv, seed_masked_attention, selection_to_mask
from dsa.ops.attention import sparse_attention_gather
from dsa.ops.dispatch import impl_on_device
from dsa.ops.flops import attention_flops
from dsa.provenance import provenance, run_writing_json


def _timer(fn: Callable[[], object], cuda: bool, grad_to_none=None) -> float:
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grad_to_none,
                                             return_mode="median"))
    ts = []
    for i in range(4):
        if grad_to_none:
            for x in grad_to_none:
                x.grad = None
        t0 = time.perf_counter()
        fn()
        if i:  # first call is the warm-up
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _measure(fn, cuda, grad_to_none=None):
    """(ms, peak MiB) or (None, reason) on OOM / error."""
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = _timer(fn, cuda, grad_to_none)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
        return ms, peak
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, "oom"
    except Exception as exc:  # keep the sweep going, record why
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _flex():
    try:
        # one compiled kernel per shape: the default recompile limit (8) made later shapes fall back to the
        # unfused path (the recorded 16K FlexAttention rows are that artefact)
        import torch._dynamo.config as dcfg  # noqa: PLC0415
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dcfg, name):
                setattr(dcfg, name, max(getattr(dcfg, name), 256))

        return torch.compile(flex_attention, dynamic=False), create_block_mask
    except Exception:
        return None, None


def _causal_scores(qi: torch.Tensor, ki: torch.Tensor, wi: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The causal indexer scores (B, L, L) fp32 (-inf above the diagonal), built a query chunk at a time:
    the one-shot product holds a (B, L, H_I, L) logit tensor (64 GiB at L = 64K, H_I = 4)."""
    from dsa.ops import indexer_scores  # noqa: PLC0415

    b, l = qi.shape[:2]
    out = torch.empty(b, l, l, device=qi.device, dtype=torch.float32)
    for t0 in range(0, l, chunk):
        out[:, t0:t0 + chunk] = indexer_scores(qi[:, t0:t0 + chunk], ki, wi[:, t0:t0 + chunk], q_start=t0)
    return out


TOPK_BAND = 2048  # rows per torch.topk call of the banded baseline


def _radix_or_reference(scores_on_cuda: bool) -> Callable:
    """The radix top-k kernel (with its tuning knobs) on CUDA; on CPU the op's reference with the kernel's
    signature (the knobs ignored, ``stats`` filled with -1: no kernel ran), as the CPU smoke run needs."""
    if scores_on_cuda:
        from dsa.ops.kernels.radix_topk import radix_topk  # noqa: PLC0415

        return radix_topk

    def reference(scores, k, lengths=None, *, out_dtype=torch.int64, stats=None, **_knobs):
        if stats is not None:
            stats.fill_(-1)
        return ops.topk_positions(scores, k, lengths, out_dtype=out_dtype, impl="reference")

    return reference


def _selection_over_scores(row: dict, rec, qi, ki, wi, k: int, tune: bool = False, profile: bool = False) -> None:
    """torch.topk vs our top-k kernel (sampled bracket, radix fallback) and the radix select alone, over the
    same precomputed causal scores; records whether they select the same scores as torch.topk (as
    multisets: ties may pick different positions) and the share of rows the sampled bracket served.
    tune (CUDA): also times our kernels over a grid of sample sizes (0 = radix only), block sizes and warps;
    profile: times each kernel launch of our top-k on its own (``radix_stages_ms``, in launch order)."""
    from dsa.ops import causal_lengths  # noqa: PLC0415
    from dsa.ops.kernels.radix_topk import DEFAULT_SAMPLE, READS_PER_ROW_SAMPLED  # noqa: PLC0415

    radix_topk = _radix_or_reference(scores_on_cuda=qi.is_cuda)
    l = qi.shape[1]
    scores = _causal_scores(qi, ki, wi)
    lens = causal_lengths(l, qi.device, batch=qi.shape[0])
    rec("torch_topk", lambda: torch.topk(scores, k, dim=-1))
    rec("torch_topk_unsorted", lambda: torch.topk(scores, k, dim=-1, sorted=False))

    def banded():  # torch.topk over each band of rows' causal prefix: about the half of the scores ours reads
        for t0 in range(0, l, TOPK_BAND):
            t1 = min(l, t0 + TOPK_BAND)
            torch.topk(scores[:, t0:t1, :t1], min(k, t1), dim=-1)

    rec("torch_topk_banded", banded)
    row["radix_reads_per_row"] = READS_PER_ROW_SAMPLED
    rec("radix_topk", lambda: radix_topk(scores, k, lens, out_dtype=torch.int32))
    rec("radix_only", lambda: radix_topk(scores, k, lens, sample=0, out_dtype=torch.int32))
    ref = torch.topk(scores, k, dim=-1).values.sort(dim=-1).values
    for name, kw in (("radix", {}), ("radix_only", {"sample": 0})):  # the timed calls' arguments
        stats = torch.empty(lens.shape, dtype=torch.int32, device=lens.device)
        got_idx = radix_topk(scores, k, lens, stats=stats, **kw)
        got = torch.where(got_idx >= 0, scores.gather(-1, got_idx.clamp(min=0)), float("-inf")).sort(dim=-1).values
        row[f"{name}_same_scores"] = bool(torch.equal(got, ref))
        long_rows = stats > 0  # 0: a row shorter than k; -1: no kernel ran (the reference on CPU)
        if name == "radix" and bool(long_rows.any()):
            row["radix_sampled_share"] = float((stats[long_rows] == 1).float().mean())
        del got, got_idx
    del ref
    if profile:
        from dsa.ops.kernels.radix_topk import _stages  # noqa: PLC0415

        _, stages = _stages(scores, k, lens, block=None, sample=DEFAULT_SAMPLE, cap=None, stats=None, num_warps=None)
        for _, launch in stages:  # once in order: each launch then finds what the ones before it wrote
            launch()
        row["radix_stages_ms"] = {name: _measure(launch, True)[0] for name, launch in stages}
    if tune:
        _tune_selection(row, scores, k, lens, qi, ki, wi)
    del scores
    if l <= 32768:  # the one-shot product needs a (B, L, H_I, L) logit tensor
        from dsa.ops import indexer_scores  # noqa: PLC0415

        rec("scores_plus_torch_topk", lambda: torch.topk(indexer_scores(qi, ki, wi), k, dim=-1))
    rec("chunked_scores_plus_radix", lambda: radix_topk(_causal_scores(qi, ki, wi), k, lens, out_dtype=torch.int32))


def _tune_selection(row: dict, scores, k: int, lens, qi, ki, wi) -> None:
    """CUDA: times our top-k over sample sizes (``radix_tuning``), its
    launches over their own settings (``radix_stage_tuning``: the bracket gather's block and warps, the bracket
    select's chunk and warps, the fallback radix passes' block and warps), and the indexer score pass of
    ``indexer_topk_chunked`` over its tiles (``score_tile_tuning``: all chunks of the sequence, ms) and the
    whole of it over chunk sizes (``chunk_tuning``: 1, 2, 4 x the default rows)."""
    from dsa.ops.kernels._common import next_pow2  # noqa: PLC0415
    from dsa.ops.kernels.indexer import _pad_heads  # noqa: PLC0415
    from dsa.ops.kernels.indexer_chunked import default_chunk, score_rows, score_tile  # noqa: PLC0415
    from dsa.ops.kernels.radix_topk import DEFAULT_SAMPLE, _stages, radix_topk  # noqa: PLC0415

    row["radix_tuning"] = [  # each launch at its own default tile
        {"sample": sm, "ms": _measure(lambda: radix_topk(scores, k, lens, sample=sm, out_dtype=torch.int32), True)[0]}
        for sm in (256, 512, 1024)]
    grid = [("bracket_gather", {"gather_block": bl, "gather_warps": w}) for bl in (128, 256, 512, 1024)
            for w in (1, 2, 4)]
    grid += [("bracket_select", {"select_block": bl, "select_warps": w}) for bl in (64, 128, 256, 512)
             for w in (1, 2, 4)]
    grid += [(stage, {"fallback_block": bl, "fallback_warps": w}) for stage in ("radix_threshold", "write_positions")
             for bl, w in ((1024, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16))]
    row["radix_stage_tuning"] = []
    for stage, tune in grid:
        _, stages = _stages(scores, k, lens, block=None, sample=DEFAULT_SAMPLE, cap=None, stats=None, num_warps=None,
                            tune=tune)
        for _, launch in stages:
            launch()
        launch = dict(stages)[stage]
        row["radix_stage_tuning"].append({"stage": stage, **tune, "ms": _measure(launch, True)[0]})
    b, l, h, _ = qi.shape
    qp, wp = _pad_heads(qi, wi.float(), next_pow2(h))
    kc = ki.contiguous()
    row["score_tile_tuning"] = []
    for tile in [(bm, bn, w) for bm in (64, 128) for bn in (64, 128) for w in (4, 8)]:
        chunk = default_chunk(l, tile[0], b)
        buf = torch.empty(b, min(chunk, l), l, device=qi.device)

        def all_chunks(tile=tile, chunk=chunk, buf=buf):
            for t0 in range(0, l, chunk):
                score_rows(qp, kc, wp, buf, t0, min(l, t0 + chunk), tile=tile)

        row["score_tile_tuning"].append({"block_m": tile[0], "block_n": tile[1], "num_warps": tile[2],
                                         "ms": _measure(all_chunks, True)[0]})
        del buf
    base = default_chunk(l, score_tile()[0], b)
    row["chunk_tuning"] = [{"chunk": c, "ms": _measure(lambda: indexer_topk_chunked(qi, ki, wi, k, chunk=c), True)[0]}
                           for c in sorted({min(base * m, l) for m in (1, 2, 4)})]


L8 = 0  # a --top-k of 0 means k = L/8


def k_rules(l: int, top_ks: list[int]) -> dict[int, str]:
    """k -> its rule as designed, for the ``top_ks`` asked for at length ``l`` (0 meaning L/8): 'k=2048',
    'k=L/8', and 'k=2048=L/8' where two rules give the same k (each k is timed once). A k outside [1, L] is
    left out."""
    out: dict[int, str] = {}
    for k in top_ks:
        kk, rule = (l // 8, "L/8") if k == L8 else (k, str(k))
        if 1 <= kk <= l:
            out[kk] = f"{out[kk]}={rule}" if kk in out else f"k={rule}"
    return out


def run(args: KernelBenchConfig, on_row: Callable[[dict], None] | None = None) -> dict:
    """The benchmark rows of ``args`` (every (L, k, H_kv) of :meth:`KernelBenchConfig.configurations`)."""
    cuda = torch.cuda.is_available() and not args.cpu
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    h, d = args.heads, args.head_dim
    hi, di = args.indexer_heads, args.indexer_dim
    impl = impl_on_device("auto", dev)
    triton_path = impl == "triton"
    flex_fn, create_block_mask = _flex() if (cuda and args.flex) else (None, None)
    configs = args.configurations()
    rows: list = []
    prov = provenance(dev)
    prov["bench"] = {"sparse_path": impl,
                     "timer": "triton.testing.do_bench median" if cuda else "perf_counter median of 3 (CPU)"}
    res = dict(provenance=prov, config=dict(asdict(args), device_kind="cuda" if cuda else "cpu"), rows=rows)
    try:
        from tqdm import tqdm
    except Exception:  # pragma: no cover
        def tqdm(x, **_):
            return x
    for l, k, rule, hkv in tqdm(configs, desc="dsa.bench.kernels", file=sys.stderr):
        torch.manual_seed(0)
        row: dict = dict(L=l, k=k, k_rule=rule, H=h, H_kv=hkv, d=d, H_I=hi, d_I=di,
                         dtype=str(dtype).replace("torch.", ""))
        q = torch.randn(1, h, l, d, device=dev, dtype=dtype, requires_grad=True)
        kx = torch.randn(1, hkv, l, d, device=dev, dtype=dtype, requires_grad=True)
        vx = torch.randn(1, hkv, l, d, device=dev, dtype=dtype, requires_grad=True)
        go = torch.randn(1, h, l, d, device=dev, dtype=dtype)
        qi = torch.randn(1, l, hi, di, device=dev, dtype=dtype)
        ki = torch.randn(1, l, di, device=dev, dtype=dtype)
        wi = (torch.randn(1, l, hi, device=dev) * (hi**-0.5 * di**-0.5)).to(dtype)
        leaves = [q, kx, vx]
        dense_f = 2.0 * l * l * h * d
        sparse_f = attention_flops(l, h, d, keys_per_query=k)

        def rec(name, fn, flops=None, grad=False):
            ms, peak = _measure(fn, cuda, leaves if grad else None)
            if ms is None:
                row[name] = None
                row[name + "_why"] = peak
                return
            row[name + "_ms"] = ms
            row[name + "_peak_mib"] = peak
            if flops:
                row[name + "_tflops"] = flops * (3.5 if grad else 1.0) / ms / 1e9

        def fb(f):
            def g():
                f().backward(go)
            return g

        gqa = hkv != h

        def sdpa():
            if cuda:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, kx, vx, is_causal=True, enable_gqa=gqa)
            return F.scaled_dot_product_attention(q, expand_kv(kx, h), expand_kv(vx, h), is_causal=True)

        if not args.selection_only:
            rec("flash_fwd", lambda: sdpa(), dense_f)
            rec("flash_fwdbwd", fb(sdpa), dense_f, grad=True)
            if flex_fn is not None and l <= args.flex_max_len:
                try:
                    bm = create_block_mask(lambda b_, h_, qi_, ki_: qi_ >= ki_, None, None, l, l, device=dev)
                    flex = lambda: flex_fn(q, kx, vx, block_mask=bm, enable_gqa=gqa)  # noqa: E731
                    rec("flex_fwd", flex, dense_f)
                    if args.flex_bwd:
                        rec("flex_fwdbwd", fb(flex), dense_f, grad=True)
                except Exception as exc:
                    row["flex_why"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        # the selection (no grad)
        stats: dict = {}
        k_rows = torch.full((1, l), k, device=dev, dtype=torch.long)  # a per-query k: the threshold search
        if triton_path:
            from dsa.ops.kernels.indexer import indexer_topk_threshold  # noqa: PLC0415

            indexer_topk_threshold(qi, ki, wi, k_rows, stats=stats)
            row["topk_passes"] = stats.get("passes")
        rec("topk_fast", lambda: ops.indexer_topk(qi, ki, wi, k_rows, impl=impl))
        rec("topk_chunked", lambda: ops.indexer_topk(qi, ki, wi, k, impl=impl))
        # the op (and so the model) selects a fixed k through stored score chunks
        row["layer_selection"] = "topk_chunked"
        sel = ops.indexer_topk(qi, ki, wi, k, impl=impl)
        select = lambda: ops.indexer_topk(qi, ki, wi, k, impl=impl)  # noqa: E731
        if l <= args.scores_max_len:
            try:
                _selection_over_scores(row, rec, qi, ki, wi, k, tune=args.tune_selection and cuda,
                                       profile=args.profile_selection and cuda)
            except torch.cuda.OutOfMemoryError:
                row["torch_topk_why"] = "oom"
                torch.cuda.empty_cache()
        if args.selection_only:
            rows.append(row)
            if on_row is not None:
                on_row(res)
            del q, kx, vx, go, qi, ki, wi, sel, leaves
            if cuda:
                torch.cuda.empty_cache()
            continue
        idx, valid = sel, sel >= 0
        # the sparse kernel alone and selection + attention (the layer itself: dsa.bench.layer)
        sp = lambda: ops.sparse_attention(q, kx, vx, idx, impl=impl)  # noqa: E731
        rec("sparse_fwd", sp, sparse_f)
        rec("sparse_fwdbwd", fb(sp), sparse_f, grad=True)

        def layer():
            return ops.sparse_attention(q, kx, vx, select(), impl=impl)

        rec("dsa_fwd", layer, sparse_f)
        rec("dsa_fwdbwd", fb(layer), sparse_f, grad=True)
        qis, kis, wis = (x.clone().requires_grad_() for x in (qi, ki, wi))
        gs = torch.randn(1, l, k, device=dev)

        def sat():
            o = ops.indexer_scores_at(qis, kis, wis, idx, impl=impl)
            (o.masked_fill(~valid, 0) * gs).sum().backward()

        ms, _ = _measure(sat, cuda, [qis, kis, wis])
        row["indexer_at_fwdbwd_ms"] = ms
        if l <= args.masked_max_len:
            mask = selection_to_mask(sel, l)
            rec("masked_fwd", lambda: seed_masked_attention(q, kx, vx, mask), dense_f)
            rec("masked_fwdbwd", fb(lambda: seed_masked_attention(q, kx, vx, mask)), dense_f, grad=True)
            del mask
        if l <= args.gather_max_len:
            gather = lambda: sparse_attention_gather(q, kx, vx, idx, scale=d**-0.5)[0]  # noqa: E731
            rec("gather_fwd", gather, sparse_f)
            rec("gather_fwdbwd", fb(gather), sparse_f, grad=True)
        rows.append(row)
        if on_row is not None:
            on_row(res)
        del q, kx, vx, go, qi, ki, wi, sel, idx, valid, leaves
        if cuda:
            torch.cuda.empty_cache()
    return res


COLS = [
    ("L", "L", "{:d}"), ("k", "k", "{:d}"), ("H_kv", "Hkv", "{:d}"),
    ("flash_fwd_ms", "flash", "{:.2f}"), ("flex_fwd_ms", "flex", "{:.2f}"), ("masked_fwd_ms", "masked", "{:.2f}"),
    ("gather_fwd_ms", "gather", "{:.2f}"), ("sparse_fwd_ms", "sparse", "{:.2f}"),
    ("sparse_fwd_tflops", "sp TF/s", "{:.0f}"), ("flash_fwd_tflops", "fl TF/s", "{:.0f}"),
    ("torch_topk_ms", "t.topk", "{:.2f}"), ("radix_topk_ms", "ours", "{:.2f}"),
    ("radix_only_ms", "radix", "{:.2f}"),
    ("topk_fast_ms", "topk", "{:.2f}"), ("topk_chunked_ms", "topk ch", "{:.2f}"), ("dsa_fwd_ms", "dsa", "{:.2f}"),
    ("flash_fwdbwd_ms", "flash f+b", "{:.2f}"), ("masked_fwdbwd_ms", "mask f+b", "{:.2f}"),
    ("sparse_fwdbwd_ms", "sp f+b", "{:.2f}"), ("dsa_fwdbwd_ms", "dsa f+b", "{:.2f}"),
    ("indexer_at_fwdbwd_ms", "idx@ f+b", "{:.2f}"),
]


def table(res: dict) -> str:
    head = [c[1] for c in COLS]
    """The raw timings of a result as a text table (speed-ups: ``dsa.study.bench_tables``)."""
    lines = [res["provenance"]["device"] + " | " + res["provenance"]["bench"]["sparse_path"] + " | ms, median"]
    body = []
    for r in res["rows"]:
        body.append([fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLS])
    w = [max(len(hh), *(len(b[i]) for b in body)) if body else len(hh) for i, hh in enumerate(head)]
    lines.append(" ".join(hh.rjust(w[i]) for i, hh in enumerate(head)))
    for b in body:
        lines.append(" ".join(x.rjust(w[i]) for i, x in enumerate(b)))
    return "\n".join(lines)


def _is_cuda(cfg: "KernelBenchConfig") -> bool:
    return torch.cuda.is_available() and not cfg.cpu


@dataclass
class KernelBenchConfig:
    """What ``python -m dsa bench`` measures (each field is a flag); the sizes left at None are resolved at
    construction from ``quick`` and the device, and every value is checked there."""

    seq_lens: list[int] | None = field(default=None, metadata={
        "help": "sequence lengths L (default 1K..64K; --quick: 1024 4096 on CUDA, 256 on CPU)", "metavar": "L"})
    top_k: list[int] = field(default_factory=lambda: [2048, 0], metadata={
        "help": "keys per query, k; 0 means k = L/8; a k above L skips that (L, k)",
        "metavar": "K"})
    kv_heads: list[int] | None = field(default=None, metadata={
        "help": "K/V head counts, each a divisor of --heads (default: H (MHA) and 2 (GQA))", "metavar": "H_KV"})
    heads: int = field(default=16, metadata={"help": "query heads H", "metavar": "H"})
    head_dim: int = field(default=128, metadata={"help": "per-head size d", "metavar": "D"})
    indexer_heads: int = field(default=4, metadata={"help": "indexer heads H_I", "metavar": "H_I"})
    indexer_dim: int = field(default=64, metadata={"help": "indexer head size d_I", "metavar": "D_I"})
    quick: bool = field(default=False, metadata={
        "help": "tiny sizes (CPU smoke test; on CPU also H=4, d=32, d_I=32, k = 64 and L/8)"})
    cpu: bool = field(default=False, metadata={"help": "run on CPU even when CUDA is there"})
    flex: bool = field(default=True, metadata={"help": "time FlexAttention (CUDA; one compile per shape)"})
    flex_bwd: bool = field(default=False, metadata={
        "help": "also FlexAttention fwd+bwd (one more compile per shape)"})
    flex_max_len: int = field(default=65536, metadata={"help": "longest L timed with FlexAttention",
                                                       "metavar": "L"})
    masked_max_len: int = field(default=8192, metadata={
        "help": "longest L timed with the seeds' masked SDPA (an L x L mask)", "metavar": "L"})
    gather_max_len: int = field(default=4096, metadata={"help": "longest L timed with the gather reference",
                                                        "metavar": "L"})
    scores_max_len: int = field(default=65536, metadata={
        "help": "longest L of the top-k comparisons over precomputed (B, L, L) scores", "metavar": "L"})
    selection_only: bool = field(default=False, metadata={
        "help": "only the selection columns (torch.topk, radix select, indexer_topk_fast)"})
    tune_selection: bool = field(default=False, metadata={
        "help": "CUDA: also time our top-k over sample sizes (row['radix_tuning']), its gather, select and "
                "fallback launches over their own settings (row['radix_stage_tuning']), the indexer score pass "
                "over its tiles (row['score_tile_tuning']) and indexer_topk_chunked over chunk sizes "
                "(row['chunk_tuning'])"})
    profile_selection: bool = field(default=False, metadata={
        "help": "CUDA: also time each kernel launch of our top-k on its own (row['radix_stages_ms'])"})

    def __post_init__(self) -> None:
        cuda = _is_cuda(self)
        if self.quick:
            self.seq_lens = self.seq_lens or ([1024, 4096] if cuda else [256])
            if not cuda:
                self.top_k = [64, 0]
                self.heads, self.head_dim, self.indexer_dim = 4, 32, 32
        self.seq_lens = self.seq_lens or [1024, 2048, 4096, 8192, 16384, 32768, 65536]
        self.kv_heads = self.kv_heads or sorted({self.heads, 2}, reverse=True)
        for name in ("heads", "head_dim", "indexer_heads", "indexer_dim"):
            check_int(name, getattr(self, name), 1)
        for name in ("flex_max_len", "masked_max_len", "gather_max_len", "scores_max_len"):
            check_int(name, getattr(self, name), 0)
        for name, low in (("seq_lens", 1), ("top_k", 0), ("kv_heads", 1)):
            values = getattr(self, name)
            if not isinstance(values, list) or not values:
                raise ValueError(f"{name} must be a non-empty list of ints, got {values!r}")
            for v in values:
                check_int(name, v, low)
        bad = [h for h in self.kv_heads if self.heads % h]
        if bad:
            raise ValueError(f"kv_heads must divide heads ({self.heads}), got {bad}")
        if not self.configurations():
            raise ValueError(f"no (L, k) pair with k <= L: seq_lens {self.seq_lens}, top_k {self.top_k}")

    def configurations(self) -> list[tuple[int, int, str, int]]:
        """(L, k, k rule as designed, H_kv) of every row (:func:`k_rules`: k = 0 means L/8; a k outside
        [1, L] is left out)."""
        return [(l, kk, rule, hkv) for l in self.seq_lens for kk, rule in k_rules(l, list(self.top_k)).items()
                for hkv in self.kv_heads]


def default_out(cfg: KernelBenchConfig) -> Path:
    """runs/bench/<device>-<date>.json (recorded data is promoted to data/ by hand)."""
    tag = ("cuda-" + torch.cuda.get_device_name().replace(" ", "_")) if _is_cuda(cfg) else "cpu"
    return Path(f"runs/bench/{tag}-{_dt.date.today().isoformat()}.json")


def bench(cfg: KernelBenchConfig, out: str | Path | None = None) -> dict:
    """Runs the benchmark and returns its result, written to ``out`` (default :func:`default_out`) after
    every row, so a run stopped half-way still leaves its numbers; the result's ``_path`` says where."""
    out = Path(out) if out else default_out(cfg)
    res = run_writing_json(run, cfg, out)
    res["_path"] = str(out)
    return res


if __name__ == "__main__":
    from dsa.bench.cli import bench_main  # noqa: PLC0415

    sys.exit(bench_main(prog="python -m dsa.bench.kernels"))
