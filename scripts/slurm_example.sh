#!/bin/bash
# Run an audiobench sweep (or run) on a SLURM cluster: one torchrun launcher per node, one
# process per GPU, rendezvous on the first node. Rank 0 (on the first node) writes all results,
# so --out only needs to be writable from the first node; every node needs the data.
#
#   sbatch scripts/slurm_example.sh configs/li2022.yaml
#
#SBATCH --job-name=audiobench
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the per-GPU processes
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=audiobench-%j.out
set -euo pipefail

SWEEP=${1:-configs/li2022.yaml}
OUT=${OUT:-results}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-4}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}

# Weights must already be in the cache (audiobench downloads nothing on compute nodes without
# internet); e.g. run `audiobench predict --model cnn14 ...` once on a login node.
export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))

srun torchrun \
  --nnodes "$SLURM_NNODES" \
  --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-id "$SLURM_JOB_ID" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$HEAD:$PORT" \
  -m audiobench sweep "$SWEEP" --out "$OUT" --quiet

# Resubmitting the same job continues: finished runs are skipped and an interrupted run resumes
# from its stored units (with any number of nodes or GPUs).
