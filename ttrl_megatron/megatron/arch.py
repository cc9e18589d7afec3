"""ModelArchConfig: the decoder architecture read from a Hugging Face ``config.json`` (Qwen2/Qwen2.5, Llama/Llama-3,
SmolLM2), with every unsupported feature rejected by name.

Pure python (json + dataclasses): no torch, no megatron.core, so the mapping table (bridge/names.py) and config
validation can use it. The megatron-side meaning of each field is in ``ttrl_megatron.megatron.model``.
Supports both config layouts: transformers<5 (``rope_theta`` + ``rope_scaling``) and transformers 5
(``rope_parameters`` holding ``rope_theta`` and ``rope_type``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

SUPPORTED_MODEL_TYPES = {"qwen2": ("Qwen2ForCausalLM",), "llama": ("LlamaForCausalLM",)}

# megatron-core 0.16.1 RotaryEmbedding._apply_scaling implements HF's "llama3" rope with these three values
# hard-coded; only `factor` is a GPTModel argument. Other values cannot be represented -> rejected.
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class ArchConfigError(ValueError):
    """An HF config that this megatron backend cannot represent; the message names the key."""


@dataclass(frozen=True)
class ModelArchConfig:
    """Architecture of a dense decoder-only LM (RMSNorm, SwiGLU, RoPE, GQA).

    ``vocab_size`` is the HF (unpadded) vocabulary; Megatron's embedding/output rows are ``padded_vocab_size(tp)``.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    add_qkv_bias: bool
    rope_scaling_factor: Optional[float] = None  # set only for llama3-style rope scaling
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    make_vocab_size_divisible_by: int = 128
    architecture: str = ""
    source: str = field(default="<dict>", compare=False)

    def padded_vocab_size(self, tp: int = 1) -> int:
        """Vocab rounded up to a multiple of ``make_vocab_size_divisible_by * tp`` (Megatron's rule)."""
        multiple = self.make_vocab_size_divisible_by * tp
        return ((self.vocab_size + multiple - 1) // multiple) * multiple

    @classmethod
    def from_hf(cls, config: Union[Mapping[str, Any], str, os.PathLike], **overrides) -> "ModelArchConfig":
        """Parse an HF config dict, a ``config.json`` path, or a model directory holding one.

        ``overrides`` follow verl's ``model.override_config``: HF config keys (e.g. ``attention_dropout=0.0``,
        ``rope_theta``) replace the file's values before parsing. ``make_vocab_size_divisible_by`` (not an HF key)
        sets the Megatron vocab padding multiple.
        """
        source = "<dict>"
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise ArchConfigError(f"HF config file not found: {path}")
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            source = path
        overrides = dict(overrides)
        arch_only = {k: overrides.pop(k) for k in ("make_vocab_size_divisible_by",) if k in overrides}
        merged = {**config, **overrides}
        if "rope_theta" in overrides and isinstance(merged.get("rope_parameters"), Mapping):
            merged["rope_parameters"] = {**merged["rope_parameters"], "rope_theta": overrides["rope_theta"]}
        values = _parse(merged, source)
        values.update(arch_only)
        return cls(source=source, **values)


def _parse(cfg: dict, source: str) -> dict:
    where = f" in {source}"
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ArchConfigError(
            f"model_type={model_type!r}{where} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    architecture = _architecture(cfg, model_type, where)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ArchConfigError(f"{key}={cfg.get(key)!r}{where} must be a positive integer")
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise ArchConfigError(f"num_attention_heads={heads} not divisible by num_key_value_heads={kv_heads}{where}")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if cfg.get("head_dim") is None and cfg["hidden_size"] % heads:
        raise ArchConfigError(f"hidden_size={cfg['hidden_size']} not divisible by num_attention_heads={heads}{where}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ArchConfigError(f"hidden_act={cfg.get('hidden_act')!r}{where} is not supported; only 'silu' (SwiGLU)")
    _check_no_sliding_window(cfg, where)
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise ArchConfigError(
                    f"{key}=true{where} is not supported: megatron-core can add a bias to the fused QKV only, "
                    "while HF Llama then also biases o_proj (attention_bias) or the MLP (mlp_bias)"
                )
        qkv_bias = False
    else:  # qwen2 always has q/k/v biases and none elsewhere
        qkv_bias = True
    rope_theta, factor = _rope(cfg, where)
    return dict(
        model_type=model_type,
        architecture=architecture,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_query_groups=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling_factor=factor,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # Qwen2Config and LlamaConfig default
        add_qkv_bias=qkv_bias,
        initializer_range=float(cfg.get("initializer_range", 0.02)),
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
    )


def _architecture(cfg: dict, model_type: str, where: str) -> str:
    archs = cfg.get("architectures") or []
    allowed = SUPPORTED_MODEL_TYPES[model_type]
    unknown = [a for a in archs if a not in allowed]
    if unknown:
        raise ArchConfigError(
            f"architectures={archs}{where} is not supported for model_type={model_type!r}; supported: {list(allowed)}"
        )
    return archs[0] if archs else allowed[0]


def _check_no_sliding_window(cfg: dict, where: str) -> None:
    if cfg.get("use_sliding_window"):
        raise ArchConfigError(f"use_sliding_window=true{where} is not supported (full causal attention only)")
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise ArchConfigError(f"layer_types={layer_types}{where}: only 'full_attention' layers are supported")


def _rope(cfg: dict, where: str):
    """(rope_theta, llama3 factor or None) from either config layout; other rope types are rejected."""
    params = cfg.get("rope_parameters")
    key = "rope_parameters"
    if params is None:
        params, key = cfg.get("rope_scaling"), "rope_scaling"
    params = dict(params or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ArchConfigError(
            f"{key}.rope_type={rope_type!r}{where} is not supported; supported: 'default' and 'llama3'"
        )
    for name, expected in LLAMA3_FIXED.items():
        if float(params.get(name, float("nan"))) != expected:
            raise ArchConfigError(
                f"{key}.{name}={params.get(name)!r}{where} is not supported: megatron-core 0.16.1 implements "
                f"llama3 rope scaling with {name}={expected} only"
            )
    if not isinstance(params.get("factor"), (int, float)) or params["factor"] <= 0:
        raise ArchConfigError(f"{key}.factor={params.get('factor')!r}{where} must be a positive number")
    return float(theta), float(params["factor"])
