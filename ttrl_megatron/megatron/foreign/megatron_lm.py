"""Megatron-LM checkpoint config: the ``args`` namespace pickled in ``iter_N/common.pt`` -> TransformerConfig fields.

``common.pt`` is read with ``torch.load(weights_only=True)``, allowing only ``argparse.Namespace`` and
megatron-core's own enums as extra globals: anything else in the pickle is refused with the name of the class
(never imported from the checkpoint). Megatron-LM argument names differ from TransformerConfig's in a few places
(``norm_epsilon``, ``swiglu``, ``untie_embeddings_and_output_weights``, ``num_experts`` ...); ``ARG_MAP`` says how.

Imports torch (for the unpickler) and megatron.core enums; no megatron.training.
"""
from __future__ import annotations

import argparse
import enum
import pickle

import torch

from ttrl_megatron.megatron.foreign.detect import CheckpointFormat, ForeignCheckpointError
from ttrl_megatron.megatron.foreign.raw import RawConfig

# args name -> TransformerConfig / provider field name (identity when absent here)
ARG_MAP = {"norm_epsilon": "layernorm_epsilon", "num_experts": "num_moe_experts", "use_rope_scaling": "rope_scaling",
           "apply_layernorm_1p": "layernorm_zero_centered_gamma"}
ARGS_USED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "group_query_attention", "kv_channels", "norm_epsilon", "normalization", "swiglu", "add_bias_linear",
             "add_qkv_bias", "attention_dropout", "init_method_std", "rotary_base", "position_embedding_type",
             "max_position_embeddings", "seq_length", "make_vocab_size_divisible_by",
             "untie_embeddings_and_output_weights", "padded_vocab_size", "vocab_size", "use_rope_scaling",
             "rope_scaling_factor", "qk_layernorm", "num_experts", "rotary_percent", "apply_layernorm_1p",
             "multi_latent_attention", "apply_residual_connection_post_layernorm", "bf16", "fp16")


def _safe_globals() -> list:
    from megatron.core.transformer import enums

    return [argparse.Namespace] + [v for v in vars(enums).values() if isinstance(v, type) and issubclass(v, enum.Enum)]


def load_args(common_pt: str) -> dict:
    """``vars(args)`` from a Megatron-LM ``common.pt`` (restricted unpickling, see module doc)."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            common = torch.load(common_pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ForeignCheckpointError(f"{common_pt}: refusing to unpickle it ({str(exc).splitlines()[0]}); only "
                                     "argparse.Namespace and megatron-core enums are allowed in Megatron-LM args")
    args = common.get("args") if isinstance(common, dict) else None
    if not isinstance(args, argparse.Namespace):
        raise ForeignCheckpointError(f"{common_pt}: no 'args' namespace, so this is not a Megatron-LM checkpoint "
                                     f"(keys: {sorted(common) if isinstance(common, dict) else type(common).__name__})")
    return vars(args)


def fields_from_args(args: dict) -> dict:
    """Megatron-LM args -> TransformerConfig-named fields (only the ones that define the architecture)."""
    fields = {ARG_MAP.get(k, k): args[k] for k in ARGS_USED if k in args and args[k] is not None}
    swiglu = fields.pop("swiglu", False)
    fields["gated_linear_unit"] = bool(swiglu)
    fields["activation_func"] = "silu" if swiglu else "gelu"
    if not fields.pop("group_query_attention", False):
        fields["num_query_groups"] = fields.get("num_attention_heads")
    fields["share_embeddings_and_output_weights"] = not fields.pop("untie_embeddings_and_output_weights", False)
    bf16, fp16 = fields.pop("bf16", False), fields.pop("fp16", False)
    fields["params_dtype"] = "bfloat16" if bf16 else "float16" if fp16 else "float32"
    if "normalization" in fields:  # Megatron-LM spells it as the TransformerConfig does ("RMSNorm", "LayerNorm")
        fields["normalization"] = str(fields["normalization"])
    return fields


def read_megatron_lm_config(fmt: CheckpointFormat) -> RawConfig:
    args = load_args(fmt.config_file)
    fields = fields_from_args(args)
    padded = fields.pop("padded_vocab_size", None)
    notes = [f"{len(args) - len([k for k in ARGS_USED if k in args])} training args ignored (not architecture)"]
    if "vocab_size" not in fields:
        if padded is None:
            raise ForeignCheckpointError(f"{fmt.config_file}: args hold neither vocab_size nor padded_vocab_size")
        fields["vocab_size"] = padded
        notes.append(f"args hold no unpadded vocab_size: using padded_vocab_size={padded} (pass hf_vocab_size= to "
                     "strip the padding rows on export)")
    return RawConfig(fields=fields, source=fmt.config_file, target=None, params_dtype=fields["params_dtype"],
                     notes=tuple(notes))
