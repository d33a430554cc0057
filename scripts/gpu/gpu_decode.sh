#!/usr/bin/env bash
# Issue 16's decode benchmark on a lent H100/H200, each file with its provenance (<= 6 minutes in all):
#   1. the decode kernels and the cached model against their references, compiled (tests/ops/test_decode.py,
#      tests/inference), log kept;
#   2. dsa.bench.decode: per token and layer, DSA (indexer 64x128 bf16, k = 2048) against dense decode over the
#      whole cache (the split-K Triton kernel and SDPA), MQA 64x128 and MLA-MQA 128 x 576/512, contexts
#      4K..128K, batches 1, 16, 64, CUDA graphs; whole requests (prefill + 256 tokens) at 4K, 16K, 64K.
#      MLA first: if the time runs out, the headline layout is done (every finished row is in the JSON).
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_decode.sh [tests|bench|all] ; results go to $OUT (decode-<indexer dtype>.json, tests.log).
# Knobs: CONTEXTS, BATCHES, REQUESTS (prompt lengths; set and empty: no requests), BENCH_TIMEOUT (seconds, default 240), INDEXER_DTYPE
#   (bf16 or fp8: DeepSeek's e4m3 indexer keys + per-token scales, 132 bytes a token; default bf16).
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env  # the commit and dirty flag of the tree that was sent
OUT=${OUT:-runs/bench/decode}
mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1
start=$(date +%s)
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
if [[ $what == tests || $what == all ]]; then
  echo "== decode tests (compiled kernels) =="
  timeout 100 python -m pytest -q -x -p no:cacheprovider tests/ops/test_decode.py tests/inference 2>&1 | tail -5 \
    | tee "$OUT/tests.log"
  echo "tests took $(( $(date +%s) - start )) s"
fi
if [[ $what == bench || $what == all ]]; then
  echo "== dsa.bench.decode =="
  timeout "${BENCH_TIMEOUT:-240}" python -m dsa.bench.decode --layouts mla mqa \
    --contexts ${CONTEXTS:-4096 8192 16384 32768 65536 131072} --batches ${BATCHES:-1 16 64} \
    --top-k 2048 --indexer 64x128 --indexer-dtype "${INDEXER_DTYPE:-bf16}" \
    --request-contexts ${REQUESTS-4096 16384 65536} --gen-tokens 256 \
    --out "$OUT/decode-${INDEXER_DTYPE:-bf16}.json" \
    || echo "bench stopped (exit $?): $OUT/decode-${INDEXER_DTYPE:-bf16}.json holds every finished row"
fi
echo "done in $(( $(date +%s) - start )) s; files in $OUT"
