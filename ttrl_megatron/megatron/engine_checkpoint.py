"""Save/load a whole trainable role (``RoleEngine``: model + optimizer + lr scheduler) as megatron-core
distributed checkpoints, loadable at another TP / PP / DP layout.

Directory layout (``<dir>`` is e.g. ``global_step_N/actor``):

    <dir>/ttrl_checkpoint.json, hf/, weights/   the model, exactly as ``checkpoint.save_model_checkpoint`` writes it
                                                (so converters/megatron_to_hf exports it unchanged)
    <dir>/optim/                                dist-checkpoint: optimizer state (ShardedTensors keyed by the model
                                                tensor they belong to, e.g. ``optimizer.state.exp_avg.<model key>``)
                                                + lr scheduler and param-group hyper-parameters (common.pt)
    <dir>/optimizer.json                        what the optimizer state needs to be read back: distributed or not,
                                                optimizer name, params dtype, layout it was saved at

Why the distributed optimizer is handled by hand (megatron-core 0.16.1, torch's Adam because Apex/TE are absent):
- its default sharding (``fully_sharded_model_space``) raises "ShardedTensor.flattened_range is not supported", and
  ``dp_reshardable`` only reshards DP (and fails here copying into fp32 main params outside ``no_grad``), so we use
  ``fully_reshardable`` (gathered per parameter over DP on save, each rank reads whole tensors and slices its range
  on load): TP, PP and DP may all change;
- a fresh distributed optimizer has no state yet and its ``state_dict()`` asserts on the missing per-parameter
  ``step``: the load template is built after creating zero Adam state (``_init_adam_state``);
- its loader copies the saved tensors into every key of the live state, ``step`` included, which the checkpoint
  does not hold (``KeyError: 'step'``): the param-group part (which carries ``step``) is loaded first, then the
  parameter state with ``step`` set aside, under ``no_grad`` (fp32 main params are views of the model's);
- that first part gives every parameter the SAME step tensor, which torch's Adam would then advance once per
  parameter per step: each parameter gets its own copy back.
With Transformer Engine (or apex) installed, megatron-core builds their ``FusedAdam`` instead of torch's Adam. Its state
layout differs in one way that matters here: ``exp_avg`` / ``exp_avg_sq`` per parameter as in torch, but no
per-parameter ``step``: each param group carries an int ``step`` (incremented by every ``step()``), and megatron's
DistributedOptimizer then takes its TE/apex paths (step read from / written to the param groups; a fresh
optimizer's state is allocated by megatron's own ``load_state_dict``). So for FusedAdam nothing is initialised by
hand and no step is set aside; the param groups' ``step`` travels in the checkpoint's common part.
Switching between the distributed and the plain optimizer, or between torch's Adam and FusedAdam (their param
groups hold different keys), is refused with a message naming both settings.

Imports megatron.core (through checkpoint.py); must not import vllm, hydra or the trainer.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from ttrl_megatron.megatron.checkpoint import (
    InProcessTorchDistSave, load_model_checkpoint, load_resharded, save_model_checkpoint, unwrap,
)
from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

OPTIM_DIR = "optim"
OPTIM_META = "optimizer.json"
OPTIM_FORMAT = "ttrl-megatron/optimizer-dist-checkpoint"
# The one distributed-optimizer format of megatron-core 0.16.1 that both works here and reshards TP/PP/DP.
# mem_efficient: on save the DP shards are gathered (gloo, host memory) on DP rank 0 only, which writes them; without
# it every DP rank would hold the whole TPxPP-shard's optimizer state in host memory at once.
DISTOPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                    "distrib_optim_fully_reshardable_mem_efficient": True}


def save_engine_checkpoint(engine, ckpt_dir: str, hf_source_dir: str | None = None) -> None:
    """Collectively save ``engine`` (a ``RoleEngine`` with one model chunk) into the empty folder ``ckpt_dir``:
    model weights, then (trainable engines) optimizer + lr scheduler."""
    model = _single_chunk(engine)
    save_model_checkpoint(model, ckpt_dir, hf_source_dir)
    if engine.optimizer is None:
        return
    state = {"optimizer": _optimizer_sharded_state(engine, for_loading=False),
             "scheduler": engine.scheduler.state_dict()}
    optim_dir = os.path.join(ckpt_dir, OPTIM_DIR)
    if dist.get_rank() == 0:
        os.makedirs(optim_dir, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(state, optim_dir, sharded_strategy=InProcessTorchDistSave())
    if dist.get_rank() == 0:
        with open(os.path.join(ckpt_dir, OPTIM_META), "w", encoding="utf-8") as f:
            json.dump(_optimizer_meta(engine), f, indent=2)
    dist.barrier()


def load_engine_checkpoint(engine, ckpt_dir: str, *, weights_only: bool = False) -> dict:
    """Collectively restore what ``save_engine_checkpoint`` wrote, at any TP/PP/DP layout; returns the model meta.

    ``weights_only``: load the model and leave the optimizer and scheduler as they are. Raises
    CheckpointMismatchError naming the saved and the current setting when the optimizer state cannot be used
    (distributed vs plain optimizer, another optimizer or dtype), FileNotFoundError when it is missing."""
    model = _single_chunk(engine)
    meta = load_model_checkpoint(model, ckpt_dir)
    if engine.optimizer is None or weights_only:
        return meta
    _check_optimizer_meta(_read_optimizer_meta(ckpt_dir), _optimizer_meta(engine), ckpt_dir)
    template = {"optimizer": _optimizer_sharded_state(engine, for_loading=True),
                "scheduler": engine.scheduler.state_dict()}
    state = load_resharded(template, os.path.join(ckpt_dir, OPTIM_DIR), model.ttrl_arch.vocab_size)
    for leaf, leaf_state in zip(_leaves(engine.optimizer), state["optimizer"], strict=True):
        _load_leaf(leaf, leaf_state)
    engine.scheduler.load_state_dict(state["scheduler"])
    return meta


# ------------------------------------------------------------------ the optimizer's sharded state
def _single_chunk(engine) -> torch.nn.Module:
    if len(engine.model) != 1:
        raise NotImplementedError("checkpoints of virtual-pipeline models (several chunks) are not supported")
    return unwrap(engine.model[0])


def _leaves(optimizer) -> list:
    """The per-buffer megatron optimizers inside a ChainedOptimizer (or the optimizer itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _is_distributed(leaf) -> bool:
    return hasattr(leaf, "gbuf_ranges")  # megatron's DistributedOptimizer


def _inner(leaf) -> torch.optim.Optimizer:
    """The torch-level optimizer (Adam, FusedAdam) inside a megatron optimizer wrapper."""
    return leaf.optimizer


def adam_implementation(inner: torch.optim.Optimizer) -> str:
    """``"torch"`` for torch's Adam/AdamW (per-parameter ``step``), ``"fused"`` for Transformer Engine's or apex's
    FusedAdam (step in the param groups, see module doc); anything else raises naming its class."""
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return "torch"
    if type(inner).__name__ == "FusedAdam" and hasattr(inner, "adam_w_mode"):  # TE and apex: same state layout
        return "fused"
    raise NotImplementedError(f"optimizer checkpoints of {type(inner).__module__}.{type(inner).__name__} are not "
                              "supported (torch Adam/AdamW, or Transformer Engine / apex FusedAdam)")


def _optimizer_sharded_state(engine, for_loading: bool) -> list:
    """One sharded state dict per leaf optimizer, built from the model's ShardedTensors (so each state tensor
    carries its parameter's global shape and offsets and reshards like it)."""
    model_sd = _single_chunk(engine).sharded_state_dict()
    out = []
    for leaf in _leaves(engine.optimizer):
        if _is_distributed(leaf):
            if adam_implementation(leaf.optimizer) == "torch":  # also on save: a never-stepped optimizer
                _init_adam_state(leaf.optimizer)
            out.append(leaf.sharded_state_dict(model_sd, is_loading=for_loading, metadata=DISTOPT_METADATA))
        else:
            out.append(leaf.sharded_state_dict(model_sd, is_loading=for_loading))
    return out


@torch.no_grad()
def _init_adam_state(inner: torch.optim.Optimizer) -> None:
    """torch Adam only: zero state with a per-parameter ``step`` for parameters that have none (a fresh optimizer),
    so that megatron's DistributedOptimizer.state_dict() can run (it asserts on the missing step). On load every value
    is then overwritten; on save it stores what a fresh Adam is (zero moments, step 0), so the resume is the same.
    (FusedAdam needs nothing: megatron allocates its state, and its step lives in the param groups.)"""
    for group in inner.param_groups:
        for p in group["params"]:
            if len(inner.state[p]) == 0:
                # host: torch's Adam keeps `step` on the host unless capturable/fused (neither is used here)
                inner.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                                      step=torch.zeros((), dtype=torch.float32))  # host: see above


def _load_leaf(leaf, state: dict) -> None:
    if not _is_distributed(leaf):
        leaf.load_state_dict(state)
        return
    param_state = state.pop("param_state")
    kind = state.pop("param_state_sharding_type")
    if kind != DISTOPT_METADATA["distrib_optim_sharding_type"]:
        raise CheckpointMismatchError(f"distributed-optimizer state of type {kind!r}; expected "
                                      f"{DISTOPT_METADATA['distrib_optim_sharding_type']!r}")
    leaf.load_state_dict(state)  # param groups: hyper-parameters and the shared step
    aside = _step_set_aside if adam_implementation(leaf.optimizer) == "torch" else _nothing_aside
    with torch.no_grad(), aside(leaf.optimizer):
        leaf.load_parameter_state_from_fully_reshardable(param_state)


@contextlib.contextmanager
def _nothing_aside(inner: torch.optim.Optimizer):
    """FusedAdam: its step lives in the param groups, which ``leaf.load_state_dict`` restored."""
    yield


@contextlib.contextmanager
def _step_set_aside(inner: torch.optim.Optimizer):
    """Remove torch Adam's per-parameter ``step`` for the duration (megatron copies every live state key from the
    checkpoint, which keeps ``step`` in the param groups instead), then put back one tensor PER PARAMETER: megatron's
    loader hands every parameter the same step tensor, and torch's Adam increments each parameter's step in place,
    so a shared tensor would advance once per parameter and skew Adam's bias correction."""
    steps = {p: s.pop("step") for p, s in inner.state.items() if "step" in s}
    try:
        yield
    finally:
        for p, step in steps.items():
            inner.state[p]["step"] = step.detach().clone()


# ------------------------------------------------------------------ metadata and compatibility
def _layout() -> dict:
    ps = parallel_state
    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size()}


def _optimizer_meta(engine) -> dict:
    leaves = _leaves(engine.optimizer)
    return {"format": OPTIM_FORMAT, "format_version": 1, "layout": _layout(),
            "distributed_optimizer": _is_distributed(leaves[0]), "leaves": len(leaves),
            "optimizer": engine.optim_config.optimizer,
            "adam_implementation": adam_implementation(_inner(leaves[0])),
            "params_dtype": str(_single_chunk(engine).config.params_dtype).removeprefix("torch.")}


def _read_optimizer_meta(ckpt_dir: str) -> dict:
    path = os.path.join(ckpt_dir, OPTIM_META)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {ckpt_dir} holds no optimizer state (a weights-only checkpoint, "
                                f"e.g. from converters/hf_to_megatron); load it as weights only")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != OPTIM_FORMAT:
        raise ValueError(f"{path}: format={meta.get('format')!r}, expected {OPTIM_FORMAT!r}")
    return meta


def _check_optimizer_meta(saved: dict, current: dict, ckpt_dir: str) -> None:
    """Same message on every rank (all ranks read the same file and share the settings compared)."""
    saved = {"adam_implementation": "torch", **saved}  # written before FusedAdam support: torch's Adam
    for name in ("distributed_optimizer", "optimizer", "adam_implementation", "params_dtype", "leaves"):
        if saved[name] != current[name]:
            raise CheckpointMismatchError(
                f"{ckpt_dir}: optimizer state saved with {name}={saved[name]!r} at layout {_fmt(saved['layout'])} "
                f"cannot be loaded with {name}={current[name]!r} at layout {_fmt(current['layout'])}; use the "
                f"saved {name} (TP/PP/DP may differ), or load the weights only")


def _fmt(layout: dict) -> str:
    return "tp={tp} pp={pp} dp={dp}".format(**layout)
