"""Which checkpoint format a path holds, where its weights and config are, and the weight-key prefix to use.

Formats (reference/nemo-formats.md §1, §3):
- ``nemo2``: NeMo-2 (nemo.lightning): ``context/model.yaml`` + ``weights/`` torch_dist; keys ``module.*``.
- ``mbridge``: Megatron-Bridge / NeMo-RL: ``iter_N/`` holding ``run_config.yaml`` + torch_dist files, or a root
  with ``latest_checkpointed_iteration.txt`` pointing at it; keys without prefix.
- ``megatron_lm``: Megatron-LM ``iter_N/`` (``common.pt`` holding ``args``, no ``run_config.yaml``); no prefix.
- ``nemo1``: NeMo-1 ``.nemo`` tar or unpacked folder with ``model_config.yaml`` (detected; not loadable here).
- ``hf``: ``config.json`` (+ safetensors); ``ttrl``: our own checkpoint (``ttrl_checkpoint.json``).
Every refusal is one ``ForeignCheckpointError`` naming the file and what to do: unknown layout (listing the
markers looked for), missing ``weights/``, zarr dist-checkpoints, PEFT adapter-only folders, legacy pickles.

Pure python (os/json/tarfile): no torch, no megatron.core. ``common.pt`` is only looked at by name here.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Optional

FORMATS = ("nemo2", "mbridge", "megatron_lm", "nemo1", "hf", "ttrl")
LOAD_FORMATS = ("auto", "hf", "nemo2", "mbridge", "megatron_lm")  # config.ModelConfig.load_format values
TRACKER = "latest_checkpointed_iteration.txt"
RUN_CONFIG = "run_config.yaml"
ADAPTER_META = "adapter_metadata.json"
_ITER_DIR = re.compile(r"^iter_\d+$")
# megatron-core 0.15.x is the last line that still ships the zarr strategy (strategies/zarr.py)
ZARR_READABLE_WITH = "megatron-core<=0.15.3"


class ForeignCheckpointError(ValueError):
    """A checkpoint path this loader cannot use; the message names the file and what to change."""


@dataclass(frozen=True)
class CheckpointFormat:
    """Where things are in a detected checkpoint.

    weights_dir: the torch_dist dist-checkpoint folder (None for hf/nemo1 tar); config_file: the file the model
    config is read from; key_prefix: prefix of every model ShardedTensor key; tokenizer_dir: tokenizer files shipped
    with the checkpoint, when any.
    """

    kind: str
    path: str
    weights_dir: Optional[str]
    config_file: str
    key_prefix: str = ""
    tokenizer_dir: Optional[str] = None


_LOOKED_FOR = (
    "nemo2: context/model.yaml + weights/; mbridge: iter_N/run_config.yaml or latest_checkpointed_iteration.txt; "
    "megatron_lm: iter_N/ with common.pt + metadata.json; nemo1: model_config.yaml (folder or .nemo tar); "
    "hf: config.json; ttrl: ttrl_checkpoint.json"
)


def detect_format(path: str) -> CheckpointFormat:
    """Classify ``path`` and check that its weights are readable by megatron-core 0.16 (see module doc)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ForeignCheckpointError(f"checkpoint path {path} does not exist")
    if os.path.isfile(path):
        return _detect_file(path)
    _refuse_adapter_only(path)
    j = lambda *p: os.path.join(path, *p)  # noqa: E731
    if os.path.isfile(j("context", "model.yaml")):
        return _checked(CheckpointFormat("nemo2", path, j("weights"), j("context", "model.yaml"), "module.",
                                         _dir_or_none(j("context", "nemo_tokenizer"))))
    if os.path.isfile(j(TRACKER)):
        return detect_format(iteration_dir(path))
    if os.path.isfile(j(RUN_CONFIG)):
        return _checked(CheckpointFormat("mbridge", path, path, j(RUN_CONFIG), "", _dir_or_none(j("tokenizer"))))
    if os.path.isfile(j("common.pt")) and os.path.isfile(j("metadata.json")):
        return _checked(CheckpointFormat("megatron_lm", path, path, j("common.pt"), ""))
    if os.path.isfile(j("model_config.yaml")):
        return _nemo1(path)
    if os.path.isfile(j("ttrl_checkpoint.json")):
        return CheckpointFormat("ttrl", path, j("weights"), j("ttrl_checkpoint.json"), "", _dir_or_none(j("hf")))
    if os.path.isfile(j("config.json")):
        return CheckpointFormat("hf", path, None, j("config.json"), "", path)
    if os.path.isdir(j("context")) or os.path.isdir(j("weights")):
        raise ForeignCheckpointError(f"{path} looks like a NeMo-2 checkpoint but context/model.yaml is missing "
                                     "(only context/io.json? it needs NeMo to read; re-save with NeMo >= 2.0 which "
                                     "writes model.yaml)")
    iters = sorted(d for d in os.listdir(path) if _ITER_DIR.match(d))
    hint = f" It holds {iters[-1]}/ but no {TRACKER}: point at {os.path.join(path, iters[-1])}." if iters else ""
    raise ForeignCheckpointError(f"{path}: unknown checkpoint format. Looked for {_LOOKED_FOR}.{hint}")


def resolve_format(path: str, load_format: str) -> CheckpointFormat:
    """``detect_format`` checked against an explicit ``load_format`` (``auto`` accepts whatever is found)."""
    if load_format not in LOAD_FORMATS:
        raise ForeignCheckpointError(f"load_format={load_format!r} is not one of {LOAD_FORMATS}")
    fmt = detect_format(path)
    if load_format != "auto" and fmt.kind != load_format:
        raise ForeignCheckpointError(f"load_format={load_format!r} but {path} holds a {fmt.kind!r} checkpoint "
                                     f"(found {os.path.relpath(fmt.config_file, fmt.path)}); set load_format=auto "
                                     f"or load_format={fmt.kind}")
    return fmt


def iteration_dir(root: str) -> str:
    """``root/iter_{N:07d}`` (or ``root/release``) named by the Megatron-LM tracker file in ``root``."""
    tracker = os.path.join(root, TRACKER)
    with open(tracker, encoding="utf-8") as f:
        text = f.read().strip()
    sub = "release" if text == "release" else (f"iter_{int(text):07d}" if text.isdigit() else None)
    if sub is None:
        raise ForeignCheckpointError(f"{tracker} holds {text!r}; expected an iteration number or 'release'")
    target = os.path.join(root, sub)
    if not os.path.isdir(target):
        raise ForeignCheckpointError(f"{tracker} points at {sub}/, which does not exist in {root}")
    return target


def _dir_or_none(path: str) -> Optional[str]:
    return path if os.path.isdir(path) else None


def _refuse_adapter_only(path: str) -> None:
    for where in (path, os.path.join(path, "weights")):
        meta = os.path.join(where, ADAPTER_META)
        if os.path.isfile(meta):
            raise ForeignCheckpointError(
                f"{meta}: this is a PEFT adapter-only checkpoint (LoRA weights without the base model). Merge the "
                "adapter into its base model first (NeMo-2: `llm.peft.merge_lora`; Megatron-Bridge: its LoRA merge "
                "script) and point at the merged checkpoint, or load the base checkpoint")


def _checked(fmt: CheckpointFormat) -> CheckpointFormat:
    """The dist-checkpoint folder exists and is torch_dist (not zarr, not a legacy pickle)."""
    wd = fmt.weights_dir
    if not os.path.isdir(wd):
        raise ForeignCheckpointError(f"{fmt.kind} checkpoint {fmt.path}: weights folder {wd} is missing (a NeMo-2 "
                                     "checkpoint keeps its tensors in weights/; was only context/ copied?)")
    meta_path = os.path.join(wd, "metadata.json")
    if not os.path.isfile(meta_path):
        raise ForeignCheckpointError(f"{wd}: no metadata.json, so this is not a megatron dist-checkpoint "
                                     f"({fmt.kind} weights must be saved with dist_checkpointing, torch_dist)")
    with open(meta_path, encoding="utf-8") as f:
        backend = json.load(f).get("sharded_backend")
    if backend == "zarr":
        raise ForeignCheckpointError(
            f"{meta_path}: sharded_backend='zarr'. megatron-core 0.16 has no zarr strategy and cannot read it; "
            f"{ZARR_READABLE_WITH} can. Convert it to torch_dist with that version (load with "
            "dist_checkpointing.load, save with sharded_strategy=('torch_dist', 1)), then load the result")
    if backend != "torch_dist":
        raise ForeignCheckpointError(f"{meta_path}: sharded_backend={backend!r}; only 'torch_dist' is supported")
    return fmt


def _nemo1(path: str) -> CheckpointFormat:
    config = os.path.join(path, "model_config.yaml")
    weights = os.path.join(path, "model_weights")
    if os.path.isdir(weights):
        return _checked(CheckpointFormat("nemo1", path, weights, config, "model."))
    legacy = [n for n in os.listdir(path) if n == "model_weights.ckpt" or n.startswith("mp_rank_")]
    if legacy:
        raise ForeignCheckpointError(f"{path}: NeMo-1 checkpoint with pickled weights ({legacy[0]}); only "
                                     "dist-checkpoint NeMo-1 folders (model_weights/) can be detected, and none can "
                                     "be loaded here: convert it to HF with NeMo's own export first")
    raise ForeignCheckpointError(f"{path}: NeMo-1 model_config.yaml without model_weights/ or model_weights.ckpt")


def _detect_file(path: str) -> CheckpointFormat:
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            names = {os.path.normpath(m.name) for m in tar.getmembers()}
        if "model_config.yaml" in names:
            weights = "model_weights" if any(n.startswith("model_weights") for n in names) else None
            return CheckpointFormat("nemo1", path, weights, "model_config.yaml", "model.")
    raise ForeignCheckpointError(f"{path} is a file; expected a checkpoint folder or a NeMo-1 .nemo tar holding "
                                 f"model_config.yaml. Looked for {_LOOKED_FOR}")
