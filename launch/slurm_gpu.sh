#!/usr/bin/env bash
# Multi-node GPU training with Slurm: one process per node, all local GPUs
# per process.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh configs/grpo_gsm8k.py [--config.a.b=v ...]
#
# The first node of the allocation is the coordinator; every task passes the
# explicit --coordinator/--num_processes/--process_id flags that
# rankjax.launch forwards to jax.distributed.initialize().
#SBATCH --job-name=rankjax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
recipe=$1; shift
workdir=${WORKDIR:-$PWD/workdir/$SLURM_JOB_ID}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${PORT:-12355}
# Install once per node if needed: pip install -e '.[cuda]'
srun --ntasks="$SLURM_NNODES" bash -c "
  python -m rankjax.launch --config $recipe --workdir $workdir \
    --coordinator $head:$port --num_processes $SLURM_NNODES --process_id \$SLURM_PROCID $*"
