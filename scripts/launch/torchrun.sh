#!/usr/bin/env bash
# Launch the TTRL trainer with torchrun on this node: single node by default, or one node of a multi-node job when
# RDZV_ENDPOINT is set (c10d rendezvous; scripts/launch/slurm.sbatch sets it on every node).
#
#   scripts/launch/torchrun.sh [hydra overrides...]
#   GPUS_PER_NODE=8 scripts/launch/torchrun.sh data.train_files=[/data/train.parquet] \
#       data.val_files=[/data/test.parquet] actor_rollout_ref.model.path=/models/Qwen2.5-Math-1.5B
#   PRINT_ONLY=1 scripts/launch/torchrun.sh ...     # print the command line instead of running it
#
# Variables (defaults in brackets):
#   CONFIG_NAME     Hydra config under conf/ [examples/qwen2.5-math-1.5b]
#   GPUS_PER_NODE   processes per node [number of GPUs nvidia-smi lists, else 1]
#   NNODES          nodes in the job [1]
#   RDZV_ENDPOINT   host:port of the c10d rendezvous (multi-node; required when NNODES > 1)
#   RDZV_ID         rendezvous id, the same on every node [$SLURM_JOB_ID, else ttrl]
#   MASTER_PORT     port of the single-node run [29500]
#   PYTHON          python of the environment [python]; torchrun runs as "$PYTHON -m torch.distributed.run"
# trainer.nnodes / trainer.n_gpus_per_node are set to match (the trainer checks them against WORLD_SIZE); overrides
# given on the command line come last and win.
#
# Signals (README "Running for days on Slurm"): SIGUSR1 (the early notice slurm.sbatch forwards through srun) is
# passed to this node's ranks, which stop after the current step, checkpoint and exit 75; the torchrun agent itself
# ignores it. SIGTERM / SIGINT go to the agent, which passes them on to the ranks (SIGTERM checkpoints too; the agent
# SIGKILLs ranks still running 30 s later).
# Exit status: the ranks' own status when they recorded one (75 preempted, 124 hang watchdog, 2 bad config/data),
# else torchrun's (which reports any failed rank as 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONFIG_NAME="${CONFIG_NAME:-examples/qwen2.5-math-1.5b}"
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || GPUS_PER_NODE=1
fi
NNODES="${NNODES:-1}"
PYTHON="${PYTHON:-python}"

for var in GPUS_PER_NODE NNODES; do
    if ! [[ "${!var}" =~ ^[1-9][0-9]*$ ]]; then
        echo "torchrun.sh: $var=${!var} must be a positive integer" >&2
        exit 2
    fi
done

launcher=("$PYTHON" -m torch.distributed.run --nproc-per-node "$GPUS_PER_NODE")
if [[ "$NNODES" -gt 1 ]]; then
    if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
        echo "torchrun.sh: NNODES=$NNODES needs RDZV_ENDPOINT=host:port (the first node; slurm.sbatch sets it)" >&2
        exit 2
    fi
    launcher+=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT"
               --rdzv-id "${RDZV_ID:-${SLURM_JOB_ID:-ttrl}}")
else
    launcher+=(--nnodes 1 --master-addr 127.0.0.1 --master-port "${MASTER_PORT:-29500}")
fi
cmd=("${launcher[@]}" -m ttrl_megatron.main --config-name "$CONFIG_NAME"
     "trainer.nnodes=$NNODES" "trainer.n_gpus_per_node=$GPUS_PER_NODE" "$@")

if [[ "${PRINT_ONLY:-0}" == "1" ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
cd "$ROOT"
TTRL_EXIT_STATUS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ttrl-exit.XXXXXX")"
export TTRL_EXIT_STATUS_DIR
trap '' USR1  # inherited by the torchrun agent as "ignore"; the ranks install their own handler
"${cmd[@]}" &
agent=$!
to_ranks() {  # the agent's children are this node's ranks
    if command -v pkill >/dev/null 2>&1; then
        pkill "-$1" -P "$agent" || true
    else
        for child in $(cat /proc/"$agent"/task/*/children 2>/dev/null); do kill "-$1" "$child" 2>/dev/null || true; done
    fi
}
trap 'to_ranks USR1' USR1
trap 'kill -TERM "$agent" 2>/dev/null || true' TERM
trap 'kill -INT "$agent" 2>/dev/null || true' INT
while :; do  # a trapped signal interrupts `wait`: wait again until the agent has really exited
    wait "$agent" && rc=0 || rc=$?
    kill -0 "$agent" 2>/dev/null || break
done
if [[ "$rc" -ne 0 ]]; then
    for code in 124 2 75; do  # the most telling status any rank recorded
        if cat "$TTRL_EXIT_STATUS_DIR"/rank* 2>/dev/null | grep -qx "$code"; then
            rc=$code
            break
        fi
    done
fi
rm -rf "$TTRL_EXIT_STATUS_DIR"
exit "$rc"
