#!/usr/bin/env bash
# The indexer at DeepSeek-V3.2's size (64 heads x 128) on a lent GPU, bf16 against FP8 (e4m3), in one run
# (dsa.bench.indexer): the FP8 score pass in TFLOP/s against torch._scaled_mm measured in the same run (target
# >= 60%), bf16 vs FP8 indexer_topk time at L = 16K..128K, the top-k time against one read of its scores (and
# the bytes model), the recall of the FP8 selection against bf16 (random and structured inputs); then the FP8
# tests at real sizes (compiled Triton). At most 3 minutes (140 s + 40 s limits; the record is written after
# each L, "complete": false when the limit cut it short).
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_indexer.sh ; results ($OUT/indexer-fp8.json with provenance, logs) go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env  # the commit and dirty flag of the tree that was sent
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout ${BENCH_TIMEOUT:-140} python -m dsa.bench.indexer --seq-lens ${INDEXER_LENS:-16384 32768 65536 131072} \
  --heads 64 --dim 128 --top-k 2048 --out "$OUT/indexer-fp8.json" 2>&1 | tee "$OUT/indexer-fp8.log"
# the FP8 tests on compiled kernels, and the layer under torch.compile (inductor) with the FP8 selection
timeout ${TEST_TIMEOUT:-40} python -m pytest -q -x tests/ops/test_indexer_fp8.py "tests/ops/test_compile.py::test_dsa_layer_compiles_fullgraph_and_matches_eager[fp8]" \
  2>&1 | tail -5 | tee "$OUT/tests-indexer-fp8.log"
