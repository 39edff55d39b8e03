#!/usr/bin/env bash
# Run a rankjax recipe on a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR RECIPE [--config.a.b=v ...]
#   e.g. launch/tpu_pod.sh rj-v5e us-west4-a v5litepod-16 configs/grpo_gsm8k.py
#
# Steps: create the slice (skipped if it exists), copy this checkout to every
# worker, install rankjax with the TPU extra, run the same command on all
# workers (jax.distributed.initialize() finds the coordinator by itself on
# TPU pods, so no --coordinator flags are needed), copy the workdir back from
# worker 0, and delete the slice unless KEEP=1.
#
# Environment: PROJECT (gcloud project), RUNTIME (TPU software version,
# default v2-alpha-tpuv5-lite), WORKDIR (default gs-free local path
# /tmp/rankjax_run on the workers), KEEP=1 to keep the slice.
set -euo pipefail
name=$1 zone=$2 accel=$3 recipe=$4; shift 4
runtime=${RUNTIME:-v2-alpha-tpuv5-lite}
workdir=${WORKDIR:-/tmp/rankjax_run}
gc="gcloud compute tpus tpu-vm"
proj=${PROJECT:+--project=$PROJECT}

if ! $gc describe "$name" --zone "$zone" $proj >/dev/null 2>&1; then
  $gc create "$name" --zone "$zone" --accelerator-type "$accel" --version "$runtime" $proj
fi
tar czf /tmp/rankjax_src.tgz --exclude=.git --exclude=workdir .
$gc scp /tmp/rankjax_src.tgz "$name":/tmp/ --worker=all --zone "$zone" $proj
$gc ssh "$name" --worker=all --zone "$zone" $proj --command \
  "mkdir -p ~/rankjax && tar xzf /tmp/rankjax_src.tgz -C ~/rankjax && cd ~/rankjax && pip install -q -e '.[tpu]'"
# The same command on every worker; rankjax.launch calls
# jax.distributed.initialize() when it sees a multi-host TPU environment.
$gc ssh "$name" --worker=all --zone "$zone" $proj --command \
  "cd ~/rankjax && python -m rankjax.launch --config $recipe --workdir $workdir --multihost $*"
$gc scp --recurse "$name":"$workdir" ./workdir_from_tpu --worker=0 --zone "$zone" $proj
if [ "${KEEP:-0}" != 1 ]; then
  $gc delete "$name" --zone "$zone" $proj --quiet
fi
