#!/usr/bin/env bash
# The sparse-attention kernels at DeepSeek-V3.2's MLA-MQA shape on a lent GPU (H100/H200), with provenance:
#   1. the GPU-size kernel tests (compiled Triton): sparse attention fwd/bwd/probs at real sizes;
#   2. dsa.bench.mla: errors against the fp32 reference, a tile sweep at L = 16K, the defaults at 32K / 64K,
#      atomic vs headsum dK/dV side by side at 16K (with headsum's alternative tiles), 32K and 64K, and
#      atomic vs headsum vs inverted at 4K (MLA) and 16K (MQA 64x128, GQA 16/2, MHA 16).
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_mla_kernels.sh ; results go to $OUT (copy them to data/bench/mla/).
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
B="python -m dsa.bench.mla --top-k 2048"
if [[ ${TESTS:-1} == 1 ]]; then
  python -m pytest -q -x tests/ops/test_kernels.py -k "gpu_real and sparse" 2>&1 | tail -3 | tee "$OUT/tests.log"
fi
# headsum's alternative tiles: its dK/dV kernel on mma.sync (16 heads x 32 rows, no spill at sm_90a) and the
# dQ kernel at 64 rows (32 heads, no spill); TILES adds more
$B --layouts mla128 --seq-lens 16384 --dkv atomic headsum --check --tiles dkv:16:32:8:2 bwd:32:64:8:2 ${TILES:-} \
  --out "$OUT/mla-tiles-16k.json" 2>&1 | grep -v Warn
$B --layouts mla128 --seq-lens 4096 --dkv atomic headsum inverted --out "$OUT/mla-dkv-4k.json" 2>&1 | grep -v Warn
$B --layouts mla128 mla16 --seq-lens ${LENS:-32768 65536} --dkv atomic headsum --out "$OUT/mla-32k-64k.json" 2>&1 \
  | grep -v Warn
$B --layouts mqa64 gqa16/2 mha16 --seq-lens 16384 --dkv atomic headsum inverted --inverted-max-len 16384 \
  --out "$OUT/layouts-dkv-16k.json" 2>&1 | grep -v Warn
