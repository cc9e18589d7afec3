#!/usr/bin/env bash
# The main job on its built-in default: set up the environment if needed, then run the TTRL demo pipeline
# offline on this machine. Extra arguments are passed to the demo (`--help` lists them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$TTRL_PYTHON" -m ttrl_megatron.demo "$@"
