"""Model config of foreign checkpoints from YAML / args only (yaml_config, arch_map, nemo2, mbridge, megatron_lm).

- ``_target_`` resolution: dtypes and activations through the allow-list, everything else kept by NAME and never
  imported (a target naming a module that would run code on import stays unimported).
- The real NeMo-2 fixture's model.yaml parses to exactly the ModelArchConfig of its HF source (tying decided from
  the stored weights); unknown and dropped fields are reported; unsupported architecture fields raise naming the
  field; Megatron-LM args map to the same fields; a pickle with a foreign class is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import fractions
import os
import shutil
import sys

import pytest
import torch
import yaml

from ttrl_megatron.megatron.arch import ArchConfigError, ModelArchConfig
from ttrl_megatron.megatron.foreign import ForeignCheckpointError
from ttrl_megatron.megatron.foreign.arch_map import arch_from_fields
from ttrl_megatron.megatron.foreign.yaml_config import UnresolvedTarget, resolve_targets

from tests.shared_paths import NEMO2_FIXTURE as FIXTURE  # ../shared beside the checkout
needs_fixture = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"NeMo-2 fixture {FIXTURE} is not present")
# the TransformerConfig defaults the mapping falls back to (api.transformer_config_defaults gives megatron's own)
KNOWN = {"num_layers": None, "hidden_size": None, "hidden_dropout": 0.1, "normalization": "LayerNorm",
         "num_moe_experts": None, "layernorm_epsilon": 1e-5, "add_qkv_bias": False, "init_method_std": 0.02,
         "attention_dropout": 0.1, "num_query_groups": None, "kv_channels": None, "ffn_hidden_size": None,
         "num_attention_heads": None}


def test_targets_resolve_through_the_allow_list_only():
    node = {"params_dtype": {"_target_": "torch.bfloat16", "_call_": False},
            "activation_func": {"_target_": "torch.nn.functional.silu"},
            "spec": {"_target_": "ttrl_test_never_imported_module.layer_spec", "_call_": False},
            "config": {"_target_": "nemo.collections.llm.gpt.model.qwen2.Qwen2Config", "hidden_size": 8,
                       "inner": [{"_target_": "torch.float16", "_call_": False}]}}
    out = resolve_targets(node)
    assert out["params_dtype"] == "bfloat16" and out["activation_func"] == "silu"
    assert out["spec"] == UnresolvedTarget("ttrl_test_never_imported_module.layer_spec")
    assert out["config"]["_target_"].class_name == "Qwen2Config" and out["config"]["inner"] == ["float16"]
    assert "ttrl_test_never_imported_module" not in sys.modules


@needs_fixture
def test_nemo2_fixture_config_equals_hf_config():
    from ttrl_megatron.megatron.foreign.api import read_foreign

    info = read_foreign(os.path.join(FIXTURE, "nemo2"))
    assert info.arch == ModelArchConfig.from_hf(os.path.join(FIXTURE, "hf"))
    assert info.params_dtype == "float32"
    assert any("read as a tied model" in n for n in info.report.notes)
    # NeMo-only entries (not TransformerConfig fields) are reported as unknown, runtime knobs as dropped
    assert {"data_step_fn", "forward_step_fn", "generation_config"} <= set(info.report.unknown)
    assert {"gradient_accumulation_fusion", "hidden_dropout", "tensor_model_parallel_size"} <= set(info.report.dropped)
    assert {"hidden_size", "ffn_hidden_size", "rotary_base", "layernorm_epsilon"} <= set(info.report.mapped)
    assert "unknown (not TransformerConfig fields, ignored)" in info.report.summary()


@needs_fixture
def test_untied_weights_stay_untied(tmp_path):
    """A NeMo-2 folder whose output layer differs from the embedding (fine-tuned untied) keeps lm_head."""
    from torch.distributed import checkpoint as dcp

    from ttrl_megatron.megatron.foreign.api import read_foreign

    weights = os.path.join(FIXTURE, "nemo2", "weights")
    sd = {"module.embedding.word_embeddings.weight": torch.empty(256, 128),
          "module.output_layer.weight": torch.empty(256, 128)}
    dcp.load(sd, storage_reader=dcp.FileSystemReader(weights), no_dist=True)
    sd["module.output_layer.weight"] += 1.0
    root = tmp_path / "untied"
    shutil.copytree(os.path.join(FIXTURE, "nemo2", "context"), root / "context")
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(root / "weights")), no_dist=True)
    shutil.copy(os.path.join(weights, "metadata.json"), root / "weights" / "metadata.json")
    assert read_foreign(str(root)).arch.tie_word_embeddings is False


@pytest.mark.parametrize("field, value", [("normalization", "LayerNorm"), ("num_moe_experts", 8),
                                          ("activation_func", UnresolvedTarget("my.custom_act")),
                                          ("qk_layernorm", True), ("add_bias_linear", True)])
def test_unsupported_architecture_fields_are_named(field, value):
    fields = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2, vocab_size=100)
    fields[field] = value
    with pytest.raises(ArchConfigError, match=rf"{field}=.* in cfg\.yaml is not supported"):
        arch_from_fields(fields, "cfg.yaml", KNOWN)


def test_missing_size_field_is_named():
    with pytest.raises(ArchConfigError, match=r"ffn_hidden_size=None in cfg\.yaml must be a positive integer"):
        arch_from_fields(dict(num_layers=2, hidden_size=64, num_attention_heads=2, vocab_size=100), "cfg.yaml", KNOWN)


def test_defaults_are_megatrons():
    from ttrl_megatron.megatron.foreign.api import transformer_config_defaults

    defaults = transformer_config_defaults()
    assert defaults["layernorm_epsilon"] == 1e-5 and defaults["attention_dropout"] == 0.1
    arch, _ = arch_from_fields(dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2,
                                    vocab_size=100), "m.yaml", defaults)
    assert (arch.rms_norm_eps, arch.attention_dropout, arch.rope_theta, arch.tie_word_embeddings) == (
        1e-5, 0.1, 10000.0, True)


def test_llama31_rope_and_family_inference():
    base = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=2, vocab_size=100)
    arch, report = arch_from_fields({**base, "scale_factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "old_context_len": 8192, "mystery": 1}, "m.yaml", KNOWN,
                                    target="nemo.collections.llm.gpt.model.llama.Llama31Config")
    assert (arch.model_type, arch.rope_scaling_factor, report.unknown) == ("llama", 8.0, ("mystery",))
    with pytest.raises(ArchConfigError, match=r"low_freq_factor=2\.0 in m\.yaml"):
        arch_from_fields({**base, "scale_factor": 8.0, "low_freq_factor": 2.0, "old_context_len": 8192}, "m.yaml",
                         KNOWN)
    arch, report = arch_from_fields({**base, "add_qkv_bias": True}, "m.yaml", KNOWN)
    assert arch.model_type == "qwen2" and "inferred 'qwen2' from add_qkv_bias=True" in report.notes[0]


def test_mbridge_model_section_round_trip():
    from ttrl_megatron.megatron.foreign.mbridge import provider_section

    hf = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=300, hidden_size=128,
              intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True)
    arch = ModelArchConfig.from_hf(hf)
    text = yaml.safe_dump({"model": provider_section(dataclasses.asdict(arch), "bfloat16")})
    section = resolve_targets(yaml.safe_load(text)["model"])
    target = section.pop("_target_")
    parsed, _ = arch_from_fields(section, "run_config.yaml", KNOWN, target=target.target)
    assert parsed == arch and section["params_dtype"] == "bfloat16"


def test_megatron_lm_args_and_restricted_unpickling(tmp_path):
    from ttrl_megatron.megatron.foreign.megatron_lm import fields_from_args, load_args

    args = argparse.Namespace(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                              group_query_attention=True, num_query_groups=2, norm_epsilon=1e-5,
                              normalization="RMSNorm", swiglu=True, untie_embeddings_and_output_weights=True,
                              padded_vocab_size=128, bf16=True, lr=1e-4)
    good = tmp_path / "common.pt"
    torch.save({"args": args, "iteration": 3}, good)
    fields = fields_from_args(load_args(str(good)))
    assert fields["layernorm_epsilon"] == 1e-5 and fields["gated_linear_unit"] and fields["activation_func"] == "silu"
    assert fields["share_embeddings_and_output_weights"] is False and fields["params_dtype"] == "bfloat16"
    assert "lr" not in fields
    from ttrl_megatron.megatron.foreign.detect import CheckpointFormat
    from ttrl_megatron.megatron.foreign.megatron_lm import read_megatron_lm_config

    raw = read_megatron_lm_config(CheckpointFormat("megatron_lm", str(tmp_path), str(tmp_path), str(good)))
    assert raw.fields["vocab_size"] == 128 and any("padded_vocab_size=128" in n for n in raw.notes)
    bad = tmp_path / "bad_common.pt"
    torch.save({"args": args, "extra": fractions.Fraction(1, 3)}, bad)  # a class outside the allow-list
    with pytest.raises(ForeignCheckpointError, match=r"refusing to unpickle it"):
        load_args(str(bad))
    torch.save({"iteration": 3}, good)
    with pytest.raises(ForeignCheckpointError, match=r"no 'args' namespace"):
        load_args(str(good))
