#!/usr/bin/env bash
# Create a W&B sweep and run an agent on this machine:
#   launch/sweep.sh configs/sweeps/meld_fusion.yaml [RUNS]
# Start more agents (other machines) with `wandb agent ENTITY/PROJECT/SWEEP_ID`. Each run the agent starts is
# the sweep's `command:`, i.e. the deepspeed launcher with the sampled key=value overrides.
set -euo pipefail
spec=${1:?usage: launch/sweep.sh SWEEP_YAML [RUNS]}
runs=${2:-20}
cd "$(dirname "$0")/.."
wandb=${WANDB_BIN:-.venv/bin/wandb}
out=$("$wandb" sweep --project "${WANDB_PROJECT:-m2fdist}" ${WANDB_ENTITY:+--entity "$WANDB_ENTITY"} "$spec" 2>&1)
echo "$out"
sweep=$(echo "$out" | awk '/wandb agent/ {print $NF}' | tail -n 1)
[ -n "$sweep" ] || { echo "could not read the sweep id from wandb's output" >&2; exit 1; }
exec "$wandb" agent --count "$runs" "$sweep"
