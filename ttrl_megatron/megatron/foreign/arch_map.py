"""megatron-core TransformerConfig fields (as read from a NeMo-2 / Megatron-Bridge / Megatron-LM config) ->
``ModelArchConfig`` (our model builder's input), with a report of what was used, dropped and not understood.

The input is a plain dict of TransformerConfig field names (plus the GPT-provider extras ``vocab_size``,
``seq_length``, ``share_embeddings_and_output_weights``, ...), already free of ``_target_`` objects
(yaml_config.resolve_targets). Fields that change the network away from what ``build_gpt_model`` builds (RMSNorm,
SwiGLU, RoPE, GQA, no linear biases) raise ``ArchConfigError`` naming the field and the file. Fields that do not
change the weights' meaning (fusions, parallel sizes, recompute, fp8 knobs, dropout...) are reported as dropped;
names that are not TransformerConfig fields at all are reported as unknown.

A field the file does not state takes megatron-core's TransformerConfig default (passed in by the caller as
``defaults``, so this module stays free of megatron imports and no default is restated here); the GPT-provider
extras that are not TransformerConfig fields fall back to the GPT provider defaults in ``PROVIDER_DEFAULTS``.
The ``REQUIRED`` fields are checked only when stated (a provider subclass, e.g. Qwen2's, sets them without us
knowing its defaults); NeMo-2 and Megatron-Bridge write every field, so in their files they are always stated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ttrl_megatron.megatron.arch import LLAMA3_FIXED, ArchConfigError, ModelArchConfig

# field -> the only value build_gpt_model can represent (checked only when the field is present)
REQUIRED = {
    "normalization": "RMSNorm", "gated_linear_unit": True, "activation_func": "silu", "add_bias_linear": False,
    "position_embedding_type": "rope", "num_moe_experts": None, "multi_latent_attention": False,
    "qk_layernorm": False, "rotary_interleaved": False, "rotary_percent": 1.0,
    "apply_residual_connection_post_layernorm": False, "layernorm_zero_centered_gamma": False,
    "window_size": None, "is_hybrid_model": False, "heterogeneous_block_specs": False, "mtp_num_layers": None,
    "softmax_type": "vanilla", "softmax_scale": None, "no_rope_freq": None, "mrope_section": None,
    "glu_linear_offset": 0.0, "activation_func_clamp_value": None, "seq_len_interpolation_factor": None,
    "apply_query_key_layer_scaling": False, "fp32_residual_connection": False,
}
MAPPED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
          "layernorm_epsilon", "add_qkv_bias", "attention_dropout", "init_method_std", "rotary_base", "vocab_size",
          "seq_length", "max_position_embeddings", "make_vocab_size_divisible_by",
          "share_embeddings_and_output_weights", "params_dtype", "rope_scaling", "rope_scaling_factor",
          "scale_factor", "low_freq_factor", "high_freq_factor", "old_context_len", "_target_")
# model-family class names (NeMo-2 *Config, Megatron-Bridge *ModelProvider) -> HF model_type
FAMILIES = (("Qwen2", "qwen2"), ("Qwen25", "qwen2"), ("Llama", "llama"))
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
# GPT-provider / GPTModel arguments that are not TransformerConfig fields (megatron-core GPTModel defaults)
PROVIDER_DEFAULTS = {"rotary_base": 10000, "share_embeddings_and_output_weights": True,
                     "make_vocab_size_divisible_by": 128, "max_position_embeddings": None, "seq_length": None}


@dataclass(frozen=True)
class ConfigReport:
    """What happened to each config field: used, dropped (a TransformerConfig field without effect on the weights'
    meaning), unknown (not a TransformerConfig field), plus notes (inferred values)."""

    source: str
    mapped: tuple[str, ...]
    dropped: tuple[str, ...]
    unknown: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.mapped)} fields mapped to ModelArchConfig"]
        if self.dropped:
            lines.append(f"  dropped (no effect on the weights): {', '.join(self.dropped)}")
        if self.unknown:
            lines.append(f"  unknown (not TransformerConfig fields, ignored): {', '.join(self.unknown)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def model_family(target: Optional[str], fields: Mapping[str, Any]) -> tuple[str, Optional[str]]:
    """(HF model_type, note or None) from the config class name; inferred from ``add_qkv_bias`` otherwise."""
    name = (target or "").rsplit(".", 1)[-1]
    for marker, family in FAMILIES:
        if name.startswith(marker):
            return family, None
    family = "qwen2" if fields.get("add_qkv_bias") else "llama"
    return family, (f"model family not named by the config (class {name or 'none'!r}); inferred {family!r} from "
                    f"add_qkv_bias={bool(fields.get('add_qkv_bias'))}")


def _require(fields: Mapping[str, Any], name: str, source: str) -> int:
    value = fields.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArchConfigError(f"{name}={value!r} in {source} must be a positive integer")
    return value


def _check_supported(fields: Mapping[str, Any], source: str) -> None:
    for name, want in REQUIRED.items():
        if name in fields and fields[name] != want:
            raise ArchConfigError(f"{name}={fields[name]!r} in {source} is not supported: this backend builds "
                                  f"dense RMSNorm/SwiGLU/RoPE decoders and needs {name}={want!r}")


def _rope_factor(fields: Mapping[str, Any], source: str) -> Optional[float]:
    """llama3 rope scaling: Megatron-Bridge/-LM ``rope_scaling`` + ``rope_scaling_factor``, NeMo-2 Llama 3.1
    ``scale_factor`` + ``low/high_freq_factor`` + ``old_context_len``."""
    if "scale_factor" in fields and "old_context_len" in fields:
        given = {"low_freq_factor": fields.get("low_freq_factor"), "high_freq_factor": fields.get("high_freq_factor"),
                 "original_max_position_embeddings": fields.get("old_context_len")}
        for name, want in LLAMA3_FIXED.items():
            if given[name] is not None and float(given[name]) != want:
                raise ArchConfigError(f"{name}={given[name]!r} in {source}: megatron-core 0.16.1 implements llama3 "
                                      f"rope scaling with {want} only")
        return float(fields["scale_factor"])
    if fields.get("rope_scaling"):
        return float(fields.get("rope_scaling_factor") or 8.0)
    return None


def arch_from_fields(fields: Mapping[str, Any], source: str, defaults: Mapping[str, Any],
                     target: Optional[str] = None, hf_vocab_size: Optional[int] = None) -> tuple[ModelArchConfig,
                                                                                                 ConfigReport]:
    """Build the ``ModelArchConfig`` and its ``ConfigReport`` (module doc). ``defaults``: TransformerConfig field ->
    default value (its keys are also the "known" field names). ``hf_vocab_size`` overrides the config's
    ``vocab_size`` (Megatron-LM stores only the padded size)."""
    _check_supported(fields, source)
    merged = {**PROVIDER_DEFAULTS, **defaults, **fields}
    model_type, note = model_family(target, fields)
    heads = _require(merged, "num_attention_heads", source)
    hidden = _require(merged, "hidden_size", source)
    vocab = hf_vocab_size or _require(merged, "vocab_size", source)
    groups = merged.get("num_query_groups") or heads
    head_dim = merged.get("kv_channels") or hidden // heads
    arch = ModelArchConfig(
        model_type=model_type, architecture=ARCHITECTURES[model_type], vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_require(merged, "ffn_hidden_size", source), num_layers=_require(merged, "num_layers", source),
        num_attention_heads=heads, num_query_groups=groups, head_dim=head_dim,
        max_position_embeddings=int(merged["max_position_embeddings"] or merged["seq_length"] or 4096),
        rms_norm_eps=float(merged["layernorm_epsilon"]), rope_theta=float(merged["rotary_base"]),
        tie_word_embeddings=bool(merged["share_embeddings_and_output_weights"]),
        add_qkv_bias=bool(merged["add_qkv_bias"]), rope_scaling_factor=_rope_factor(fields, source),
        initializer_range=float(merged["init_method_std"]), attention_dropout=float(merged["attention_dropout"]),
        make_vocab_size_divisible_by=int(merged["make_vocab_size_divisible_by"]), source=source)
    if heads % groups:
        raise ArchConfigError(f"num_attention_heads={heads} not divisible by num_query_groups={groups} in {source}")
    known = set(defaults)
    used = set(MAPPED) | set(REQUIRED)
    report = ConfigReport(
        source=source, mapped=tuple(sorted(k for k in fields if k in used)),
        dropped=tuple(sorted(k for k in fields if k not in used and k in known)),
        unknown=tuple(sorted(k for k in fields if k not in used and k not in known)),
        notes=(note,) if note else ())
    return arch, report
