"""Name round trips, PP ownership/offsets, shape checks and vLLM module groups of bridge/names.py."""

import pytest
import torch

from ttrl_megatron.bridge import names as N


def _arch(layers=4, tied=False, bias=True, naming="local"):
    return N.ArchFacts(layers, 32, 4, 2, 8, 48, 50, 64, tied, bias, naming)


@pytest.mark.parametrize("naming", ["local", "te"])
@pytest.mark.parametrize("tied,bias", [(False, True), (True, False)])
def test_names_round_trip_every_tensor(naming, tied, bias):
    arch = _arch(tied=tied, bias=bias, naming=naming)
    hf_names = list(N.expected_hf_shapes(arch))
    covered = []
    for spec in N.param_specs(arch):
        assert N.megatron_to_hf_names(spec.megatron_name, arch) == spec.hf_names
        for part, hf in enumerate(spec.hf_names):
            mg, kind, _ = N.hf_to_megatron_name(hf, arch)
            assert (mg, kind) == (spec.megatron_name, spec.kind) == (mg, N.tp_kind(mg))
        covered += spec.hf_names
    assert sorted(covered) == sorted(hf_names)


def test_norm_names_follow_the_layer_spec_and_export_accepts_both():
    te, local = _arch(naming="te"), _arch(naming="local")
    hf = "model.layers.3.input_layernorm.weight"
    assert N.hf_to_megatron_name(hf, te)[0] == "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert N.hf_to_megatron_name(hf, local)[0] == "decoder.layers.3.input_layernorm.weight"
    hf2 = "model.layers.1.post_attention_layernorm.weight"
    assert N.hf_to_megatron_name(hf2, te)[0] == "decoder.layers.1.mlp.linear_fc1.layer_norm_weight"
    assert N.hf_to_megatron_name(hf2, local)[0] == "decoder.layers.1.pre_mlp_layernorm.weight"
    for arch in (te, local):
        assert N.megatron_to_hf_names("decoder.layers.1.pre_mlp_layernorm.weight", arch) == (hf2,)
        assert N.megatron_to_hf_names("decoder.layers.1.mlp.linear_fc1.layer_norm_weight", arch) == (hf2,)


def test_tp_dims():
    assert N.tp_split_dim("embedding.word_embeddings.weight") == 0
    assert N.tp_split_dim("output_layer.weight") == 0
    assert N.tp_split_dim("decoder.layers.0.self_attention.linear_qkv.bias") == 0
    assert N.tp_split_dim("decoder.layers.0.mlp.linear_fc1.weight") == 0
    assert N.tp_split_dim("decoder.layers.0.self_attention.linear_proj.weight") == 1
    assert N.tp_split_dim("decoder.layers.0.mlp.linear_fc2.weight") == 1
    assert N.tp_split_dim("decoder.final_layernorm.weight") is None
    assert N.tp_split_dim("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight") is None


@pytest.mark.parametrize("pp", [1, 2, 4])
@pytest.mark.parametrize("tied", [False, True])
def test_pp_local_names_partition_the_model(pp, tied):
    arch = _arch(layers=8, tied=tied)
    owners = {}
    for spec in N.param_specs(arch):
        held = [s for s in range(pp) if N.to_local_name(spec.megatron_name, arch, s, pp) is not None]
        assert held == [N.owning_stage(spec.megatron_name, arch, pp)]
        local = N.to_local_name(spec.megatron_name, arch, held[0], pp)
        assert N.to_global_name(local, arch, held[0], pp) == spec.megatron_name
        owners[spec.megatron_name] = held[0]
    # stage s holds global layer s*L/pp + i as local layer i
    assert N.to_local_name("decoder.layers.5.mlp.linear_fc2.weight", arch, 5 * pp // 8, pp) == \
        f"decoder.layers.{5 - (5 * pp // 8) * (8 // pp)}.mlp.linear_fc2.weight"
    assert owners[N.EMBEDDING] == 0 and owners[N.FINAL_NORM] == pp - 1
    # a tied model's output-layer copy lives only on the last stage, and only when PP > 1
    expect = [pp - 1] if tied and pp > 1 else ([] if tied else [pp - 1])
    assert [s for s in range(pp) if N.to_local_name(N.OUTPUT_LAYER, arch, s, pp)] == expect


def test_pp_requires_divisible_layers():
    with pytest.raises(ValueError, match="num_layers=6 is not divisible by pipeline size 4"):
        N.layer_offset(1, 4, 6)


def test_unknown_and_out_of_range_names_are_named():
    arch = _arch(layers=2, bias=False)
    with pytest.raises(KeyError, match="model.layers.0.self_attn.rotary_emb.inv_freq"):
        N.hf_to_megatron_name("model.layers.0.self_attn.rotary_emb.inv_freq", arch)
    with pytest.raises(KeyError, match="model.layers.7.mlp.up_proj.weight: layer 7 is outside the model's 2"):
        N.hf_to_megatron_name("model.layers.7.mlp.up_proj.weight", arch)
    with pytest.raises(KeyError, match="q_proj.bias: the config has no qkv bias"):
        N.hf_to_megatron_name("model.layers.0.self_attn.q_proj.bias", arch)
    with pytest.raises(KeyError, match="decoder.layers.0.foo.weight"):
        N.megatron_to_hf_names("decoder.layers.0.foo.weight", arch)


def test_shape_mismatch_names_tensor_and_shapes():
    arch = _arch()
    with pytest.raises(ValueError, match=r"model.layers.1.self_attn.k_proj.weight: shape \(8, 32\) does not match "
                                         r"\(16, 32\)"):
        N.hf_to_megatron_shard("model.layers.1.self_attn.k_proj.weight", torch.zeros(8, 32), arch, 0, 1)
    with pytest.raises(ValueError, match=r"model.embed_tokens.weight: shape \(51, 32\)"):
        N.check_hf_shape("model.embed_tokens.weight", (51, 32), arch)


@pytest.mark.parametrize("bias", [True, False])
def test_vllm_groups_cover_each_layer_tensor_once(bias):
    arch = _arch(bias=bias)
    for layer in range(arch.num_layers):
        groups = N.vllm_module_groups(layer, arch)
        flat = [n for g in groups for n in g]
        want = [n for n in N.expected_hf_shapes(arch) if n.startswith(f"model.layers.{layer}.")]
        assert sorted(flat) == sorted(want)
        assert len(groups[0]) == (6 if bias else 3) and groups[0][0].endswith("q_proj.weight")
        assert groups[1] == (f"model.layers.{layer}.mlp.gate_proj.weight", f"model.layers.{layer}.mlp.up_proj.weight")
    assert N.vllm_global_groups(_arch(tied=True)) == [("model.embed_tokens.weight",), ("model.norm.weight",)]
