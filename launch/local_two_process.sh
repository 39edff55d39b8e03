#!/usr/bin/env bash
# Two JAX processes on this machine (CPU collectives), the multi-host code
# path without a cluster:
#
#   launch/local_two_process.sh configs/sft.py [--config.a.b=v ...]
#
# Each process gets one CPU device; process 0 is the coordinator. Both write
# to the same workdir (only process 0 writes metrics and exports).
set -euo pipefail
recipe=$1; shift
workdir=${WORKDIR:-workdir/two_process}
port=${PORT:-12355}
pids=()
for i in 0 1; do
  JAX_PLATFORMS=cpu python -m rankjax.launch --config "$recipe" --workdir "$workdir" \
    --coordinator "localhost:$port" --num_processes 2 --process_id "$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
