#!/usr/bin/env bash
# One DSA training run on 1 GPU and the same run under torchrun DDP on every GPU of the machine (issue 5.6).
# Usage: bash scripts/gpu/run_ddp.sh [STEPS]. Writes data/gpu/ddp/{single,ddp-N}.json.
set -eu
steps=${1:-200}
n=$(python -c "import torch; print(torch.cuda.device_count())")
args="--attention dsa --recipe deepseek --seq-len 1024 --top-k 128 --d-model 256 --n-layers 4 --n-heads 8
      --indexer-heads 4 --indexer-dim 64 --indexer-rope-dim 32 --batch-size 8 --steps $steps --eval-every 100
      --eval-batches 8 --lr-warmup-steps 20 --no-progress"
mkdir -p data/gpu/ddp
python -m dsa.train $args --out data/gpu/ddp/single.json
python -m torch.distributed.run --standalone --nproc_per_node "$n" -m dsa.train $args --out "data/gpu/ddp/ddp-$n.json"
