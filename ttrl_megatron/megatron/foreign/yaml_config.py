"""Read NeMo-2 ``context/model.yaml`` / Megatron-Bridge ``run_config.yaml`` as plain data, never importing the
classes they name.

Both files are ``yaml.safe_dump`` output that spells Python objects as ``{_target_: dotted.name, _call_: bool, ...}``
(reference/nemo-formats.md §1, §3). We resolve only an allow-list of such targets to plain values (dtype names and
activation names, as strings); every other ``_target_`` node becomes an ``UnresolvedTarget`` that records the dotted
name (a class name is still useful, e.g. ``...qwen2.Qwen2Config`` tells the model family). Nothing here imports the
named module: a checkpoint config can not execute code by being read.

Pure python + PyYAML: no torch, no megatron.core, no nemo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

# _target_ -> plain value. Dtypes become their torch attribute name, activations their function name.
DTYPE_TARGETS = {f"torch.{n}": n for n in ("float32", "float16", "bfloat16", "float", "half")}
ACTIVATION_TARGETS = {
    "torch.nn.functional.silu": "silu",
    "torch.nn.functional.gelu": "gelu",
    "torch.nn.functional.relu": "relu",
    "megatron.core.fusions.fused_bias_geglu.quick_gelu": "quick_gelu",
    "megatron.core.activations.squared_relu": "squared_relu",
}
_CANONICAL_DTYPE = {"float": "float32", "half": "float16"}


class ForeignConfigError(ValueError):
    """A checkpoint config file that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class UnresolvedTarget:
    """A ``_target_`` node outside the allow-list: kept by name only (never imported)."""

    target: str

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


def load_yaml(path: str) -> dict:
    """``yaml.safe_load`` of a mapping file, with one clear error for a missing file or bad YAML."""
    if not os.path.isfile(path):
        raise ForeignConfigError(f"{path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ForeignConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ForeignConfigError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return dict(data)


def resolve_targets(node: Any) -> Any:
    """Replace allow-listed ``_target_`` nodes by plain values and every other ``_target_`` node by
    ``UnresolvedTarget``; recurse through lists and mappings. The mapping that *holds* a ``_target_`` key next to
    ordinary fields (e.g. ``config: {_target_: ...Qwen2Config, hidden_size: 128}``) keeps its fields and gets
    ``_target_`` replaced by an ``UnresolvedTarget`` entry."""
    if isinstance(node, list):
        return [resolve_targets(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    target = node.get("_target_")
    if isinstance(target, str):
        if target in DTYPE_TARGETS:
            name = DTYPE_TARGETS[target]
            return _CANONICAL_DTYPE.get(name, name)
        if target in ACTIVATION_TARGETS:
            return ACTIVATION_TARGETS[target]
        fields = {k: v for k, v in node.items() if k not in ("_target_", "_call_", "_partial_")}
        if not fields or node.get("_call_") is False:
            return UnresolvedTarget(target)
        return {"_target_": UnresolvedTarget(target), **{k: resolve_targets(v) for k, v in fields.items()}}
    return {k: resolve_targets(v) for k, v in node.items()}


def section(data: Mapping, key: str, path: str) -> dict:
    """``data[key]`` as a resolved mapping, or one error naming the file and the missing section."""
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ForeignConfigError(f"{path}: no '{key}:' mapping (found top-level keys {sorted(data)})")
    return resolve_targets(value)
