#!/usr/bin/env bash
# GPU pilot of the long-context study (issue 17) for ONE H200 (16 CPU cores), at most 8 minutes of wall time:
#   L = 8192, k = 512 (k/L = 1/16), MQA (8 query heads x 32 on one K/V head), d_model 256, 2 layers, indexer
#   4 x 64, 32K tokens per step (4 x 8K); tasks: multi-query associative recall and Shakespeare text; arms of DeepSeek's
#   recipe with its control (dsa.train.experiments.long_context_pilot): dense_base (200 steps, checkpointed),
#   from it dense_continued (100 steps) and dsa_from_dense (20 indexer warm-up steps + 100 sparse steps), and
#   dsa_scratch (300 steps); 5 seeds; seed 0's two continued arms re-run twice more (the noise floor).
# One process per seed (seed 0: one per task), 6 sharing the GPU (each record says so in timing.workers_on_device: its step times are
# not a speed measurement). A process still running at the deadline is stopped; the runs it finished are kept
# (one JSON line each, written when the run ends) and the integrator reports the rest as not run.
# The continued arms continue the dense base (TrainConfig.start_step: the same LR schedule over the global step,
# the next batches, the base's optimiser state), so each process runs a seed's base before its continued arms.
# Usage: here `bash scripts/gpu/gpu_env.sh write` and build the text corpus once (`make report` or any text run
#   does: data/cache/), then on the GPU machine (carry scripts/.gpu_env and data/cache: it has no network)
#   OUT=<folder> bash scripts/gpu/gpu_long_context.sh ; results: $OUT/long_context_pilot.seed-*.jsonl + logs.
# Time estimate (notebooks/08_long_context.py, section 5): a few minutes of GPU work (the table in section 5 of the notebook), 8 min cap.
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ -f scripts/.gpu_env ]] && source scripts/.gpu_env  # the commit and dirty flag of the tree that was sent
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2  # 6 processes on 16 cores
# seed 0 carries the re-runs: its two tasks run in two processes, so that no process has twice the work
JOBS=${JOBS:-0:recall 0:text 1: 2: 3: 4:}
BUDGET_S=${BUDGET_S:-450}  # the whole pilot, start-up included; 30 s left for the copy back
n=$(wc -w <<<"$JOBS")
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { echo "error: no CUDA device"; exit 2; }
# build the corpus and tokenizer once, before the processes that read them start
python -c "from dsa.text.corpus import load_corpus; load_corpus('shakespeare', tokenizer='bpe', vocab_size=2048)" \
  > "$OUT/corpus.log" 2>&1 || { echo "error: no text corpus (carry data/cache from a machine that built it):"; \
  tail -2 "$OUT/corpus.log"; exit 2; }
pids=()
for job in $JOBS; do
  s=${job%%:*}; t=${job#*:}; tag="seed-$s${t:+-$t}"
  timeout --signal=TERM "$BUDGET_S" python -m dsa long-context --experiment long_context_pilot --size full \
    --seeds "$s" ${t:+--tasks "$t"} --out "$OUT/long_context_pilot.$tag.jsonl" --ckpt-dir "runs/long_context_ckpt/$tag" \
    --device cuda --workers-on-device "$n" > "$OUT/$tag.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1
for job in $JOBS; do
  s=${job%%:*}; t=${job#*:}; tag="seed-$s${t:+-$t}"; f="$OUT/long_context_pilot.$tag.jsonl"
  echo "$tag: $( [[ -f $f ]] && wc -l <"$f" || echo 0) runs recorded; last log line: $(tail -1 "$OUT/$tag.log")"
done | tee "$OUT/summary.txt"
