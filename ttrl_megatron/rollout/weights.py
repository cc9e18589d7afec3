"""Expected HF weights of a checkpoint, per-tensor validation, and grouping of a tensor stream into whole modules.

Why grouping: vLLM fuses q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj`, and its in-place reload
finalizes a module once per load call. A call that carries only part of a fused module (q without k/v, a weight
without its bias) silently corrupts that module (PLATFORM.md, "vLLM on CPU"). So the stream is buffered until
every source tensor of a module has arrived, and only whole modules are released.

Why validation up front: a failed in-place reload is not rolled back (the engine is left with meta tensors), so a
bad name or shape must be refused before it reaches vLLM.

Pure torch + json + safetensors headers; must not import vllm.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

_FUSED_SOURCES = re.compile(r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)$")
_FUSED_TARGET = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                 "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
TIED_OUTPUT_NAME = "lm_head.weight"


class WeightUpdateError(ValueError):
    """A tensor (or the stream) was refused; the message names the tensor, both shapes and what was applied."""


def module_key(name: str) -> str:
    """The vLLM module a tensor loads into: its HF module path with q/k/v -> qkv_proj and gate/up -> gate_up_proj."""
    module = name.rpartition(".")[0]
    match = _FUSED_SOURCES.search(module)
    if match:
        module = module[: match.start()] + "." + _FUSED_TARGET[match.group(1)]
    return module


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def _checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{model_dir}: no *.safetensors files (the rollout engine needs an HF safetensors checkpoint)"
        )
    return files


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """HF tensor names -> shapes the engine accepts, and which names form one vLLM module.

    tied: the checkpoint ties lm_head to embed_tokens; `lm_head.weight` is then accepted (shape-checked) and
    skipped, because vLLM reads the output projection from the embedding (a tied exporter sends only embed_tokens).
    """

    shapes: Mapping[str, tuple[int, ...]]
    tied: bool
    source: str

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path) -> "WeightSpec":
        """Read names and shapes from the safetensors headers (no tensor data) and tying from config.json."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        tied = bool(config.get("tie_word_embeddings", False))
        shapes: dict[str, tuple[int, ...]] = {}
        for file in _checkpoint_files(model_dir):
            for name, info in _safetensors_header(file).items():
                shapes[name] = tuple(info["shape"])
        if tied and TIED_OUTPUT_NAME not in shapes and "model.embed_tokens.weight" in shapes:
            shapes[TIED_OUTPUT_NAME] = shapes["model.embed_tokens.weight"]
        return cls(shapes=shapes, tied=tied, source=str(model_dir))

    def module_members(self) -> dict[str, frozenset[str]]:
        """module key -> every checkpoint tensor that must arrive together (e.g. q/k/v weights and biases)."""
        members: dict[str, set[str]] = {}
        for name in self.shapes:
            if not (self.tied and name == TIED_OUTPUT_NAME):
                members.setdefault(module_key(name), set()).add(name)
        return {k: frozenset(v) for k, v in members.items()}

    def check(self, name: object, tensor: object) -> None:
        """Raise WeightUpdateError unless `tensor` is a floating tensor with the checkpoint's shape for `name`."""
        if not isinstance(name, str):
            raise WeightUpdateError(f"update_weights: tensor names must be str, got {type(name).__name__} ({name!r})")
        if name not in self.shapes:
            close = difflib.get_close_matches(name, list(self.shapes), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise WeightUpdateError(
                f"update_weights: unknown tensor {name!r}: not in the HF checkpoint {self.source}{hint} "
                f"(send HF names, e.g. 'model.layers.0.self_attn.q_proj.weight', with the vocab padding removed)"
            )
        if not isinstance(tensor, torch.Tensor):
            raise WeightUpdateError(
                f"update_weights: {name!r} is a {type(tensor).__name__}, expected a torch.Tensor"
            )
        expected = self.shapes[name]
        if tuple(tensor.shape) != expected:
            raise WeightUpdateError(
                f"update_weights: tensor {name!r} has shape {tuple(tensor.shape)} but the engine expects {expected} "
                f"(HF layout, unpadded vocab, full unsharded tensor)"
            )
        if not tensor.is_floating_point():
            raise WeightUpdateError(
                f"update_weights: tensor {name!r} has dtype {tensor.dtype}, expected floating point"
            )


def iter_named_tensors(items: Iterable) -> Iterator[tuple[str, torch.Tensor]]:
    """Flatten an update source: (name, tensor) pairs, buckets (lists/dicts of pairs), or one mapping."""
    if isinstance(items, Mapping):
        yield from items.items()
        return
    for item in items:
        if isinstance(item, Mapping):
            yield from item.items()
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            yield item[0], item[1]
        elif isinstance(item, (list, tuple)):
            for pair in item:
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                    raise WeightUpdateError(
                        f"update_weights: a bucket holds {type(pair).__name__}, expected (name, tensor) pairs"
                    )
                yield pair[0], pair[1]
        else:
            raise WeightUpdateError(
                f"update_weights: got {type(item).__name__}; expected (name, tensor) pairs or buckets of them"
            )


class ModuleGrouper:
    """Validates tensors one by one and releases them in whole-module groups.

    `push(name, tensor)` returns the list of (name, tensor) pairs of a module once all its members have arrived
    (else []); `pending()` lists modules still incomplete. Duplicates within one update are refused.
    """

    def __init__(self, spec: WeightSpec):
        self.spec = spec
        self._members = spec.module_members()
        self._buffer: dict[str, dict[str, torch.Tensor]] = {}
        self._seen: set[str] = set()
        self.skipped: list[str] = []

    def push(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        self.spec.check(name, tensor)
        if name in self._seen:
            raise WeightUpdateError(f"update_weights: tensor {name!r} was sent twice in one update")
        self._seen.add(name)
        if self.spec.tied and name == TIED_OUTPUT_NAME:
            self.skipped.append(name)  # vLLM takes the output layer from the tied embedding
            return []
        key = module_key(name)
        group = self._buffer.setdefault(key, {})
        group[name] = tensor
        if len(group) < len(self._members[key]):
            return []
        del self._buffer[key]
        return sorted(group.items())

    def pending(self) -> dict[str, list[str]]:
        """module key -> missing member names, for modules that received some but not all of their tensors."""
        return {k: sorted(self._members[k] - set(g)) for k, g in self._buffer.items()}

    def incomplete_error(self) -> WeightUpdateError | None:
        pending = self.pending()
        if not pending:
            return None
        desc = "; ".join(f"{k} is missing {v}" for k, v in sorted(pending.items()))
        return WeightUpdateError(
            f"update_weights: incomplete fused modules were NOT loaded (vLLM needs every tensor of a module in one "
            f"update): {desc}"
        )


def prevalidate(spec: WeightSpec, pairs: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Check a fully materialized update (names, shapes, duplicates, whole modules) before anything is sent."""
    grouper = ModuleGrouper(spec)
    for name, tensor in pairs:
        grouper.push(name, tensor)
    error = grouper.incomplete_error()
    if error is not None:
        raise error


def serialized_buckets(groups: Iterable[list[tuple[str, torch.Tensor]]], limit: int) -> Iterator[bytes]:
    """safetensors blobs of whole modules, each about `limit` bytes (one module may exceed it on its own)."""
    from safetensors.torch import save as save_safetensors

    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for group in groups:
        for name, tensor in group:
            bucket[name] = tensor.detach().to("cpu").contiguous()  # host: safetensors serializes host tensors
            size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield save_safetensors(bucket)
            bucket, size = {}, 0
    if bucket:
        yield save_safetensors(bucket)
