#!/usr/bin/env bash
# What issues 15 and 16 still need from a GPU, in stages that each fit one 10-minute device call (about 29
# minutes of device time in all). Run the stages in order, each in its own call, and keep the machine warm
# between calls (it is released after 30 s idle, and a new one may not be lent):
#   tests  (~3 min)  the GPU-only tests of the fixes made without a GPU: FP8 score pass (K >= 32, the Hopper
#                    accumulator bound), kernels at 2^31-element offsets (the headsum dK/dV kernel too), cached
#                    decoding at the MLA-MQA shape, the decode kernels at real size;
#   mla    (~7 min)  the map's MLA-MQA rows at 32K, 64K, 128K (the illegal memory access fixed at 250a99a);
#   l128   (~4 min)  the map's 128K rows of MQA 64, GQA 16/2 and MHA 16 (FlexAttention's block mask compiled);
#   decode (~9 min)  gpu_decode.sh's benchmark: MLA-MQA and MQA decode with bf16 indexer keys and whole requests
#                    with DSA (prompt 4K/16K/64K + 256 tokens), then FP8 indexer keys (batches 16, 64);
#   mlabwd (~4 min)  the sparse attention backward at MLA 128 x 576/512, k = 2048: dK/dV by atomics against the
#                    headsum kernel (dsa.ops.kernels._sparse_attn_kernels, its docstring gives the atomic bytes
#                    per pair to judge the rows by) at L = 16K and 32K, headsum also at its mma.sync tile,
#                    both checked against the fp32 reference first; then copy to data/bench/mla/.
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_complete.sh STAGE ; copy $OUT's files to data/bench/{map,decode,indexer}/.
# The first five stages ran in the fourth session (H200, commit 2ca694f): data/bench/{map,decode,mla,indexer}/README.md.
# profile (~4 min): the per-launch profile of the MLA-MQA map rows at 64K and 128K (dsa.bench.launch_profile),
#   dense on cuDNN beside DSA with DeepSeek's FP8 64 x 128 indexer, and DSA with a 4 x 64 indexer; copy to
#   data/bench/map/profile/ (the 4 x 64 rows only with PROFILE_4X64=1).
# topk (~2 min): decode's top-k alone, one stage / two stages / torch.topk (dsa_topk*, dsa.bench.decode), after the
#   two-stage kernel's GPU tests; copy to data/bench/decode/topk/ (outside the decode glob: its dense and DSA
#   rows would be averaged with the full run's). Not yet run.
# hn (~3 min): the heads-as-N indexer score kernel (indexer_chunked.score_rows_hn, untimed) beside the score pass
#   in dsa.bench.indexer (score_pass rows with kernel 'heads_n', their rate as a share of the FP8 matmul rate and
#   their difference from the score pass); copy to data/bench/indexer/. Not yet run.
# Fifth session (after the heads-as-N kernel became the score kernel from 16 heads on, b024c8b):
# check5 (~2.5 min): the GPU tests of the chunked top-k on both score kernels, the FP8 indexer, the quantize kernel
#   (dsa::quantize_rows) and the FP8 layer compiled;
# idx5 (~3 min): dsa.bench.indexer at 64 x 128 (64K, 128K) with the heads-as-N tiles swept, then at 4 x 64
#   (whether the heads-as-N kernel also pays with few heads); copy to data/bench/indexer/;
# map5 / map5b (~6 + ~3 min): the map's 64 x 128 rows (bf16 and FP8) again with the new score kernel, MLA-MQA at
#   16K-128K, then MQA 64 at 32K-128K; copy to data/bench/map/ (the tables keep the newest row per point).
# All four ran in the fifth session (H200, 2c38194): data/bench/{indexer,map}/README.md. Next:
# probs (~3 min): the indexer loss's target probabilities by the slot-block kernel (the default; 1073 ms at
#   MLA-MQA 128K in the profile) against the per-query kernel (sparse_attention.PROBS_KERNEL 'query': built
#   and resource-checked without a GPU, untimed), after their GPU tests; copy to data/bench/mla/. If 'query' is
#   faster, make it the default and run map5 again (the training rows).
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
stage=${1:?usage: gpu_complete.sh tests|mla|l128|decode|mlabwd|profile|topk|hn|check5|idx5|map5|map5b|probs}
case $stage in
  tests)
    timeout 500 python -m pytest -q -p no:cacheprovider tests/ops/test_indexer_fp8.py tests/ops/test_large_offsets.py \
      tests/inference tests/ops/test_decode.py > "$OUT/gpu-tests.log" 2>&1
    rc=$?  # pytest's status (124: timed out), not tail's: a failed test must not read as success
    tail -5 "$OUT/gpu-tests.log"
    exit "$rc" ;;
  mla)
    LAYOUTS=mla128 LENS="32768 65536 131072" INDEXERS="4x64 64x128 64x128:fp8" REPS=3 BUDGET_S=480 OUT=$OUT \
      timeout 560 bash scripts/gpu/gpu_map.sh ;;
  l128)
    for layout in mqa64 gqa16/2 mha16; do
      LAYOUTS=$layout LENS=131072 INDEXERS="4x64 64x128 64x128:fp8" REPS=3 BUDGET_S=70 OUT=$OUT \
        timeout 170 bash scripts/gpu/gpu_map.sh
    done ;;
  decode)  # bf16 keys with the whole requests, then FP8 keys on the decode grid only
    BENCH_TIMEOUT=330 OUT=$OUT bash scripts/gpu/gpu_decode.sh bench
    INDEXER_DTYPE=fp8 REQUESTS="" BATCHES="16 64" BENCH_TIMEOUT=200 OUT=$OUT bash scripts/gpu/gpu_decode.sh bench ;;
  mlabwd)
    timeout 240 python -m dsa.bench.mla --layouts mla128 --seq-lens 16384 32768 --top-k 2048 --dkv atomic headsum \
      --check --tiles dkv:16:32:8:2 --out "$OUT/mla-headsum.json" 2>&1 | grep -v Warn ;;
  topk)  # decode's top-k alone (~2 min): ours, ours in two stages, torch.topk; the split's GPU tests first
    timeout 100 python -m pytest -q -p no:cacheprovider tests/ops/test_kernels.py -k "split" 2>&1 | tail -2
    CONTEXTS="32768 131072" BATCHES="1 16 64" REQUESTS="" BENCH_TIMEOUT=150 OUT=$OUT \
      bash scripts/gpu/gpu_decode.sh bench ;;
  hn)  # the heads-as-N score kernel against the score pass (~3 min): its GPU tests, then dsa.bench.indexer
    timeout 100 python -m pytest -q -p no:cacheprovider tests/ops/test_kernels.py -k "score_rows_hn or bench_times_both" \
      2>&1 | tail -2
    INDEXER_LENS="16384 65536 131072" BENCH_TIMEOUT=240 OUT=$OUT bash scripts/gpu/gpu_indexer.sh ;;
  profile)  # issue 15's per-launch profile of the MLA-MQA map rows (what bounds the missed targets), ~4 min
    for l in 65536 131072; do
      timeout 200 python -m dsa.bench.launch_profile --layout mla128 --seq-len $l --indexer 64x128:fp8 --top-k 2048 \
        --d-model 2048 --calls 1 --out "$OUT/profile-mla128-$l-64x128-fp8.json" 2>&1 | grep -v "USDT\|Warn"
      if [[ ${PROFILE_4X64:-0} == 1 ]]; then  # the small indexer's DSA layer too (set PROFILE_4X64=1)
        timeout 120 python -m dsa.bench.launch_profile --layout mla128 --seq-len $l --indexer 4x64 --top-k 2048 \
          --d-model 2048 --calls 1 --layers dsa --out "$OUT/profile-mla128-$l-4x64.json" 2>&1 | grep -v "USDT\|Warn"
      fi
    done ;;
  check5)
    timeout 60 python -m pytest -q -p no:cacheprovider tests/ops/test_kernels.py -k "chunked or score_rows" \
      > "$OUT/gpu-tests-5.log" 2>&1
    rc=$?
    timeout 100 python -m pytest -q -p no:cacheprovider tests/ops/test_indexer_fp8.py tests/ops/test_quantize.py \
      >> "$OUT/gpu-tests-5.log" 2>&1
    rc=$((rc | $?))
    timeout 90 python -m pytest -q -p no:cacheprovider tests/ops/test_compile.py -k fp8 >> "$OUT/gpu-tests-5.log" 2>&1
    rc=$((rc | $?))
    tail -5 "$OUT/gpu-tests-5.log"
    exit "$rc" ;;
  idx5)
    timeout 150 python -m dsa.bench.indexer --seq-lens 65536 131072 --heads 64 --dim 128 --top-k 2048 --tiles \
      --hn-tiles 2x64x4 2x128x8 4x64x8 2x64x8 1x64x4 4x32x4 --out "$OUT/indexer-64x128.json" 2>&1 | grep -v Warn
    timeout 60 python -m dsa.bench.indexer --seq-lens 65536 131072 --heads 4 --dim 64 --top-k 2048 --tiles \
      --out "$OUT/indexer-4x64.json" 2>&1 | grep -v Warn ;;
  map5)
    LAYOUTS=mla128 LENS="16384 32768 65536 131072" INDEXERS="64x128:fp8 64x128" REPS=2 BUDGET_S=360 OUT=$OUT \
      timeout 400 bash scripts/gpu/gpu_map.sh ;;
  map5b)
    LAYOUTS=mqa64 LENS="32768 65536 131072" INDEXERS="64x128:fp8 64x128" REPS=3 BUDGET_S=170 OUT=$OUT \
      timeout 200 bash scripts/gpu/gpu_map.sh ;;
  probs)
    timeout 120 python -m pytest -q -p no:cacheprovider tests/ops/test_kernels.py -k "probs" 2>&1 | tail -2
    timeout 200 python -m dsa.bench.mla --layouts mla128 --seq-lens 32768 131072 --top-k 2048 --dkv headsum \
      --probs slots query --out "$OUT/mla-probs.json" 2>&1 | grep -v Warn ;;
  *) echo "unknown stage $stage (tests|mla|l128|decode|mlabwd|profile|topk|hn|check5|idx5|map5|map5b|probs)"; exit 2 ;;
esac
