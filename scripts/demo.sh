#!/usr/bin/env bash
# The main job on its built-in default: set up the environment if needed, then run the TTRL demo pipeline
# offline on this machine. Extra arguments are passed to the demo (`--help` lists them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
exec "$TTRL_PYTHON" -m ttrl_megatron.demo "$@"
