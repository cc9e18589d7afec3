"""Foreign checkpoints (megatron/foreign) loaded into megatron-core GPTModels on CPU/gloo, at TP=1 and TP=2.

Sources: the real NeMo-2 fixture (../shared/fixtures/nemo2-qwen2-tied: made by nemo-toolkit 2.7.3 from its hf/),
and checkpoints written here by megatron-core itself in the other layouts: a Megatron-Bridge ``iter_N/`` exported
from our converter's checkpoint (vocab 300 -> padded 384, read back at TP=2 as 512 rows), a Megatron-LM ``iter_N/``
(``args`` in common.pt) and a per-layer-key checkpoint (megatron's non-homogeneous key style).
Checks: parsed config == HF config; every weight streamed back out (TP gather) is bit-equal to the HF tensors;
Megatron logits match transformers within 1e-4; the trainer hook ``build_model_chunks`` (policy and value model,
and our own checkpoint format);
errors for a shape mismatch and a wrong key prefix. One spawn per world size (each costs seconds).
"""
from __future__ import annotations

import argparse
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.dist.harness import run_distributed
from tests.dist.mcore_fixtures import hf_model, llama_config, qwen2_config

from tests.shared_paths import NEMO2_FIXTURE as FIXTURE  # ../shared beside the checkout
TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, head_dim=32)
TOL = 1e-4

pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"NeMo-2 fixture {FIXTURE} is not present")


def _hf_logits(hf_dir: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _save_megatron_style(hf_dir: str, out_root: str, *, args: bool, per_layer: bool) -> str:
    """Load ``hf_dir`` into a TP=1 GPTModel and save it with megatron's dist_checkpointing as Megatron-LM does
    (``iter_0000007/`` + tracker; ``args`` in common.pt) or with megatron's per-layer key style."""
    from megatron.core import dist_checkpointing

    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.checkpoint import InProcessTorchDistSave
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    arch = ModelArchConfig.from_hf(hf_dir)
    it = os.path.join(out_root, "iter_0000007")
    os.makedirs(it)
    with megatron_group(1, 1):
        model = build_gpt_model(arch)
        load_hf_weights(model, hf_dir)
        state = model.sharded_state_dict(metadata={"non_homogeneous_layers": True} if per_layer else None)
        if args:  # what Megatron-LM's --swiglu --normalization RMSNorm --group-query-attention ... run stores
            state["args"] = argparse.Namespace(
                num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.intermediate_size,
                num_attention_heads=arch.num_attention_heads, group_query_attention=True,
                num_query_groups=arch.num_query_groups, kv_channels=arch.head_dim, norm_epsilon=arch.rms_norm_eps,
                normalization="RMSNorm", swiglu=True, add_bias_linear=False, add_qkv_bias=arch.add_qkv_bias,
                attention_dropout=0.0, hidden_dropout=0.0, init_method_std=0.02, rotary_base=arch.rope_theta,
                position_embedding_type="rope", max_position_embeddings=arch.max_position_embeddings,
                seq_length=64, make_vocab_size_divisible_by=128,
                untie_embeddings_and_output_weights=not arch.tie_word_embeddings,
                padded_vocab_size=arch.padded_vocab_size(1), vocab_size=arch.vocab_size, bf16=False, fp16=False,
                lr=3e-4, micro_batch_size=1, train_iters=7)
        dist_checkpointing.save(state, it, sharded_strategy=InProcessTorchDistSave())
    if args:
        with open(os.path.join(out_root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("7")
    else:  # per-layer keys under a Megatron-Bridge run_config, so the config comes from YAML
        from ttrl_megatron.megatron.foreign.mbridge import provider_section
        import dataclasses
        import yaml

        with open(os.path.join(it, "run_config.yaml"), "w") as f:
            yaml.safe_dump({"model": provider_section(dataclasses.asdict(arch), "float32")}, f)
    return it


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Every checkpoint the ranks load, plus the HF folders they must equal and HF logits to compare with."""
    from converters import convert_hf_to_megatron
    from ttrl_megatron.megatron.foreign.mbridge import export_mbridge

    root = tmp_path_factory.mktemp("foreign")
    llama_hf, qwen_hf = str(root / "llama_hf"), str(root / "qwen_hf")
    hf_model(llama_config(tied=False, **TINY, vocab_size=300)).save_pretrained(llama_hf)
    hf_model(qwen2_config(tied=True, **TINY, vocab_size=300)).save_pretrained(qwen_hf)
    ours = str(root / "llama_ours")
    convert_hf_to_megatron(llama_hf, ours, progress=False)
    mb_root = str(root / "llama_mbridge")
    export_mbridge(ours, mb_root, iteration=3)
    mlm_root = str(root / "qwen_mlm")
    _save_megatron_style(qwen_hf, mlm_root, args=True, per_layer=False)
    per_layer = _save_megatron_style(qwen_hf, str(root / "qwen_per_layer"), args=False, per_layer=True)
    # negative cases: a config whose ffn size disagrees with the weights, and NeMo-2 weights under a
    # Megatron-Bridge config (keys carry 'module.', the reader expects none)
    wide = str(root / "nemo2_wide")
    shutil.copytree(os.path.join(FIXTURE, "nemo2"), wide)
    os.chmod(os.path.join(wide, "context"), 0o755)
    yaml_path = os.path.join(wide, "context", "model.yaml")
    os.chmod(yaml_path, 0o644)
    text = open(yaml_path).read()
    open(yaml_path, "w").write(text.replace("ffn_hidden_size: 256", "ffn_hidden_size: 384"))
    prefixless = str(root / "nemo2_as_mbridge")
    shutil.copytree(os.path.join(FIXTURE, "nemo2", "weights"), prefixless)
    with open(os.path.join(per_layer, "run_config.yaml")) as src, \
            open(os.path.join(prefixless, "run_config.yaml"), "w") as dst:
        dst.write(src.read().replace("vocab_size: 300", "vocab_size: 256"))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    return {"nemo2": os.path.join(FIXTURE, "nemo2"), "nemo2_hf": os.path.join(FIXTURE, "hf"), "mb": mb_root, "ours": ours,
            "llama_hf": llama_hf, "mlm": mlm_root, "qwen_hf": qwen_hf, "per_layer": per_layer, "wide": wide,
            "prefixless": prefixless, "view": str(root / "hf_view"), "ids": ids, "nemo2_logits": _hf_logits(os.path.join(FIXTURE, "hf"), ids)}


def _exported(model) -> dict:
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    return {k: v.clone() for k, v in iter_hf_weights(model)}


def _bit_equal(got: dict, hf_dir: str) -> bool:
    ref = load_file(os.path.join(hf_dir, "model.safetensors"))  # tied models: transformers stores no lm_head
    return sorted(got) == sorted(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def _loaded(path: str):
    from ttrl_megatron.megatron.foreign.api import build_foreign_model, read_foreign

    info = read_foreign(path)
    return info, build_foreign_model(info)


def _logits_diff(model, paths) -> float:
    from ttrl_megatron.megatron.model import forward_logits

    ids = paths["ids"]
    with torch.no_grad():
        got = forward_logits(model, ids, torch.ones_like(ids))
    return float((got - paths["nemo2_logits"]).abs().max())


def _common_checks(paths, tp: int) -> dict:
    """Loads that run at every TP: NeMo-2 (weights + logits), Megatron-Bridge, Megatron-LM, per-layer keys."""
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(tp=tp, pp=1, dp=1), backend="gloo", seed=0)
    out = {}
    info, model = _loaded(paths["nemo2"])
    out["nemo2_kind"], out["nemo2_tied"] = info.fmt.kind, info.arch.tie_word_embeddings
    out["nemo2_weights"] = _bit_equal(_exported(model), paths["nemo2_hf"])
    out["nemo2_logits_diff"] = _logits_diff(model, paths)
    for name, hf in (("mb", "llama_hf"), ("mlm", "qwen_hf"), ("per_layer", "qwen_hf")):
        info, model = _loaded(paths[name])
        out[f"{name}_kind"] = info.fmt.kind
        out[f"{name}_weights"] = _bit_equal(_exported(model), paths[hf])
    return out


def _check_tp1(paths) -> dict:
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.engine import build_model_chunks
    from ttrl_megatron.megatron.foreign import ForeignCheckpointError
    from ttrl_megatron.megatron.foreign.api import read_foreign
    from ttrl_megatron.megatron.hf_io import CheckpointMismatchError

    out = _common_checks(paths, tp=1)
    out["nemo2_config_equal"] = read_foreign(paths["nemo2"]).arch == ModelArchConfig.from_hf(paths["nemo2_hf"])
    out["mb_config_equal"] = read_foreign(paths["mb"]).arch == ModelArchConfig.from_hf(paths["llama_hf"])
    out["mlm_config_equal"] = read_foreign(paths["mlm"]).arch == ModelArchConfig.from_hf(paths["qwen_hf"])
    # the trainer hook: policy and value model (trunk from the checkpoint, zero head)
    policy = build_model_chunks(paths["nemo2"], "float32", load_format="nemo2")[0]
    out["hook_policy"] = _bit_equal(_exported(policy), paths["nemo2_hf"])
    out["hook_ours"] = _bit_equal(_exported(build_model_chunks(paths["ours"], "float32")[0]), paths["llama_hf"])
    critic = build_model_chunks(paths["nemo2"], "float32", value_head=True)[0]
    trunk = {k: v for k, v in critic.state_dict().items() if "extra_state" not in k and "output_layer" not in k}
    out["hook_critic_trunk"] = all(torch.equal(v, policy.state_dict()[k]) for k, v in trunk.items())
    out["hook_critic_head_zero"] = bool((critic.output_layer.weight == 0).all())
    errors = {}
    for name, call in {
        "hook_wrong_format": lambda: build_model_chunks(paths["nemo2"], "float32", load_format="mbridge"),
        "shape": lambda: _loaded(paths["wide"]),
        "prefix": lambda: _loaded(paths["prefixless"]),
    }.items():
        try:
            call()
            errors[name] = None
        except (ForeignCheckpointError, CheckpointMismatchError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    out["errors"] = errors
    return out


def test_foreign_checkpoints_at_tp1(paths):
    out = run_distributed(_check_tp1, 1, paths, timeout_s=240)[0]
    assert out["nemo2_kind"] == "nemo2" and out["nemo2_tied"] and out["nemo2_config_equal"]
    assert out["nemo2_weights"], "NeMo-2 weights differ from the HF tensors"
    assert out["nemo2_logits_diff"] < TOL, out["nemo2_logits_diff"]
    assert (out["mb_kind"], out["mlm_kind"], out["per_layer_kind"]) == ("mbridge", "megatron_lm", "mbridge")
    assert out["mb_weights"] and out["mlm_weights"] and out["per_layer_weights"]
    assert out["mb_config_equal"] and out["mlm_config_equal"]
    assert out["hook_policy"] and out["hook_ours"] and out["hook_critic_trunk"] and out["hook_critic_head_zero"]
    errors = out["errors"]
    assert "load_format='mbridge' but" in errors["hook_wrong_format"] and "'nemo2'" in errors["hook_wrong_format"]
    assert ("CheckpointMismatchError" in errors["shape"]
            and "'module.decoder.layers.mlp.linear_fc1.weight' has shape (2, 512, 128) in the checkpoint but "
                "(2, 768, 128)" in errors["shape"]), errors["shape"]
    assert ("tensor 'embedding.word_embeddings.weight' (shape (256, 128)) is missing; the checkpoint has "
            "'module.embedding.word_embeddings.weight'" in errors["prefix"]), errors["prefix"]


def _check_tp2(paths) -> dict:
    from ttrl_megatron.megatron.foreign.hf_view import materialize_hf

    out = _common_checks(paths, tp=2)
    # the trainer's HF view of a NeMo-2 initial policy, written collectively at TP=2 by rank 0
    view = materialize_hf(paths["nemo2"], "auto", paths["view"])
    out["view_weights"] = _bit_equal(load_file(os.path.join(view, "model.safetensors")), paths["nemo2_hf"])
    out["view_tokenizer"] = os.path.isfile(os.path.join(view, "tokenizer.json"))
    out["view_is_hf"] = materialize_hf(paths["nemo2_hf"], "auto", paths["view"] + "_unused") == paths["nemo2_hf"]
    # the same ranks as two pipeline stages (the tied NeMo-2 model's last stage reads the embedding as output layer)
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    pp = _pp2_checks(paths)
    return {**out, **{f"pp2_{k}": v for k, v in pp.items()}}


def _pp2_checks(paths) -> dict:
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(tp=1, pp=2, dp=1), backend="gloo", seed=0)
    out = {}
    for name, hf in (("nemo2", "nemo2_hf"), ("mb", "llama_hf"), ("mlm", "qwen_hf"), ("per_layer", "qwen_hf")):
        out[f"{name}_weights"] = _bit_equal(_exported(_loaded(paths[name])[1]), paths[hf])
    return out


def test_foreign_checkpoints_at_tp2(paths):
    """Same checkpoints resharded by megatron to TP=2 (the Megatron-Bridge one also re-padded 384 -> 512 rows), the
    trainer's HF view of the NeMo-2 policy written collectively (hf_view.materialize_hf), then all again at PP=2."""
    for rank, out in enumerate(run_distributed(_check_tp2, 2, paths, timeout_s=240)):
        assert out["nemo2_weights"] and out["nemo2_logits_diff"] < TOL, (rank, out)
        assert out["mb_weights"] and out["mlm_weights"] and out["per_layer_weights"], (rank, out)
        assert out["view_weights"] and out["view_tokenizer"] and out["view_is_hf"], (rank, out)
        assert all(out[f"pp2_{n}_weights"] for n in ("nemo2", "mb", "mlm", "per_layer")), (rank, out)
