"""GPTModel from tiny HF configs, one rank: parameter counts, logits vs transformers, llama3 rope, value head.

All checks run in ONE spawned process (megatron state and the CPU compat layer stay out of the pytest process).
"""
import pytest

from tests.dist.harness import run_distributed


def _single_rank():
    import torch

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.model import ModelArchConfig, build_gpt_model, forward_logits, left_padded_inputs
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(1, 1, 1), seed=0)
    out = {}
    configs = {"qwen2_tied": fx.qwen2_config(True), "qwen2_untied": fx.qwen2_config(False),
               "llama_untied_llama3": fx.llama_config(False, llama3_factor=8.0), "llama_tied": fx.llama_config(True)}
    data = fx.batch()
    for name, cfg in configs.items():
        arch = ModelArchConfig.from_hf(cfg)
        hf = fx.hf_model(cfg)
        model = build_gpt_model(arch)
        n_hf = sum(p.numel() for p in hf.parameters())
        n_pad = (arch.padded_vocab_size(1) - arch.vocab_size) * arch.hidden_size * (1 if arch.tie_word_embeddings else 2)
        fx.load_into(model, fx.hf_to_mcore_tp1(hf.state_dict(), arch))
        model.eval()
        with torch.no_grad():
            mc = forward_logits(model, data["input_ids"], data["attention_mask"])
            pos, _ = left_padded_inputs(data["attention_mask"])
            ref = hf(input_ids=data["input_ids"], attention_mask=data["attention_mask"], position_ids=pos).logits
        valid = data["attention_mask"].bool()
        out[name] = dict(
            n_mc=sum(p.numel() for p in model.parameters()), n_expected=n_hf + n_pad, logits_shape=tuple(mc.shape),
            max_diff=float((mc - ref)[valid].abs().max()), ref_scale=float(ref[valid].abs().max()),
            has_output_layer=hasattr(model, "output_layer") and not model.share_embeddings_and_output_weights,
            inv_freq_diff=float((model.rotary_pos_emb.inv_freq.cpu() - hf.model.rotary_emb.inv_freq).abs().max()),
            rope_scaled=bool(arch.rope_scaling_factor),
        )
    out["unscaled_inv_freq_diff"] = _unscaled_rope_differs(configs["llama_untied_llama3"], build_gpt_model)
    out["value"] = _value_head(configs["qwen2_tied"], data)
    out["errors"] = _layout_errors(ModelArchConfig.from_hf(configs["qwen2_tied"]))
    return out


def _layout_errors(arch):
    """The model builder checks the layout against the model before megatron sees it."""
    from ttrl_megatron.distributed import LayoutError, ParallelLayout
    from ttrl_megatron.megatron.model import build_gpt_model, build_transformer_config

    msgs = {}
    for name, layout in {"tp8": ParallelLayout(tp=8), "tp4": ParallelLayout(tp=4), "pp3": ParallelLayout(pp=3)}.items():
        try:
            build_transformer_config(arch, layout)
            msgs[name] = "no error"
        except LayoutError as exc:
            msgs[name] = str(exc)
    try:
        build_gpt_model(arch, ParallelLayout(tp=2))  # megatron state is tp=1
        msgs["mismatch"] = "no error"
    except RuntimeError as exc:
        msgs["mismatch"] = str(exc)
    from megatron.core import tensor_parallel

    from ttrl_megatron.megatron.parallel import seed_all

    tensor_parallel.get_cuda_rng_tracker().reset()
    try:
        build_gpt_model(arch)
        msgs["unseeded"] = "no error"
    except RuntimeError as exc:
        msgs["unseeded"] = str(exc)
    seed_all(0)
    return msgs


def _unscaled_rope_differs(cfg, build_gpt_model):
    """Negative control: the same config without llama3 scaling must give other frequencies than HF's scaled ones."""
    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.megatron.model import ModelArchConfig

    hf = fx.hf_model(cfg)
    arch = ModelArchConfig.from_hf({**cfg, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})
    model = build_gpt_model(arch)
    return float((model.rotary_pos_emb.inv_freq.cpu() - hf.model.rotary_emb.inv_freq).abs().max())


def _value_head(cfg, data):
    import torch

    from ttrl_megatron.megatron.model import ModelArchConfig, ValueHead, build_gpt_model, forward_logits

    arch = ModelArchConfig.from_hf(cfg)
    critic = build_gpt_model(arch, value_head=True)
    values = forward_logits(critic, data["input_ids"], data["attention_mask"])
    with torch.no_grad():
        critic.output_layer.weight.normal_()
    values2 = forward_logits(critic, data["input_ids"], data["attention_mask"])
    values2.sum().backward()
    names = {n: tuple(p.shape) for n, p in critic.named_parameters()}
    return dict(
        shape=tuple(values.shape), init_zero=bool((values == 0).all()), head_type=type(critic.output_layer).__name__,
        is_value_head=isinstance(critic.output_layer, ValueHead), tied=critic.share_embeddings_and_output_weights,
        head_shape=names.get("output_layer.weight"), head_grad=float(critic.output_layer.weight.grad.abs().sum()),
        emb_grad=float(critic.embedding.word_embeddings.weight.grad.abs().sum()),
    )


@pytest.fixture(scope="module")
def single():
    return run_distributed(_single_rank, 1, timeout_s=120)[0]


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen2_untied", "llama_untied_llama3", "llama_tied"])
def test_parameter_count_matches_hf_plus_vocab_padding(single, name):
    r = single[name]
    assert r["n_mc"] == r["n_expected"], r
    assert r["has_output_layer"] == ("untied" in name)


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen2_untied", "llama_untied_llama3", "llama_tied"])
def test_logits_match_transformers_on_left_padded_batch(single, name):
    r = single[name]
    assert r["logits_shape"] == (4, 8, 300)  # padded vocab rows cut off
    assert r["ref_scale"] > 0.1
    assert r["max_diff"] < 1e-4, r


def test_llama3_rope_scaling_matches_hf_frequencies(single):
    r = single["llama_untied_llama3"]
    assert r["rope_scaled"]
    assert r["inv_freq_diff"] < 1e-9, r
    assert single["unscaled_inv_freq_diff"] > 1e-6  # the check above can tell scaled from unscaled


def test_value_head(single):
    v = single["value"]
    assert v["shape"] == (4, 8, 1) and v["init_zero"] and v["is_value_head"]
    assert v["tied"] is False and v["head_shape"] == (1, 128)
    assert v["head_grad"] > 0 and v["emb_grad"] > 0


def test_layout_checked_against_model(single):
    e = single["errors"]
    assert "tensor_model_parallel_size=8 does not divide num_attention_heads=4" in e["tp8"]
    assert "tensor_model_parallel_size=4 does not divide num_key_value_heads=2" in e["tp4"]
    assert "pipeline_model_parallel_size=3 does not divide num_hidden_layers=2" in e["pp3"]
    assert "differs from megatron's state tp=1" in e["mismatch"]
    assert "RNG tracker is not seeded" in e["unseeded"]
