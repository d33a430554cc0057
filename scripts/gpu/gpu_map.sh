#!/usr/bin/env bash
# The map of where DSA pays (dsa.bench.map) on one lent H100/H200, within ~7 minutes: the model's own DSA
# layer against its dense layer (cuDNN SDPA, flash SDPA, FlexAttention in the same run), prefill and
# training, for the layouts MHA 16x128, GQA 16/2, MQA 64x128 and MLA-MQA 128x576/512 (dense: MLA in MHA mode),
# indexers 4x64 and 64x128 in bf16 (add 64x128:fp8 to INDEXERS once the FP8 indexer is merged: without it
# dsa.bench.map stops with an error naming the missing option). L ascending per layout; each layout gets
# BUDGET_S seconds, after which its larger L are recorded as skipped ('budget'); an OOM is recorded as 'oom'.
# Usage: here `bash scripts/gpu/gpu_env.sh write`, then on the GPU machine (carry scripts/.gpu_env)
#   OUT=<folder> bash scripts/gpu/gpu_map.sh ; one JSON per layout in $OUT (copy them to data/bench/map/).
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LENS=${LENS:-2048 4096 8192 16384 32768 65536 131072}
INDEXERS=${INDEXERS:-4x64 64x128}
BUDGET_S=${BUDGET_S:-85}
for layout in ${LAYOUTS:-mqa64 mla128 gqa16/2 mha16}; do
  name=${layout//\//-}
  echo "== $layout (budget ${BUDGET_S}s) $(date +%T)"
  python -m dsa.bench.map --layouts "$layout" --seq-lens $LENS --indexers $INDEXERS --top-k 2048 \
    --d-model ${D_MODEL:-2048} --reps ${REPS:-5} --budget-s "$BUDGET_S" --device cuda --out "$OUT/map-$name.json" \
    2>&1 | grep -v -e Warn -e warn_once || echo "map $layout failed"
done
