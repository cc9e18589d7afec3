"""Foreign checkpoints as models: read the architecture (``read_foreign``) and build a loaded GPTModel stage
(``build_foreign_model``), for NeMo-2, Megatron-Bridge / NeMo-RL and Megatron-LM checkpoints (and ours).

Tying: NeMo's HF importers untie every model and store a copy of the embedding as ``output_layer`` (reference/
nemo-formats.md §1). When a config says "untied" but the stored output layer is bit-identical to the embedding, the
model is read as tied (a note in the report says so): HF export then writes only ``embed_tokens`` and the parsed
config equals the original HF config. A model fine-tuned untied keeps its own output layer.

Imports megatron.core (through loader/model); no nemo, no megatron.bridge.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ttrl_megatron.megatron.arch import ModelArchConfig
from ttrl_megatron.megatron.foreign.arch_map import ConfigReport, arch_from_fields
from ttrl_megatron.megatron.foreign.detect import CheckpointFormat, ForeignCheckpointError, resolve_format
from ttrl_megatron.megatron.foreign.raw import RawConfig

log = logging.getLogger(__name__)
LOADABLE = ("nemo2", "mbridge", "megatron_lm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ForeignModel:
    """A detected foreign checkpoint: its format, our architecture for it, its params dtype, the config report."""

    fmt: CheckpointFormat
    arch: ModelArchConfig
    params_dtype: str
    report: ConfigReport


def _raw_config(fmt: CheckpointFormat) -> RawConfig:
    if fmt.kind == "nemo2":
        from ttrl_megatron.megatron.foreign.nemo2 import read_nemo2_config
        return read_nemo2_config(fmt)
    if fmt.kind == "mbridge":
        from ttrl_megatron.megatron.foreign.mbridge import read_mbridge_config
        return read_mbridge_config(fmt)
    if fmt.kind == "megatron_lm":
        from ttrl_megatron.megatron.foreign.megatron_lm import read_megatron_lm_config
        return read_megatron_lm_config(fmt)
    raise ForeignCheckpointError(f"{fmt.path}: {fmt.kind!r} checkpoints cannot be loaded by this reader "
                                 f"(loadable: {LOADABLE}; NeMo-1 .nemo: export to HF with NeMo first)")


def transformer_config_defaults() -> dict:
    """megatron-core TransformerConfig field -> default (None for required fields and factory defaults)."""
    from megatron.core.transformer import TransformerConfig

    return {f.name: (None if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(TransformerConfig)}


def read_foreign(path: str, load_format: str = "auto", hf_vocab_size: Optional[int] = None) -> ForeignModel:
    """Detect ``path`` (checked against ``load_format``), read its config from YAML / args only, map it to a
    ``ModelArchConfig`` and decide tying from the weights (module doc). Needs no process group."""
    fmt = resolve_format(path, load_format)
    raw = _raw_config(fmt)
    arch, report = arch_from_fields(raw.fields, raw.source, transformer_config_defaults(), raw.target,
                                    hf_vocab_size=hf_vocab_size or raw.hf_vocab_size)
    notes = list(report.notes) + list(raw.notes)
    if not arch.tie_word_embeddings and _output_layer_is_embedding_copy(fmt):
        arch = dataclasses.replace(arch, tie_word_embeddings=True)
        notes.append("share_embeddings_and_output_weights=false but output_layer.weight equals the embedding "
                     "bit for bit (NeMo's HF importer unties): read as a tied model")
    report = dataclasses.replace(report, notes=tuple(notes))
    return ForeignModel(fmt, arch, raw.params_dtype or "float32", report)


def _output_layer_is_embedding_copy(fmt: CheckpointFormat) -> bool:
    """Read both tensors with torch.distributed.checkpoint (no process group) and compare them exactly."""
    from torch.distributed import checkpoint as dcp

    from ttrl_megatron.megatron.foreign.loader import checkpoint_shapes

    emb, out = fmt.key_prefix + "embedding.word_embeddings.weight", fmt.key_prefix + "output_layer.weight"
    shapes = checkpoint_shapes(fmt.weights_dir)
    if emb not in shapes or out not in shapes or shapes[emb] != shapes[out]:
        return False
    meta = dcp.FileSystemReader(fmt.weights_dir).read_metadata().state_dict_metadata
    sd = {k: torch.empty(shapes[k], dtype=meta[k].properties.dtype) for k in (emb, out)}  # host: compared only
    dcp.load(sd, storage_reader=dcp.FileSystemReader(fmt.weights_dir), no_dist=True)
    return torch.equal(sd[emb], sd[out])


def build_foreign_model(info: ForeignModel, params_dtype: Optional[torch.dtype] = None, *,
                        value_head: bool = False) -> torch.nn.Module:
    """This rank's GPTModel stage for ``info.arch`` with the checkpoint's weights (collective over the model's
    ranks; needs megatron's parallel state). ``params_dtype`` defaults to the checkpoint's."""
    from ttrl_megatron.megatron.foreign.loader import load_foreign_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    log.info("%s", info.report.summary())
    dtype = params_dtype or DTYPES[info.params_dtype]
    model = build_gpt_model(info.arch, value_head=value_head, params_dtype=dtype)
    load_foreign_weights(model, info.fmt)
    return model


def load_initial_model(path: str, load_format: str, params_dtype: torch.dtype, *,
                       value_head: bool = False) -> torch.nn.Module:
    """The trainer's hook (megatron/engine.build_model_chunks): a loaded model stage from any non-HF checkpoint
    (NeMo-2, Megatron-Bridge / NeMo-RL, Megatron-LM, or ours)."""
    fmt = resolve_format(path, load_format)
    if fmt.kind == "ttrl":
        from ttrl_megatron.megatron.checkpoint import checkpoint_arch, load_model_checkpoint
        from ttrl_megatron.megatron.model import build_gpt_model

        model = build_gpt_model(checkpoint_arch(path), value_head=value_head, params_dtype=params_dtype)
        load_model_checkpoint(model, path)
        return model
    return build_foreign_model(read_foreign(path, load_format), params_dtype, value_head=value_head)
