"""Fill a megatron-core GPTModel (any TP/PP layout) from a foreign torch_dist checkpoint with dist_checkpointing.

``load_foreign_weights(model, fmt)`` asks megatron for the model's own ``sharded_state_dict(prefix=...)`` (prefix
``module.`` for NeMo-2, ``model.`` for NeMo-1, none for Megatron-Bridge / Megatron-LM) and lets
``dist_checkpointing.load`` read exactly this rank's shards: resharding to any TP/PP is megatron's, because the
checkpoint stores global tensors. On top of that:
- key styles: homogeneous stacks store layers stacked on a leading axis (``decoder.layers.X`` ``[L, ...]``); MoE /
  hybrid / heterogeneous writers store them per layer (``decoder.layers.{i}.X``). When the checkpoint has per-layer
  keys, megatron builds the template in that style itself (``metadata={"non_homogeneous_layers": True}``).
- ``_extra_state`` objects (TE/FP8 metadata) are not read; the checkpoint's ``common.pt`` is not unpickled (NeMo
  keeps Lightning state there, Megatron-LM its ``args``: we do not need them and do not trust pickles).
- vocab padding: embedding/output rows padded for another TP (multiple of 128 x TP) are read whole and re-padded.
- tied models read only the embedding (NeMo's untied copy ``output_layer.weight`` is skipped); value models
  (critic) read the trunk only.
Before reading any tensor every expected key is checked against the checkpoint metadata: the first missing or
mis-shaped tensor raises ``CheckpointMismatchError`` on every rank (same message), naming key and shapes.

Imports megatron.core and torch.distributed (collective); no nemo, no megatron.bridge.
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import (ShardedObject, ShardedTensor, ShardedTensorFactory,
                                                      apply_factories, apply_factory_merges)
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

from ttrl_megatron.bridge import layouts
from ttrl_megatron.megatron.foreign.detect import CheckpointFormat
from ttrl_megatron.megatron.checkpoint import raise_collectively
from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

_PER_LAYER = re.compile(r"decoder\.layers\.\d+\.")
VOCAB_SUFFIXES = ("embedding.word_embeddings.weight", "output_layer.weight")


class _SkipCommon(TorchCommonLoadStrategy):
    """Do not unpickle ``common.pt``: model weights are all sharded tensors, the rest is trainer state."""

    def load_common(self, checkpoint_dir):
        return {}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def checkpoint_shapes(weights_dir: str) -> dict[str, tuple[int, ...]]:
    """ShardedTensor key -> global shape stored in a torch_dist checkpoint (metadata only; no process group)."""
    return {k: tuple(v.global_shape) for k, v in dist_checkpointing.load_tensors_metadata(weights_dir).items()}


def load_foreign_weights(model: torch.nn.Module, fmt: CheckpointFormat) -> None:
    """Collectively load ``fmt``'s weights into this rank's model stage (built for the checkpoint's architecture)."""
    model = unwrap(model)
    prefix = fmt.key_prefix
    ckpt = checkpoint_shapes(fmt.weights_dir)
    per_layer = any(_PER_LAYER.search(k) for k in ckpt if k.startswith(prefix))
    template = _template(model, prefix, per_layer)
    factories = {k: v for k, v in template.items() if isinstance(v, ShardedTensorFactory)}
    apply_factories(template)  # factories -> plain ShardedTensors (lists of them for fused fc1)
    expected = {st.key: tuple(st.global_shape) for st in _tensors(template)}
    resized = _vocab_keys_to_resize(expected, ckpt, model.ttrl_arch.vocab_size)
    raise_collectively(_problems(expected, ckpt, resized, fmt))
    originals = _read_vocab_whole(template, ckpt, resized)
    state = dist_checkpointing.load(template, fmt.weights_dir, common_strategy=_SkipCommon(),
                                    validate_access_integrity=False)
    apply_factory_merges(state, factories)
    for sd_key, st in originals.items():
        state[sd_key] = _local_rows(state[sd_key], st)
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    missing, _ = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state") and not _skipped_head(model, k)]
    if missing:
        raise CheckpointMismatchError(f"{fmt.weights_dir}: model parameter {missing[0]!r} was not filled "
                                      f"({len(missing)} unfilled)")


def _skipped_head(model, key: str) -> bool:
    return bool(getattr(model, "ttrl_value_head", False)) and key.startswith("output_layer.")


def _template(model: torch.nn.Module, prefix: str, per_layer: bool) -> dict:
    """The model's sharded state dict in the checkpoint's key style, without ``_extra_state`` objects (and without
    a value model's head). ``per_layer``: megatron's own non-homogeneous key style (``decoder.layers.{i}.X``)."""
    value_head = bool(getattr(model, "ttrl_value_head", False))
    metadata = {"non_homogeneous_layers": True} if per_layer else None
    out = {}
    for k, v in model.sharded_state_dict(prefix=prefix, metadata=metadata).items():
        if isinstance(v, ShardedObject) or k.endswith("_extra_state"):
            continue
        if value_head and k.startswith(prefix + "output_layer."):
            continue
        out[k] = v
    return out


def _tensors(template: dict) -> list[ShardedTensor]:
    out = []
    for v in template.values():
        out.extend(x for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, ShardedTensor))
        if isinstance(v, dict):
            out.extend(x for x in v.values() if isinstance(x, ShardedTensor))
    return out


def _vocab_keys_to_resize(expected: dict, ckpt: dict, vocab_size: int) -> set[str]:
    """Vocab keys whose padded row count differs between model and checkpoint (both covering the real vocab)."""
    return {k for k, s in expected.items() if k.endswith(VOCAB_SUFFIXES) and k in ckpt and ckpt[k][1:] == s[1:]
            and ckpt[k][0] != s[0] and min(ckpt[k][0], s[0]) >= vocab_size}


def _problems(expected: dict, ckpt: dict, resized: set, fmt: CheckpointFormat) -> list[str]:
    where = f"{fmt.kind} checkpoint {fmt.weights_dir}"
    out = []
    for key, shape in expected.items():
        if key not in ckpt:
            near = sorted(k for k in ckpt if k.split(".")[-2:] == key.split(".")[-2:])[:1]
            hint = f"; the checkpoint has {near[0]!r} (key prefix {fmt.key_prefix!r} expected)" if near else ""
            out.append(f"{where}: tensor {key!r} (shape {shape}) is missing{hint}")
        elif key not in resized and ckpt[key] != shape:
            out.append(f"{where}: tensor {key!r} has shape {ckpt[key]} in the checkpoint but {shape} in the model "
                       "built from its config (wrong config, or a config field this loader does not map)")
    return out



def _read_vocab_whole(template: dict, ckpt: dict, resized: set) -> dict[str, ShardedTensor]:
    """Swap each resized vocab tensor for a whole-tensor read at the checkpoint's shape; returns the originals."""
    originals = {}
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for sd_key, st in list(template.items()):
        if isinstance(st, ShardedTensor) and st.key in resized:
            whole = torch.empty(ckpt[st.key], dtype=st.data.dtype)  # host: transient; rows reach the param by copy_
            replica = (st.replica_id[0], tp_rank, st.replica_id[2]) if isinstance(st.replica_id, tuple) else tp_rank
            template[sd_key] = ShardedTensor.from_rank_offsets(st.key, whole, replica_id=replica)
            originals[sd_key] = st
    return originals


def _local_rows(whole: torch.Tensor, st: ShardedTensor) -> torch.Tensor:
    """This rank's rows of the model's padded vocab tensor cut from the checkpoint's differently padded one."""
    rows = st.global_shape[0]
    full = layouts.pad_vocab(whole[: min(rows, whole.shape[0])], rows)
    start = st.global_offset[0]
    return full[start: start + st.local_shape[0]].clone()


__all__ = ["checkpoint_shapes", "load_foreign_weights"]
