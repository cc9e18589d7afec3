"""What the plan needs besides the config: the model architecture, the GPU's size, whether Transformer Engine runs.

``read_arch`` reads ``config.json`` of an HF folder (pure python: ``validate()`` uses it); ``read_arch(...,
foreign=True)`` also reads NeMo-2 / Megatron-Bridge / Megatron-LM / ttrl checkpoints (imports megatron; the CLI).
``device_memory`` and ``te_available`` look at this machine only when it has CUDA (torch imported lazily).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional, Tuple

from ttrl_megatron.memory.plan import DEFAULT_GPU_GIB, GIB


def read_arch(model, foreign: bool = False):
    """``ModelArchConfig`` of ``model`` (``actor_rollout_ref.model`` or ``critic.model``) with its
    ``override_config``; None when ``model.path`` has no ``config.json`` and ``foreign`` is False."""
    from ttrl_megatron.megatron.arch import ModelArchConfig

    path = model.path
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return ModelArchConfig.from_hf(path, **dict(model.override_config))
    if not foreign or not path:
        return None
    from ttrl_megatron.megatron.foreign.detect import resolve_format

    load_format = getattr(model, "load_format", "auto")
    if resolve_format(path, load_format).kind == "ttrl":
        from ttrl_megatron.megatron.checkpoint import checkpoint_arch

        return checkpoint_arch(path)
    from ttrl_megatron.megatron.foreign.api import read_foreign

    return read_foreign(path, load_format).arch


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch if torch.cuda.is_available() else None


def device_memory(configured_gib: Optional[float]) -> Tuple[int, str]:
    """(bytes, where the figure came from): ``trainer.gpu_memory_gib`` when set, else this rank's CUDA device
    (``LOCAL_RANK``) when present, else ``DEFAULT_GPU_GIB`` (an H100 80GB)."""
    if configured_gib:
        return int(configured_gib * GIB), "trainer.gpu_memory_gib"
    torch = _cuda()
    if torch is not None:
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"cuda:{index} ({props.name})"
    return int(DEFAULT_GPU_GIB * GIB), "the default for an H100 80GB: no CUDA device here"


def te_available() -> bool:
    """Whether the GPU run uses Transformer Engine (flash attention, fused Adam): on a CUDA machine, whether it
    imports; on a machine without CUDA (planning ahead) the GPU image is assumed, which ships it (Dockerfile)."""
    if _cuda() is None:
        return True
    return importlib.util.find_spec("transformer_engine") is not None
