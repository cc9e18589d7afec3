"""Convert a Megatron checkpoint written by megatron/checkpoint.py into an HF folder `transformers` loads.

    python -m converters.megatron_to_hf --megatron-dir checkpoints/smollm2-mcore --out models/smollm2-back

Runs in this process (private 1-process gloo group): builds the TP=PP=1 model, loads the dist-checkpoint (whatever
layout saved it), and streams the HF tensors (unpadded vocab, split qkv/fc1, tied models without `lm_head`) into
safetensors shards written as they fill (`--max-shard-mb`), plus `model.safetensors.index.json` when there are
several. config.json, tokenizer and generation files come from the checkpoint's `hf/` copy; without one, config.json
is rebuilt from the stored architecture. Peak memory: the model plus one shard.

Also accepts checkpoints of other Megatron stacks (`--format auto|nemo2|mbridge|megatron_lm`, auto-detected by
default; ttrl_megatron/megatron/foreign): NeMo-2 (`context/` + `weights/`), Megatron-Bridge / NeMo-RL (`iter_N/`
or its root), Megatron-LM. Their config is read from YAML / args only, NeMo's duplicated output layer of a tied model
is dropped, vocab padding is stripped, config.json is rebuilt from the architecture and the tokenizer shipped with
the checkpoint (NeMo-2 `context/nemo_tokenizer`, Megatron-Bridge `tokenizer/`) is copied when present.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from converters.hf_to_megatron import DTYPE_CHOICES, _check_empty
from ttrl_megatron.distributed.devices import host_device


def convert_megatron_to_hf(megatron_dir: str, out_dir: str, dtype: torch.dtype | None = None,
                           max_shard_mb: int = 2048, progress: bool = True, load_format: str = "auto",
                           hf_vocab_size: int | None = None) -> None:
    """Write an HF model folder `out_dir` (absent or empty) from the checkpoint in `megatron_dir`.

    dtype: dtype of the written tensors (default: the checkpoint's params dtype). load_format: `auto` (detect) or
    the expected foreign format (`nemo2`, `mbridge`, `megatron_lm`); our own checkpoints need `auto`.
    hf_vocab_size: the unpadded vocabulary of a Megatron-LM checkpoint (its args store only the padded size)."""
    from ttrl_megatron.megatron.foreign import detect_format

    if load_format != "auto" or detect_format(megatron_dir).kind != "ttrl":
        return _convert_foreign(megatron_dir, out_dir, dtype, max_shard_mb, progress, load_format, hf_vocab_size)
    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.checkpoint import checkpoint_arch, checkpoint_dtype, load_model_checkpoint
    from ttrl_megatron.megatron.hf_io import iter_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    arch = checkpoint_arch(megatron_dir)
    _check_empty(out_dir)
    params_dtype = checkpoint_dtype(megatron_dir)
    dtype = dtype or params_dtype
    os.makedirs(out_dir, exist_ok=True)
    with megatron_group(1, 1):
        model = build_gpt_model(arch, params_dtype=params_dtype)
        load_model_checkpoint(model, megatron_dir)
        writer = ShardWriter(out_dir, max_shard_mb * 2**20)
        for name, tensor in iter_hf_weights(model, progress=progress):
            writer.add(name, tensor.to(dtype))
        writer.close()
    _write_config_and_tokenizer(os.path.join(megatron_dir, "hf"), out_dir, arch, dtype)


def _convert_foreign(path: str, out_dir: str, dtype: torch.dtype | None, max_shard_mb: int, progress: bool,
                     load_format: str, hf_vocab_size: int | None) -> None:
    """NeMo-2 / Megatron-Bridge / Megatron-LM checkpoint -> HF folder (same streaming as our own format)."""
    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.foreign.api import DTYPES, build_foreign_model, read_foreign
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    info = read_foreign(path, load_format, hf_vocab_size=hf_vocab_size)
    print(info.report.summary().splitlines()[0] + "".join(f"\n  note: {n}" for n in info.report.notes))
    _check_empty(out_dir)
    params_dtype = DTYPES[info.params_dtype]
    dtype = dtype or params_dtype
    os.makedirs(out_dir, exist_ok=True)
    with megatron_group(1, 1):
        model = build_foreign_model(info, params_dtype)
        writer = ShardWriter(out_dir, max_shard_mb * 2**20)
        for name, tensor in iter_hf_weights(model, progress=progress):
            writer.add(name, tensor.to(dtype))
        writer.close()
    _write_config_and_tokenizer(info.fmt.tokenizer_dir, out_dir, info.arch, dtype)
    generation = os.path.join(info.fmt.path, "context", "artifacts", "generation_config.json")  # NeMo-2 keeps it
    if os.path.isfile(generation):
        shutil.copy2(generation, os.path.join(out_dir, "generation_config.json"))


class ShardWriter:
    """Writes (name, tensor) pairs into numbered safetensors files as each reaches `max_bytes`, then names them
    HF style (`model.safetensors`, or `model-0000i-of-0000n.safetensors` + index)."""

    def __init__(self, out_dir: str, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; it is copied to the host now (the export yields tensors on the model's device, e.g. the
        GPU), so the device never holds more than the tensor being produced and the host at most one shard."""
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to(host_device()).contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        tmp = f"shard-{len(self.files):05d}.tmp.safetensors"
        save_file(self.pending, os.path.join(self.out_dir, tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.files:
            self._flush()
        n = len(self.files)
        final = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for (tmp, _), name in zip(self.files, final):
            os.replace(os.path.join(self.out_dir, tmp), os.path.join(self.out_dir, name))
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {t: name for (_, names), name in zip(self.files, final) for t in names}}
            with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)


def _write_config_and_tokenizer(src: str | None, out_dir: str, arch, dtype: torch.dtype) -> None:
    """Copy the files of `src` (our checkpoint's `hf/` copy, or a foreign checkpoint's tokenizer folder), then
    write config.json: the copied one, else one rebuilt from `arch`, with the written dtype."""
    if src is not None and os.path.isdir(src):
        for name in os.listdir(src):
            shutil.copy2(os.path.join(src, name), os.path.join(out_dir, name))
    config_path = os.path.join(out_dir, "config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else hf_config_from_arch(arch)
    dtype_key = "dtype" if "dtype" in config or "torch_dtype" not in config else "torch_dtype"
    config[dtype_key] = str(dtype).removeprefix("torch.")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hf_config_from_arch(arch) -> dict:
    """A minimal HF config.json for a ModelArchConfig (used when the checkpoint carries no HF config copy)."""
    config = {
        "architectures": [arch.architecture], "model_type": arch.model_type, "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_query_groups, "head_dim": arch.head_dim, "hidden_act": "silu",
        "max_position_embeddings": arch.max_position_embeddings, "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta, "tie_word_embeddings": arch.tie_word_embeddings,
        "initializer_range": arch.initializer_range,
    }
    if arch.rope_scaling_factor is not None:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": arch.rope_scaling_factor, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megatron-dir", required=True, help="checkpoint folder written by hf_to_megatron/trainer")
    parser.add_argument("--out", required=True, help="new (or empty) output folder for the HF model")
    parser.add_argument("--dtype", choices=sorted(DTYPE_CHOICES), default=None,
                        help="dtype of the written tensors (default: the checkpoint's)")
    parser.add_argument("--max-shard-mb", type=int, default=2048, help="largest safetensors file (MiB)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--format", default="auto", choices=("auto", "nemo2", "mbridge", "megatron_lm"),
                        help="checkpoint format of --megatron-dir (default: detect)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="unpadded vocab size (Megatron-LM checkpoints store only the padded one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    convert_megatron_to_hf(args.megatron_dir, args.out, dtype=DTYPE_CHOICES[args.dtype] if args.dtype else None,
                           max_shard_mb=args.max_shard_mb, progress=not args.no_progress, load_format=args.format,
                           hf_vocab_size=args.vocab_size)
    print(f"wrote HF checkpoint to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
