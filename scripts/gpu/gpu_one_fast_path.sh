#!/usr/bin/env bash
# The one-fast-path measurements on a lent GPU (H100/H200), each file with its provenance:
#   1. the kernel, op and layer tests at real sizes (compiled Triton), log kept;
#   2. dsa.bench.layer: the model's own DSA layer vs the dense layer (cuDNN, flash, FlexAttention) in the MQA
#      layout (64 query heads x 128 on one K/V head), k = 2048, indexers 4x64 and 64x128, L = 8K..64K;
#   3. dsa.bench.step_profile: a whole training step of a d_model-1024, 4-layer MQA model, dense vs DSA.
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_one_fast_path.sh [tests|layer|step|all] ; results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env  # the commit and dirty flag of the tree that was sent
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1
if [[ $what == tests || $what == all ]]; then
  # -k applies to every file on a pytest line: the kernel subset runs apart from the compile and layer tests
  { python -m pytest -q -x tests/ops/test_kernels.py -k "real or many_heads or kl or fwd_bwd" 2>&1 | tail -5
    python -m pytest -q -x tests/ops/test_compile.py tests/layers/test_layers.py tests/model/test_model.py 2>&1 | tail -5; } \
    | tee "$OUT/tests.log"
fi
if [[ $what == layer || $what == all ]]; then
  python -m dsa.bench.layer --seq-lens ${LAYER_LENS:-32768 65536 8192 16384} --top-k 2048 --d-model 1024 \
    --heads 64 --kv-heads 1 --head-dim 128 --indexers ${INDEXERS:-4x64 64x128} --out "$OUT/layer-mqa.json"
fi
if [[ $what == step || $what == all ]]; then
  for L in ${STEP_LENS:-8192 16384 32768 65536}; do
    python -m dsa.bench.step_profile --seq-len "$L" --top-k 2048 --batch-size 1 --d-model 1024 --n-layers 4 \
      --n-heads 64 --n-kv-heads 1 --head-dim 128 --indexer-heads 4 --indexer-dim 64 --indexer-rope-dim 32 \
      --steps 5 --warmup 2 --profile-steps 1 --device cuda --variants dense dsa --out "$OUT/step-mqa-L$L.json" \
      || echo "step profile at L=$L failed"
  done
fi
