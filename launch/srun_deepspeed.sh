#!/usr/bin/env bash
# launch/srun_deepspeed.sh SCRIPT [ARG ...]: one deepspeed launch of SCRIPT across every node of this SLURM
# allocation (inside sbatch or salloc). launch/slurm.sbatch runs each training job through it, and `m2fdist
# pipeline` each stage and the extraction when it runs inside an allocation of more than one node: one mechanism.
#
# One deepspeed launcher per node (srun, one task a node; no ssh), each with its node rank; the first node is the
# master. Processes per node come from the allocation: one per GPU on GPU nodes, else M2FDIST_PROCS_PER_NODE
# (default 1: one rank using the node's cores) with DeepSpeed's CPU accelerator. The launcher is
# M2FDIST_DEEPSPEED (default .venv/bin/deepspeed); the port MASTER_PORT (default derived from the job id; the
# pipeline gives each launch its own). The hostfile goes to runs/ under the current folder, which every node must
# see (a shared file system, as the data and the checkpoints are).
set -euo pipefail
script=${1:?usage: launch/srun_deepspeed.sh SCRIPT [ARG ...]}
shift
: "${SLURM_JOB_ID:?not inside a SLURM allocation (sbatch or salloc)}"
deepspeed=${M2FDIST_DEEPSPEED:-.venv/bin/deepspeed}
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
first=$(head -n 1 <<<"$nodes")
# the master's address as SLURM knows it (a node name need not resolve on every cluster)
master=$(scontrol show node "$first" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
master=${master:-$first}
port=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
gpus=${SLURM_GPUS_ON_NODE:-0}
if [[ "$gpus" =~ ^[0-9]+$ ]] && ((gpus > 0)); then
  per_node=$gpus
else
  per_node=${M2FDIST_PROCS_PER_NODE:-1}
  export DS_ACCELERATOR=cpu
fi
mkdir -p runs
hostfile=runs/hostfile-$SLURM_JOB_ID
sed "s/\$/ slots=$per_node/" <<<"$nodes" > "$hostfile"
echo "m2fdist: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(tr '\n' ' ' <<<"$nodes"), $per_node per node: $script"
# The step's signals reach every process of it. The ranks catch them (train.stop_signals) and save; the
# deepspeed runner and launcher above them would die of SIGUSR1 (and the runner of SIGTERM), and srun would then
# end the step before the ranks saved: they start with both ignored (an ignored signal is inherited through
# exec; the ranks install their own handlers, the launcher its own SIGTERM handler).
exec srun --nodes="$(wc -l <<<"$nodes")" --ntasks-per-node=1 bash -c 'trap "" TERM USR1
  exec "$0" --hostfile "$1" --no_ssh --node_rank "$SLURM_NODEID" --master_addr "$2" --master_port "$3" "${@:4}"' \
  "$deepspeed" "$hostfile" "$master" "$port" "$script" "$@"
