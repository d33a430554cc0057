"""What one streaming pass over causal score rows costs on the GPU (the probe behind the top-k gap).

Ran once on an H200 (`python scripts/probes/selection_probe.py OUT.json`, from the repository root, with the
tree of commit c5674e3 plus this file, then untracked); its output is `h200-probe.json` beside it. Three
kernels, one program per row of the causal triangle: a bare read (sum), a count against one threshold, and a
compaction of the positions above it with `tl.cumsum` (what the top-k's bracket copy and output pass do).
"""
import json
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


@triton.jit
def read_pass(S, OUT, ss, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = (row + 1).to(tl.int32)
    acc = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, n, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        acc += tl.load(S + row * ss + c, mask=c < n, other=0.0)
    tl.store(OUT + row, tl.sum(acc))


@triton.jit
def count_pass(S, OUT, ss, N, thr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = (row + 1).to(tl.int32)
    cnt = tl.zeros([], tl.int32)
    for c0 in range(0, n, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        x = tl.load(S + row * ss + c, mask=c < n, other=float("-inf"))
        cnt += tl.sum((x > thr).to(tl.int32))
    tl.store(OUT + row, cnt)


@triton.jit
def compact_pass(S, OUT, ss, so, N, K, thr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    n = (row + 1).to(tl.int32)
    base = tl.zeros([], tl.int32)
    for c0 in range(0, n, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        x = tl.load(S + row * ss + c, mask=c < n, other=float("-inf"))
        sel = x > thr
        si = sel.to(tl.int32)
        pos = base + tl.cumsum(si, 0) - 1
        tl.store(OUT + row * so + pos, c, mask=sel & (pos < K))
        base += tl.sum(si)


def main():
    from dsa.bench.kernels import _causal_scores
    out = []
    for l in (32768, 65536):
        g = torch.Generator(device="cuda").manual_seed(0)
        qi = torch.randn(1, l, 4, 64, device="cuda", generator=g).bfloat16()
        ki = torch.randn(1, l, 64, device="cuda", generator=g).bfloat16()
        wi = (torch.randn(1, l, 4, device="cuda", generator=g) / 16).bfloat16()
        s = _causal_scores(qi, ki, wi)[0]
        thr = float(torch.quantile(s[-1, : l // 8].float(), 0.9))
        o = torch.empty(l, device="cuda")
        oi = torch.empty(l, 2048, device="cuda", dtype=torch.int32)
        for block in (1024, 2048, 4096):
            for w in (4, 8):
                r = dict(L=l, block=block, warps=w)
                r["read_ms"] = do_bench(lambda: read_pass[(l,)](s, o, s.stride(0), l, BLOCK=block, num_warps=w))
                r["count_ms"] = do_bench(lambda: count_pass[(l,)](s, o, s.stride(0), l, thr, BLOCK=block, num_warps=w))
                r["compact_ms"] = do_bench(lambda: compact_pass[(l,)](s, oi, s.stride(0), oi.stride(0), l, 2048, thr,
                                                                       BLOCK=block, num_warps=w))
                r["one_read_at_3.35TBs_ms"] = l * (l + 1) / 2 * 4 / 3.35e12 * 1e3
                print(json.dumps(r), flush=True)
                out.append(r)
        del s
    json.dump(out, open(sys.argv[1], "w"), indent=1)


main()
