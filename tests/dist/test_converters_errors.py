"""Mismatched checkpoints are refused with one error naming the offending tensor (and its shapes) or config field.

HF side: checked from the safetensors headers before any process group starts. Megatron side: checked against the
dist-checkpoint metadata before loading (one in-process gloo rank; the multi-rank path is in test_converters.py).
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.dist.mcore_fixtures import hf_model, llama_config, qwen2_config

TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, head_dim=32,
            vocab_size=256)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """HF folders and Megatron conversions of a tiny untied Qwen2 and a tiny Llama of the same shape."""
    from converters import convert_hf_to_megatron

    root = tmp_path_factory.mktemp("mismatch")
    out = {}
    for name, cfg in {"qwen2": qwen2_config(tied=False, **TINY), "llama": llama_config(tied=False, **TINY)}.items():
        hf_model(cfg).save_pretrained(root / f"{name}_hf")
        convert_hf_to_megatron(str(root / f"{name}_hf"), str(root / f"{name}_mg"), progress=False)
        out[name] = (str(root / f"{name}_hf"), str(root / f"{name}_mg"))
    return out


def _edited_hf(src, dst, edit=None, config_edit=None):
    """Copy an HF folder, editing its state dict and/or config.json."""
    shutil.copytree(src, dst)
    if edit:
        sd = load_file(os.path.join(src, "model.safetensors"))
        edit(sd)
        save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    if config_edit:
        path = os.path.join(dst, "config.json")
        cfg = json.load(open(path))
        config_edit(cfg)
        json.dump(cfg, open(path, "w"))
    return str(dst)


def test_hf_side_errors_name_the_tensor(folders, tmp_path):
    from converters import convert_hf_to_megatron
    from ttrl_megatron.megatron.arch import ArchConfigError
    from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

    hf, _ = folders["qwen2"]
    k = "model.layers.1.self_attn.k_proj.weight"
    cases = [
        (lambda sd: sd.__setitem__(k, sd[k][:32]), None, CheckpointMismatchError,
         r"tensor 'model.layers.1.self_attn.k_proj.weight' has shape \(32, 128\) in model.safetensors, "
         r"the config implies \(64, 128\)"),
        (lambda sd: sd.pop("model.layers.0.mlp.up_proj.weight"), None, CheckpointMismatchError,
         r"tensor 'model.layers.0.mlp.up_proj.weight' with shape \(256, 128\) is missing"),
        (lambda sd: sd.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(2)), None, CheckpointMismatchError,
         r"unexpected tensor 'model.layers.0.mlp.extra.weight'"),
        (None, lambda c: c.__setitem__("num_hidden_layers", 3), CheckpointMismatchError,
         r"tensor 'model.layers.2.\S+' with shape .* is missing \(12 missing in total\)"),
        (None, lambda c: c.__setitem__("model_type", "gpt2"), ArchConfigError, r"model_type='gpt2'"),
        (None, lambda c: c.__setitem__("hidden_act", "gelu"), ArchConfigError, r"hidden_act='gelu'"),
    ]
    for i, (edit, config_edit, error, pattern) in enumerate(cases):
        bad = _edited_hf(hf, tmp_path / f"bad{i}", edit, config_edit)
        with pytest.raises(error, match=pattern):
            convert_hf_to_megatron(bad, str(tmp_path / f"out{i}"), progress=False)
        assert not os.path.exists(tmp_path / f"out{i}")  # refused before writing anything
    os.makedirs(tmp_path / "busy")
    open(tmp_path / "busy" / "x", "w").close()
    with pytest.raises(FileExistsError, match="busy exists and is not an empty directory"):
        convert_hf_to_megatron(hf, str(tmp_path / "busy"), progress=False)


def _tampered(src, dst, **arch):
    """A copy of a Megatron checkpoint whose stored arch claims other values (to reach the tensor checks)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "ttrl_checkpoint.json")
    meta = json.load(open(path))
    meta["arch"].update(arch)
    json.dump(meta, open(path, "w"))
    return str(dst)


def _load_into(ckpt, cfg):
    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.checkpoint import load_model_checkpoint
    from ttrl_megatron.megatron.model import build_gpt_model

    with megatron_group(1, 1):
        load_model_checkpoint(build_gpt_model(ModelArchConfig.from_hf(cfg)), ckpt)


def test_megatron_side_errors_name_the_tensor_or_field(folders, tmp_path):
    from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

    _, qwen_mg = folders["qwen2"]
    _, llama_mg = folders["llama"]
    wider = qwen2_config(tied=False, **{**TINY, "intermediate_size": 384})
    with pytest.raises(CheckpointMismatchError, match="checkpoint arch intermediate_size=256 differs from the "
                                                      "model's intermediate_size=384"):
        _load_into(qwen_mg, wider)
    with pytest.raises(CheckpointMismatchError, match=r"tensor 'decoder.layers.mlp.linear_fc1.weight' has shape "
                                                      r"\(2, 512, 128\) in the checkpoint but \(2, 768, 128\)"):
        _load_into(_tampered(qwen_mg, tmp_path / "wide", intermediate_size=384), wider)
    with pytest.raises(CheckpointMismatchError, match=r"tensor 'decoder.layers.self_attention.linear_qkv.bias' is "
                                                      r"missing from the checkpoint"):
        _load_into(_tampered(llama_mg, tmp_path / "nobias", model_type="qwen2", add_qkv_bias=True),
                   qwen2_config(tied=False, **TINY))
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint tensor 'decoder.layers.self_attention."
                                                      r"linear_qkv.bias' \(shape \(2, 256\)\) has no place"):
        _load_into(_tampered(qwen_mg, tmp_path / "bias", model_type="llama", add_qkv_bias=False),
                   llama_config(tied=False, **TINY))
    with pytest.raises(FileNotFoundError, match="is not a ttrl-megatron checkpoint"):
        _load_into(str(tmp_path), llama_config(tied=False, **TINY))


def test_value_model_gets_the_trunk_only_and_refuses_lm_export(folders):
    """A critic built from a causal LM: every trunk tensor from HF, the [1, h] head left as built (no lm_head
    mapping onto it), and no HF export of a value model."""
    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import iter_hf_weights, load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    hf_dir, _ = folders["qwen2"]  # untied: its lm_head must not be forced into the value head
    hf = load_file(os.path.join(hf_dir, "model.safetensors"))
    with megatron_group(1, 1):
        critic = build_gpt_model(ModelArchConfig.from_hf(hf_dir), value_head=True)
        head_before = critic.output_layer.weight.detach().clone()
        load_hf_weights(critic, hf_dir)
        assert torch.equal(critic.output_layer.weight, head_before)
        assert torch.equal(critic.embedding.word_embeddings.weight, hf["model.embed_tokens.weight"])
        assert torch.equal(critic.decoder.layers[1].mlp.linear_fc2.weight, hf["model.layers.1.mlp.down_proj.weight"])
        with pytest.raises(ValueError, match="value model .* has no HF causal-LM layout"):
            next(iter_hf_weights(critic))
