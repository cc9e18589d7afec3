"""Save/load a megatron-core model with `dist_checkpointing` (torch_dist), loadable at any TP/PP layout.

Directory layout written by `save_model_checkpoint` (read by `load_model_checkpoint` and converters/megatron_to_hf):

    <ckpt_dir>/ttrl_checkpoint.json   our format marker, arch, params dtype, saved layout, padded vocab
    <ckpt_dir>/hf/                    copy of the source HF config.json + tokenizer/generation files (optional)
    <ckpt_dir>/weights/               megatron dist-checkpoint: metadata.json, .metadata, __*_*.distcp, common.pt

The weights hold `model.sharded_state_dict()` keys without a prefix (Megatron-Bridge style, layers stacked on a
leading axis; reference/nemo-formats.md §3). dist-checkpoints store global tensors, so TP/PP resharding is
megatron's; the one exception is handled here: Megatron pads the vocab to a multiple of 128 x TP, so the embedding
/ output rows can differ between layouts (151936 -> 152064 at TP=2). Such a tensor is read whole and re-padded.
Before loading, every tensor is checked against the checkpoint's metadata: the first missing, extra or mis-shaped
tensor (and an arch field that differs) raises `CheckpointMismatchError` on every rank, naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, fields

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies import torch as torch_strategy
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from torch.distributed import checkpoint as dcp

from ttrl_megatron.bridge import layouts
from ttrl_megatron.megatron.arch import ModelArchConfig
from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

FORMAT = "ttrl-megatron/dist-checkpoint"
FORMAT_VERSION = 1
META_FILE = "ttrl_checkpoint.json"
WEIGHTS_DIR = "weights"
HF_DIR = "hf"
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")
# Fields that must agree between the checkpoint and the model it is loaded into (all but bookkeeping).
ARCH_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
               "num_query_groups", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling_factor",
               "tie_word_embeddings", "add_qkv_bias")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class InProcessTorchDistSave(torch_strategy.TorchDistSaveShardedStrategy):
    """megatron's torch_dist save, writing with torch's own `FileSystemWriter` in this process.

    Same files and metadata (megatron's key translation and `MCoreSavePlanner`); what changes is the writer:
    megatron's `FileSystemWriterAsync` starts a multiprocessing Manager (spawn) once per process and forks a
    writer process per file on every save, which costs seconds on CPU, cannot run inside daemonic processes (test
    harness ranks) and calls `torch.cuda.synchronize()`. Checkpoints load with megatron's default load strategy."""

    def __init__(self):
        super().__init__("torch_dist", 1)

    def async_save(self, sharded_state_dict, checkpoint_dir) -> AsyncRequest:
        flat, _, _ = torch_strategy._replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica)
        dcp.save(torch_strategy.mcore_to_pyt_state_dict(flat, False),
                 storage_writer=dcp.FileSystemWriter(str(checkpoint_dir), thread_count=1),
                 planner=torch_strategy.MCoreSavePlanner(
                     dedup_replicated_tensors=not self.keep_only_main_replica, flatten_state_dict=False))
        return AsyncRequest(None, (), [])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron DDP / Float16Module wrappers (they expose it as `.module`)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def save_model_checkpoint(model: torch.nn.Module, ckpt_dir: str, hf_source_dir: str | None = None) -> None:
    """Collectively save `model` (this rank's GPTModel stage, built by `build_gpt_model`, wrapped or not) into
    `ckpt_dir`.

    `hf_source_dir`: copy its config.json, tokenizer and generation files into `<ckpt_dir>/hf` (weights are not
    copied) so converters/megatron_to_hf can rebuild an HF checkpoint."""
    model = unwrap(model)
    weights = os.path.join(ckpt_dir, WEIGHTS_DIR)
    if os.path.isdir(weights) and os.listdir(weights):
        raise FileExistsError(f"{weights} already holds a checkpoint; choose an empty checkpoint directory")
    if dist.get_rank() == 0:
        os.makedirs(weights, exist_ok=True)
        if hf_source_dir is not None:
            _copy_hf_files(hf_source_dir, os.path.join(ckpt_dir, HF_DIR))
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), weights, sharded_strategy=InProcessTorchDistSave())
    if dist.get_rank() == 0:
        with open(os.path.join(ckpt_dir, META_FILE), "w", encoding="utf-8") as f:
            json.dump(_meta(model), f, indent=2)
    dist.barrier()


def _meta(model: torch.nn.Module) -> dict:
    arch = model.ttrl_arch
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": {k: v for k, v in asdict(arch).items() if k != "source"},
        "params_dtype": _dtype_name(next(model.parameters()).dtype),
        "padded_vocab_size": model.vocab_size,
        "saved_layout": {"tp": parallel_state.get_tensor_model_parallel_world_size(),
                         "pp": parallel_state.get_pipeline_model_parallel_world_size()},
        "value_head": bool(getattr(model, "ttrl_value_head", False)),
    }


def _copy_hf_files(src: str, dst: str) -> None:
    """Config, tokenizer, chat template and generation files of an HF model folder (never its weights)."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and not name.endswith(_WEIGHT_SUFFIXES) and not name.endswith(".index.json"):
            shutil.copy2(path, os.path.join(dst, name))


def read_checkpoint_meta(ckpt_dir: str) -> dict:
    """Our metadata of a checkpoint folder; a clear error when `ckpt_dir` is not one of ours."""
    path = os.path.join(ckpt_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {ckpt_dir} is not a ttrl-megatron checkpoint "
                                f"(convert HF weights with `python -m converters.hf_to_megatron`)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format={meta.get('format')!r} version={meta.get('format_version')!r}; "
                         f"expected {FORMAT!r} version {FORMAT_VERSION}")
    return meta


def checkpoint_arch(ckpt_dir: str) -> ModelArchConfig:
    """The model architecture stored with a checkpoint (fields ModelArchConfig no longer has are ignored; fields
    added since take their defaults)."""
    known = {f.name for f in fields(ModelArchConfig)} - {"source"}
    stored = {k: v for k, v in read_checkpoint_meta(ckpt_dir)["arch"].items() if k in known}
    return ModelArchConfig(source=os.path.join(ckpt_dir, META_FILE), **stored)


def checkpoint_dtype(ckpt_dir: str) -> torch.dtype:
    """params dtype the checkpoint was saved with."""
    return DTYPES[read_checkpoint_meta(ckpt_dir)["params_dtype"]]


def load_model_checkpoint(model: torch.nn.Module, ckpt_dir: str) -> dict:
    """Collectively load a checkpoint written by `save_model_checkpoint` (any TP/PP) into `model`; returns meta.

    Raises CheckpointMismatchError (same message on every rank) naming the first differing arch field, or the first
    tensor that is missing, extra or differently shaped."""
    model = unwrap(model)
    meta = read_checkpoint_meta(ckpt_dir)
    _check_arch(meta, model)
    state = load_resharded(model.sharded_state_dict(), os.path.join(ckpt_dir, WEIGHTS_DIR), model.ttrl_arch.vocab_size)
    model.load_state_dict(state, strict=True)
    return meta


def load_resharded(sharded: dict, directory: str, vocab_size: int) -> dict:
    """Collectively `dist_checkpointing.load` the (nested) sharded state dict `sharded` from `directory`, after
    checking every tensor against the checkpoint's metadata; vocab tensors (keys ending in a VOCAB_KEYS name, e.g.
    `optimizer.state.exp_avg.embedding.word_embeddings.weight`) padded differently are read whole and re-padded.

    Raises CheckpointMismatchError (same message on every rank) naming the first tensor that is missing, extra or
    differently shaped."""
    ckpt_shapes = {k: tuple(v.global_shape) for k, v in dist_checkpointing.load_tensors_metadata(directory).items()}
    model_shapes = _sharded_shapes(sharded)
    resized = _vocab_rows_to_resize(model_shapes, ckpt_shapes, vocab_size)
    raise_collectively(_mismatches(model_shapes, ckpt_shapes, resized, directory))
    targets = _replace_vocab_entries(sharded, ckpt_shapes, resized)
    state = dist_checkpointing.load(sharded, directory)
    for path, st in targets.items():
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = _local_vocab_rows(parent[path[-1]], st)
    return state


def _check_arch(meta: dict, model: torch.nn.Module) -> None:
    saved, arch = meta["arch"], asdict(model.ttrl_arch)
    for name in ARCH_FIELDS:
        if saved.get(name) != arch[name]:
            raise CheckpointMismatchError(f"checkpoint arch {name}={saved.get(name)!r} differs from the model's "
                                          f"{name}={arch[name]!r}: wrong model config for this checkpoint")
    if meta.get("value_head", False) != bool(getattr(model, "ttrl_value_head", False)):
        raise CheckpointMismatchError(f"checkpoint value_head={meta.get('value_head')} differs from the model's")


def _sharded_shapes(sharded: dict) -> dict[str, tuple[int, ...]]:
    """ShardedTensor key -> global shape for this rank's sharded state dict (factories expanded)."""
    shapes = {}
    for v in nested_values(sharded):
        items = nested_values(v.build()) if isinstance(v, ShardedTensorFactory) else [v]
        shapes.update({st.key: tuple(st.global_shape) for st in items if isinstance(st, ShardedTensor)})
    return shapes


def _is_vocab_key(key: str) -> bool:
    return any(key == v or key.endswith("." + v) for v in VOCAB_KEYS)


def _vocab_rows_to_resize(model_shapes: dict, ckpt_shapes: dict, vocab_size: int) -> set[str]:
    """Vocab keys whose padded row count differs between checkpoint and model (both covering the real vocab)."""
    return {k for k in model_shapes if _is_vocab_key(k) and k in ckpt_shapes
            and model_shapes[k][1:] == ckpt_shapes[k][1:] and model_shapes[k][0] != ckpt_shapes[k][0]
            and min(model_shapes[k][0], ckpt_shapes[k][0]) >= vocab_size}


def _mismatches(model_shapes: dict, ckpt_shapes: dict, resized: set, where: str) -> list[str]:
    problems = [f"{where}: tensor {k!r} is missing from the checkpoint (the model expects shape {s})"
                for k, s in model_shapes.items() if k not in ckpt_shapes]
    problems += [f"{where}: tensor {k!r} has shape {ckpt_shapes[k]} in the checkpoint but {s} in the model"
                 for k, s in model_shapes.items() if k in ckpt_shapes and k not in resized and ckpt_shapes[k] != s]
    wanted = [None] * dist.get_world_size()
    dist.all_gather_object(wanted, sorted(model_shapes))  # PP stages each want part of the keys
    union = set().union(*wanted)
    problems += [f"{where}: checkpoint tensor {k!r} (shape {s}) has no place in the model"
                 for k, s in ckpt_shapes.items() if k not in union]
    return problems


def raise_collectively(problems: list[str]) -> None:  # shared with foreign/loader.py
    """Raise the same (first) problem on every rank, so no rank hangs in a later collective."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, problems)
    first = next((p for ps in everyone for p in ps), None)
    if first is not None:
        total = sum(len(ps) for ps in everyone)
        raise CheckpointMismatchError(first + (f" ({total - 1} more problems)" if total > 1 else ""))


def _replace_vocab_entries(sharded, ckpt_shapes: dict, resized: set, path: tuple = ()) -> dict:
    """Swap each resized vocab tensor (anywhere in the nested dicts/lists) for a whole-tensor read at the
    checkpoint's shape; returns {path: original ShardedTensor}."""
    originals = {}
    items = sharded.items() if isinstance(sharded, dict) else enumerate(sharded) if isinstance(sharded, list) else ()
    for key, st in list(items):
        if isinstance(st, ShardedTensor) and st.key in resized:
            # host: a transient whole-vocab read; its rows reach the parameter / optimizer state by copy_
            whole = torch.empty(ckpt_shapes[st.key], dtype=st.data.dtype)  # host: see above
            # every TP rank now reads the whole tensor: mark all but TP rank 0 as replicas (megatron's replica id
            # is (pipeline/layer, TP, DP) for these tensors)
            replica = (st.replica_id[0], parallel_state.get_tensor_model_parallel_rank(), st.replica_id[2])
            sharded[key] = ShardedTensor.from_rank_offsets(st.key, whole, replica_id=replica)
            originals[(*path, key)] = st
        elif isinstance(st, (dict, list)):
            originals.update(_replace_vocab_entries(st, ckpt_shapes, resized, (*path, key)))
    return originals


def _local_vocab_rows(whole: torch.Tensor, st: ShardedTensor) -> torch.Tensor:
    """This rank's rows of the model's padded vocab tensor, cut from the checkpoint's (differently padded) one."""
    padded_rows = st.global_shape[0]
    full = layouts.pad_vocab(whole[: min(padded_rows, whole.shape[0])], padded_rows)
    start = st.global_offset[0]
    return full[start: start + st.local_shape[0]].clone()
