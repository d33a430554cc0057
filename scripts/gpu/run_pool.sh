#!/usr/bin/env bash
# The third session's campaign: every remaining configuration of the named experiments through ONE pool of
# training processes (dsa.sweep with several experiments: a worker that finishes one experiment's share
# goes on with the next), on one GPU. Started in its own process session so that it outlives the lent
# machine's call that started it; later calls copy DIR/*.jsonl back. Usage:
#   setsid nohup bash scripts/gpu/run_pool.sh DIR WORKERS EXPERIMENT ... > DIR/log.txt 2>&1 < /dev/null &
# DIR should hold the recorded data/gpu/*.jsonl first: finished configurations are re-used, never re-run.
set -u
dir=${1:?DIR}; workers=${2:?WORKERS}; shift 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1  # many processes share 16 cores: one thread each
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
start=$(date +%s)
python -m dsa.train.sweep "$@" --size full --out-dir "$dir" --workers-per-device "$workers"
echo "pool done in $(( $(date +%s) - start )) s"
