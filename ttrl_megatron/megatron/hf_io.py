"""HF safetensors <-> a (TP/PP-sharded) megatron-core GPTModel, one tensor at a time.

- `load_hf_weights(model, hf_dir)`: every rank reads, lazily with `safe_open`, only the HF tensors its PP stage holds
  and writes its TP slice into its parameters (bridge/names.py decides names, fused rows and padding). The whole
  checkpoint is validated first (names and shapes, from the safetensors headers): a missing, extra or mis-shaped
  tensor raises one error naming it, before any weight is touched.
- `iter_hf_weights(model)`: yields `(hf_name, full tensor)` in HF layout on every rank: the owning PP stage gathers
  the TP shards, then broadcasts over the PP group (shapes come from the mapping, so no metadata exchange).
  Converters run it at TP=PP=1 where it does no communication.
- Value models (critic, `value_head=True`): loading fills the trunk only; exporting is refused.
- Devices: tensors are read from the files on the host and written into the parameters where they live (the
  compute device, `cuda:LOCAL_RANK` on a GPU run), one slice at a time; the export's collectives run on
  `distributed.devices.collective_device(group)` and it yields tensors on the model's device.
  CPU proxies: tests/dist/test_weights_dry_run.py (model on `meta`), tests/unit/test_fake_cuda_write.py.

Imports megatron.core (through the model) and torch.distributed; the mapping rules stay in bridge/names.py.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open

from ttrl_megatron.bridge import names as N
from ttrl_megatron.distributed.devices import collective_device
from ttrl_megatron.megatron.arch import ModelArchConfig

INDEX_FILE = "model.safetensors.index.json"


class CheckpointMismatchError(ValueError):
    """Weights that do not fit the model; the message names the first offending tensor (and shapes)."""


def norm_naming(model: torch.nn.Module) -> str:
    """'local' when the model's norms are separate modules (local layer spec), 'te' when fused (TE spec)."""
    return "local" if any(n.endswith("input_layernorm.weight") for n, _ in model.named_parameters()) else "te"


def arch_facts(arch: ModelArchConfig, padded_vocab_size: int, naming: str = "local") -> N.ArchFacts:
    """ModelArchConfig (+ Megatron's padded vocab and norm naming) -> the mapping's plain `ArchFacts`."""
    return N.ArchFacts(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups, head_dim=arch.head_dim, ffn_hidden_size=arch.intermediate_size,
        vocab_size=arch.vocab_size, padded_vocab_size=padded_vocab_size,
        tie_word_embeddings=arch.tie_word_embeddings, qkv_bias=arch.add_qkv_bias, norm_naming=naming)


def model_arch_facts(model: torch.nn.Module) -> N.ArchFacts:
    """`ArchFacts` of a model built by `build_gpt_model` (it carries `ttrl_arch`; GPTModel keeps `vocab_size`)."""
    return arch_facts(model.ttrl_arch, model.vocab_size, norm_naming(model))


def _layout() -> tuple[int, int, int, int]:
    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_world_size())


# --- reading HF checkpoints ------------------------------------------------------------------------------------

def hf_weight_files(hf_dir: str) -> dict[str, str]:
    """HF tensor name -> safetensors file path (from the index when present, else from every *.safetensors)."""
    index = os.path.join(hf_dir, INDEX_FILE)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
    files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {hf_dir} (only safetensors checkpoints are supported)")
    out = {}
    for file in files:
        with safe_open(os.path.join(hf_dir, file), framework="pt") as f:
            out.update({name: os.path.join(hf_dir, file) for name in f.keys()})
    return out


def validate_hf_checkpoint(hf_dir: str, facts: N.ArchFacts) -> dict[str, str]:
    """Check names and shapes of an HF checkpoint against the config without reading tensor data.

    Returns name -> file for the tensors to load (a tied model's redundant `lm_head.weight`, when present, is left
    out). Raises CheckpointMismatchError naming the first missing, unexpected or mis-shaped tensor."""
    files = hf_weight_files(hf_dir)
    if facts.tie_word_embeddings:
        files.pop("lm_head.weight", None)  # some tied checkpoints store the alias; the embedding is the truth
    expected = N.expected_hf_shapes(facts)
    extra = [n for n in files if n not in expected]
    if extra:
        raise CheckpointMismatchError(f"{hf_dir}: unexpected tensor {extra[0]!r} (in {os.path.basename(files[extra[0]])}"
                                      f"), not part of this config's model ({len(extra)} unexpected in total)")
    missing = [n for n in expected if n not in files]
    if missing:
        raise CheckpointMismatchError(f"{hf_dir}: tensor {missing[0]!r} with shape {expected[missing[0]]} is missing "
                                      f"({len(missing)} missing in total)")
    with ExitStack() as stack:
        handles = {}
        for name, want in expected.items():
            path = files[name]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            shape = tuple(handles[path].get_slice(name).get_shape())
            if shape != want:
                raise CheckpointMismatchError(f"{hf_dir}: tensor {name!r} has shape {shape} in "
                                              f"{os.path.basename(path)}, the config implies {want}")
    return files


def hf_checkpoint_dtype(hf_dir: str) -> torch.dtype:
    """dtype of the (first) floating tensor stored in the HF checkpoint."""
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    for name, path in hf_weight_files(hf_dir).items():
        with safe_open(path, framework="pt") as f:
            code = f.get_slice(name).get_dtype()
        if code not in dtypes:
            raise CheckpointMismatchError(f"{hf_dir}: tensor {name!r} has dtype {code}; supported: {sorted(dtypes)}")
        return dtypes[code]
    raise FileNotFoundError(f"no tensors in {hf_dir}")


# --- HF -> Megatron ------------------------------------------------------------------------------------------

def load_hf_weights(model: torch.nn.Module, hf_dir: str, progress: bool = False) -> None:
    """Fill this rank's GPTModel stage with the HF checkpoint in `hf_dir` (streamed tensor by tensor).

    A value model (`build_gpt_model(..., value_head=True)`) gets the trunk only: its head `output_layer.weight`
    `[1, h]` has no causal-LM counterpart and is left as built."""
    facts = model_arch_facts(model)
    tp_rank, tp_size, pp_rank, pp_size = _layout()
    files = validate_hf_checkpoint(hf_dir, facts)
    params = dict(model.named_parameters())
    trunk_only = bool(getattr(model, "ttrl_value_head", False))
    written: set[str] = {N.OUTPUT_LAYER} if trunk_only else set()
    names = [n for n in N.expected_hf_shapes(facts) if _stage_needs(n, facts, pp_rank, pp_size, trunk_only)]
    with ExitStack() as stack, torch.no_grad():
        handles: dict[str, object] = {}
        for name in _progress(names, progress, "HF -> Megatron"):
            path = files[name]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            tensor = handles[path].get_tensor(name)
            for piece in N.hf_to_megatron_shard(name, tensor, facts, tp_rank, tp_size):
                local = N.to_local_name(piece.megatron_name, facts, pp_rank, pp_size)
                skip = piece.tied_copy and (trunk_only or local not in params)
                if local is None or skip:
                    continue
                if local not in params:
                    raise CheckpointMismatchError(f"{name}: maps to Megatron parameter {local!r}, which this model "
                                                  "stage does not have (layer spec / config mismatch?)")
                _write(params[local], piece, name)
                written.add(local)
    unfilled = sorted(set(params) - written)
    if unfilled:
        raise CheckpointMismatchError(f"Megatron parameter {unfilled[0]!r} got no HF weight "
                                      f"({len(unfilled)} unfilled in total)")


def _stage_needs(hf_name: str, facts: N.ArchFacts, pp_rank: int, pp_size: int, trunk_only: bool) -> bool:
    mg = N.hf_to_megatron_name(hf_name, facts)[0]
    if mg == N.OUTPUT_LAYER and trunk_only:
        return False
    if mg == N.EMBEDDING and facts.tie_word_embeddings and pp_rank == pp_size - 1 and not trunk_only:
        return True  # the last stage keeps its own copy of a tied embedding as output layer
    return N.owning_stage(mg, facts, pp_size) == pp_rank


def _write(param: torch.Tensor, piece: N.ShardPiece, hf_name: str) -> None:
    """Write one HF tensor's slice into its rows of the local parameter (on the parameter's device).

    The HF tensor comes from the file on the host; the parameter lives on the compute device (GPU). `copy_` moves
    and casts across devices by itself; `index_copy_` (fused q/k/v and gate/up rows) needs its index and source on
    the parameter's device, so both are moved there first (one slice at a time, never a whole-model copy)."""
    rows = piece.rows
    want = tuple(param.shape) if rows is None else (rows.numel(), *param.shape[1:])
    if want != tuple(piece.data.shape):
        raise CheckpointMismatchError(f"{hf_name}: slice of shape {tuple(piece.data.shape)} does not fit "
                                      f"{piece.megatron_name} rows of shape {want}")
    if rows is None:
        param.data.copy_(piece.data)
    else:
        param.data.index_copy_(0, rows.to(param.device), piece.data.to(param.device, param.dtype))


# --- Megatron -> HF ------------------------------------------------------------------------------------------

def iter_hf_weights(model: torch.nn.Module, progress: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, tensor)` for the whole model in HF layout (unpadded vocab, split qkv/fc1, tied: no
    lm_head) on every rank. Collective: every rank of the model-parallel group must iterate it to the end.

    Devices: every yielded tensor lives on the model's device (the compute device; at TP=PP=1 most are views of the
    live parameters, so nothing is copied). Tensors handed to a collective live on `collective_device(group)`
    (the GPU for NCCL groups; the host for gloo groups, staged there and back one tensor at a time). Nothing is
    moved to the host here: consumers that need host tensors (the converters' safetensors writer) move them.
    Extra memory: about two copies of the largest single parameter (TP shards + the gathered tensor)."""
    if getattr(model, "ttrl_value_head", False):
        raise ValueError("iter_hf_weights: a value model (value_head=True) has no HF causal-LM layout to export")
    facts = model_arch_facts(model)
    tp_rank, tp_size, pp_rank, pp_size = _layout()
    params = dict(model.named_parameters())
    first = next(iter(params.values()))
    dtype, device = first.dtype, first.device
    for spec in _progress(N.param_specs(facts), progress, "Megatron -> HF"):
        owner = N.owning_stage(spec.megatron_name, facts, pp_size)
        full = None
        if owner == pp_rank:
            local = params[N.to_local_name(spec.megatron_name, facts, pp_rank, pp_size)].data
            full = _gather_tp(spec.megatron_name, local, tp_size)
        if pp_size > 1:
            full = _broadcast_from_stage(full, N.megatron_full_shape(spec, facts), dtype, device, owner)
        yield from N.megatron_full_to_hf(spec.megatron_name, full, facts)


def _broadcast_from_stage(full: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                          device: torch.device, owner: int) -> torch.Tensor:
    """PP stage `owner`'s full tensor (None elsewhere) -> every stage, returned on `device` (the model's).

    The receive buffer is allocated where the pipeline group's backend needs it (`collective_device`): an NCCL
    group takes GPU tensors only. The owner sends its tensor in place when it already lives there."""
    group = parallel_state.get_pipeline_model_parallel_group()
    on = collective_device(group)
    buf = full.to(on).contiguous() if full is not None else torch.empty(shape, dtype=dtype, device=on)
    dist.broadcast(buf, src=dist.get_global_rank(group, owner), group=group)
    return buf.to(device)


def _gather_tp(megatron_name: str, local: torch.Tensor, tp_size: int) -> torch.Tensor:
    """All-gather a TP-sharded parameter over the TP group -> the full (TP=1 layout) tensor on `local`'s device.

    Shards travel on `collective_device(tp_group)` (the GPU for NCCL; for a gloo group with GPU parameters, e.g.
    the converters' spawned gloo ranks on a GPU machine, they are staged on the host and the result moved back)."""
    if tp_size == 1 or N.tp_split_dim(megatron_name) is None:
        return local
    group = parallel_state.get_tensor_model_parallel_group()
    send = local.to(collective_device(group)).contiguous()
    shards = [torch.empty_like(send) for _ in range(tp_size)]
    dist.all_gather(shards, send, group=group)
    return N.gather_shards(megatron_name, shards).to(local.device)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor")
