"""ModelArchConfig parsing of HF configs: supported families, vocab padding, and errors that name the key."""
import json

import pytest

from ttrl_megatron.megatron.arch import ArchConfigError, ModelArchConfig

TINY = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def qwen2(**kw):
    from transformers import Qwen2Config

    return Qwen2Config(**{**TINY, "architectures": ["Qwen2ForCausalLM"], **kw}).to_dict()


def llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, "architectures": ["LlamaForCausalLM"], **kw}).to_dict()


# A Qwen2.5-Math-1.5B style config.json as written by transformers 4.x (rope_theta / rope_scaling / sliding_window).
QWEN25_MATH_15B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 1536,
    "intermediate_size": 8960, "max_position_embeddings": 4096, "max_window_layers": 21, "num_attention_heads": 12,
    "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "rope_scaling": None, "sliding_window": 4096, "tie_word_embeddings": True, "use_sliding_window": False,
    "vocab_size": 151936, "initializer_range": 0.02,
}


def test_qwen2_tiny():
    a = ModelArchConfig.from_hf(qwen2(tie_word_embeddings=True))
    assert (a.model_type, a.architecture) == ("qwen2", "Qwen2ForCausalLM")
    assert (a.num_layers, a.num_attention_heads, a.num_query_groups, a.head_dim) == (2, 4, 2, 32)
    assert a.add_qkv_bias and a.tie_word_embeddings and a.rope_scaling_factor is None
    assert a.rope_theta == 10000.0 and a.rms_norm_eps == 1e-6


def test_real_qwen25_math_config_from_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_MATH_15B))
    a = ModelArchConfig.from_hf(tmp_path)  # a model directory
    assert a.head_dim == 128 and a.num_query_groups == 2 and a.tie_word_embeddings
    assert a.source.endswith("config.json")
    # Megatron's padding rule: multiple of 128 * tp
    assert a.padded_vocab_size(1) == 151936 and a.padded_vocab_size(8) == 152576


def test_llama_and_llama3_rope():
    a = ModelArchConfig.from_hf(llama())
    assert not a.add_qkv_bias and not a.tie_word_embeddings and a.rope_scaling_factor is None
    b = ModelArchConfig.from_hf(llama(max_position_embeddings=16384, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192)))
    assert b.rope_scaling_factor == 32.0 and b.rope_theta == 500000.0
    old_style = {**llama(), "rope_parameters": None, "rope_theta": 500000.0,
                 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert ModelArchConfig.from_hf(old_style).rope_scaling_factor == 8.0


def test_padded_vocab():
    a = ModelArchConfig.from_hf(qwen2())
    assert [a.padded_vocab_size(tp) for tp in (1, 2, 4)] == [384, 512, 512]


@pytest.mark.parametrize("change, needle", [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"architectures": ["Qwen2ForSequenceClassification"]}, "architectures="),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_parameters.rope_type='yarn'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type='linear'"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
    ({"vocab_size": 0}, "vocab_size=0"),
])
def test_unsupported_qwen2_values_are_named(change, needle):
    with pytest.raises(ArchConfigError) as err:
        ModelArchConfig.from_hf({**qwen2(), **change})
    assert needle in str(err.value)


@pytest.mark.parametrize("change, needle", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_parameters": dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=2.0,
                              high_freq_factor=4.0, original_max_position_embeddings=8192)}, "low_freq_factor"),
    ({"rope_parameters": dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=4096)},
     "original_max_position_embeddings"),
])
def test_unsupported_llama_values_are_named(change, needle):
    with pytest.raises(ArchConfigError) as err:
        ModelArchConfig.from_hf({**llama(), **change})
    assert needle in str(err.value)


def test_missing_file_named(tmp_path):
    with pytest.raises(ArchConfigError, match="config.json"):
        ModelArchConfig.from_hf(tmp_path)


def test_overrides_are_hf_keys_like_verl_override_config():
    a = ModelArchConfig.from_hf(qwen2(), attention_dropout=0.1, rope_theta=1e6, make_vocab_size_divisible_by=64)
    assert a.attention_dropout == 0.1 and a.make_vocab_size_divisible_by == 64 and a.padded_vocab_size(1) == 320
    assert ModelArchConfig.from_hf(QWEN25_MATH_15B, rope_theta=1e6).rope_theta == 1e6
    assert a.rope_theta == 1e6  # also when the file nests it in rope_parameters (transformers 5)
    with pytest.raises(ArchConfigError, match="hidden_act='relu'"):
        ModelArchConfig.from_hf(qwen2(), hidden_act="relu")
