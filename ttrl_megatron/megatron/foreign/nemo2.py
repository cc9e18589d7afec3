"""NeMo-2 (nemo.lightning) checkpoint config: ``context/model.yaml`` -> plain TransformerConfig fields.

``model.yaml`` holds ``config:`` = the model's config dataclass (mcore TransformerConfig fields + GPTConfig extras,
``_target_`` = e.g. ``nemo.collections.llm.gpt.model.qwen2.Qwen2Config``). ``context/io.json`` (Fiddle) is ignored:
it needs NeMo's classes. NeMo's HF importers always write ``share_embeddings_and_output_weights: false`` and copy
the embedding into ``output_layer`` (reference/nemo-formats.md §1); the package API decides tying from the weights.

Pure python + PyYAML (yaml_config); never imports nemo or the classes the file names.
"""
from __future__ import annotations

from ttrl_megatron.megatron.foreign.detect import CheckpointFormat
from ttrl_megatron.megatron.foreign.raw import RawConfig
from ttrl_megatron.megatron.foreign.yaml_config import UnresolvedTarget, load_yaml, section


def read_nemo2_config(fmt: CheckpointFormat) -> RawConfig:
    """The ``config:`` section of ``context/model.yaml`` (targets resolved through the allow-list)."""
    data = load_yaml(fmt.config_file)
    fields = section(data, "config", fmt.config_file)
    target = fields.pop("_target_", None)
    return RawConfig(fields=fields, source=fmt.config_file,
                     target=target.target if isinstance(target, UnresolvedTarget) else None,
                     params_dtype=fields.get("params_dtype") if isinstance(fields.get("params_dtype"), str) else None)
