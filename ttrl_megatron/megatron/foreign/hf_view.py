"""An HF folder for a non-HF initial policy, written collectively inside a running trainer.

The trainer needs an HF folder besides the Megatron weights: vLLM loads one, the tokenizer comes from one, and
``ModelArchConfig.from_hf`` reads its config.json. ``materialize_hf(path, load_format, out_dir)`` returns ``path``
itself for HF checkpoints; for NeMo-2 / Megatron-Bridge / Megatron-LM / ttrl checkpoints it loads the model at the
CURRENT parallel layout (megatron/foreign), streams it out in HF layout (``hf_io.iter_hf_weights``: TP gather + PP
broadcast, so every rank takes part) and global rank 0 writes safetensors shards, config.json (rebuilt from the
architecture) and the tokenizer files shipped with the checkpoint. A finished folder (``.complete`` marker) is
reused, so a restarted run does not convert again.

Collective: every rank calls it after ``parallel.init_distributed``. Imports megatron.core (through the loader)
and the converters' shard writer.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist

from ttrl_megatron.megatron.foreign.detect import resolve_format

COMPLETE = ".complete"


def materialize_hf(path: str, load_format: str, out_dir: str, params_dtype: torch.dtype = torch.float32,
                   max_shard_mb: int = 2048) -> str:
    """HF folder for ``path`` (see module doc); ``params_dtype``: dtype of the written tensors."""
    fmt = resolve_format(path, load_format)
    if fmt.kind == "hf":
        return path
    if not os.path.isfile(os.path.join(out_dir, COMPLETE)):
        _write(fmt, path, load_format, out_dir, params_dtype, max_shard_mb)
    dist.barrier()
    return out_dir


def _write(fmt, path: str, load_format: str, out_dir: str, dtype: torch.dtype, max_shard_mb: int) -> None:
    from converters.megatron_to_hf import ShardWriter, hf_config_from_arch
    from ttrl_megatron.megatron.foreign.api import load_initial_model
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    writer = None
    if dist.get_rank() == 0:
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)  # an unfinished earlier attempt
        os.makedirs(out_dir)
        writer = ShardWriter(out_dir, max_shard_mb * 2**20)
    model = load_initial_model(path, load_format, dtype)
    for name, tensor in iter_hf_weights(model):  # collective on every rank
        if writer is not None:
            writer.add(name, tensor)  # the writer copies it to the host (the model is not changed meanwhile)
    if writer is None:
        return
    writer.close()
    if fmt.tokenizer_dir:
        for name in os.listdir(fmt.tokenizer_dir):
            src = os.path.join(fmt.tokenizer_dir, name)
            if os.path.isfile(src) and not name.endswith((".safetensors", ".bin")) and name != "config.json":
                shutil.copy2(src, os.path.join(out_dir, name))
    config = hf_config_from_arch(model.ttrl_arch)
    config["dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, COMPLETE), "w", encoding="utf-8") as f:
        f.write(os.path.abspath(path))
