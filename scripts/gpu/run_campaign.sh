#!/usr/bin/env bash
# The GPU campaign as it was run on the lent machine (see data/gpu/README.md). Usage:
#   [RESULTS_DIR=data/gpu] [WORKERS=4] [DEVICES=all] bash scripts/gpu/run_campaign.sh TIME_BUDGET_S [EXPERIMENT ...]
# Runs issue 2's short dense-vs-DSA comparison (once), then each experiment's full-size sweep with what is
# left of the time budget. Sweeps resume: results already in $RESULTS_DIR/<experiment>.jsonl are re-used
# (point RESULTS_DIR at the folder that comes back from the lent machine, so a run cut off still returns
# every finished line).
# The caller packs data/gpu to bring it back (also when a hard timeout cuts a run short: every finished
# run is already on disk, whole).
set -u
budget=${1:?TIME_BUDGET_S}; shift 1
experiments=("$@")
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
full="--d-model 256 --n-layers 4 --n-heads 8 --indexer-heads 4 --indexer-dim 64 --indexer-rope-dim 32
      --batch-size 16 --eval-every 50 --eval-batches 8 --seq-len 256 --top-k 128 --steps 300
      --lr-warmup-steps 30 --no-progress"
mkdir -p data/gpu/issue2
if [ ! -f data/gpu/issue2/dsa-scratch-leaky-L256-k128-s0.json ]; then
  python -m dsa.train --attention dense $full --out data/gpu/issue2/dense-L256-k128-s0.json
  python -m dsa.train --attention dsa --recipe deepseek $full --out data/gpu/issue2/dsa-deepseek-L256-k128-s0.json
  python -m dsa.train --attention dsa --recipe scratch --leak-future $full \
    --out data/gpu/issue2/dsa-scratch-leaky-L256-k128-s0.json
fi
for exp in "${experiments[@]}"; do
  b=$(left)
  [ "$b" -gt 30 ] || { echo "time budget spent before $exp"; break; }
  python -m dsa.train.sweep "$exp" --size full --out "${RESULTS_DIR:-data/gpu}/$exp.jsonl" --time-budget-s "$b" \
    --workers-per-device "${WORKERS:-4}" --devices "${DEVICES:-}"
done
echo "campaign done in $(( $(date +%s) - start )) s"
