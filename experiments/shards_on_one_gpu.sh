#!/usr/bin/env bash
# Run K shards of one sweep side by side on one GPU, each a process of its own, for at most SECONDS.
#
# A batched sweep of a small model is bound by its host: each process prepares its forwards and runs its
# generations' per-token code on one Python thread, and the GPU waits between steps (the real 1.5B sweep kept
# one H100 ~73 % busy from one process; experiments/README). Shards of one run directory never share work
# (each takes every K-th problem) and each appends to its own records file, so K processes on one GPU give
# the host K threads; each takes 0.75/K of the GPU memory free after its model loaded for its KV pool (they
# load together, so each sees nearly all of it free). Stopped at SECONDS (SIGINT:
# every completed record is stored) the same command resumes where it stopped.
#
#   usage: experiments/shards_on_one_gpu.sh K SECONDS LOG_DIR [hydra overrides ...]
#   e.g.   experiments/shards_on_one_gpu.sh 3 540 logs +exp=gsm8k_small store.root=runs batch.max_rows=256
set -uo pipefail
k=$1 seconds=$2 logs=$3
shift 3
mkdir -p "$logs"
fraction=$(python3 -c "print(round(0.75 / $k, 3))")
pids=()
for ((i = 0; i < k; i++)); do
  timeout -s INT "$seconds" python -m hogwild_bench "$@" shard.index=$i shard.count=$k \
    batch.kv_memory_fraction="$fraction" >"$logs/shard${i}of${k}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid"
  rc=$?
  # 124: stopped at SECONDS (resumable); anything else but 0 is a failure
  if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then status=$rc; fi
done
exit $status
