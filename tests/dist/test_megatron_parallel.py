"""GPTModel at TP=2 and PP=2 on 2 gloo ranks vs the TP=1/PP=1 reference with the same weights.

One spawn: phase 1 builds TP=1 references (DP=2), phase 2 re-initialises megatron at TP=2, phase 3 at PP=2.
Forward/backward go through megatron's ``get_forward_backward_func`` (1F1B under PP).
"""
import pytest

from tests.dist.harness import run_distributed

TP_SHAPES = {  # local shapes at TP=2 (hidden 128, 4 heads of 32, 2 groups, ffn 256, vocab 300 -> padded 512)
    "embedding.word_embeddings.weight": (256, 128),
    "decoder.layers.0.self_attention.linear_qkv.weight": (128, 128),
    "decoder.layers.0.self_attention.linear_qkv.bias": (128,),
    "decoder.layers.0.self_attention.linear_proj.weight": (128, 64),
    "decoder.layers.0.mlp.linear_fc1.weight": (256, 128),
    "decoder.layers.0.mlp.linear_fc2.weight": (128, 128),
    "decoder.layers.0.input_layernorm.weight": (128,),
    "output_layer.weight": (256, 128),
}


def _grad_diff(model, ref_grads, transform=lambda d: d, skip=()):
    """Largest |grad - reference grad| over the model's parameters (reference mapped to local names/shards)."""
    ref = transform(ref_grads)
    worst = 0.0
    for name, p in model.named_parameters():
        if any(s in name for s in skip):
            continue
        worst = max(worst, float((p.grad - ref[name]).abs().max()))
    return worst


def _reference(key, arch, data, value_head=False):
    """TP=1 model with HF weights of config ``key``: full state, logits, loss and grads."""
    import torch

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.megatron.model import build_gpt_model, forward_logits

    model = build_gpt_model(arch, value_head=value_head)
    full = fx.hf_to_mcore_tp1(fx.hf_model(_cfgs()[key]).state_dict(), arch)
    if value_head:
        full["output_layer.weight"] = 0.05 * torch.randn(1, arch.hidden_size, generator=torch.Generator().manual_seed(1))
    fx.load_into(model, full)
    logits = forward_logits(model, data["input_ids"], data["attention_mask"])
    if value_head:
        logits.sum().backward()
        loss = None
    else:
        loss = fx.train_step(model, data)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return dict(full=full, logits=logits.detach(), loss=loss, grads=grads)


def _cfgs():
    from tests.dist import mcore_fixtures as fx

    return {"qwen2": fx.qwen2_config(False), "qwen2_tied": fx.qwen2_config(True), "llama": fx.llama_config(False)}


def _tp_phase(archs, refs, data, out):
    import torch
    from megatron.core import parallel_state as ps

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.model import build_gpt_model, forward_logits
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(tp=2, pp=1, dp=1), seed=0)
    r = ps.get_tensor_model_parallel_rank()
    for key in ("qwen2", "qwen2_tied"):
        model = build_gpt_model(archs[key])
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        fx.load_into(model, fx.shard_tp(refs[key]["full"], r, 2, archs[key].padded_vocab_size(2)))
        with torch.no_grad():
            logits = forward_logits(model, data["input_ids"], data["attention_mask"])
        loss = fx.train_step(model, data)
        out[f"tp_{key}"] = dict(
            shapes=shapes, logits_diff=float((logits - refs[key]["logits"]).abs().max()),
            loss=loss, ref_loss=refs[key]["loss"],
            grad_diff=_grad_diff(model, refs[key]["grads"], lambda g: fx.shard_tp(g, r, 2, archs[key].padded_vocab_size(2))),
        )
    critic = build_gpt_model(archs["qwen2"], value_head=True)
    fx.load_into(critic, fx.shard_tp(refs["critic"]["full"], r, 2, 512, replicated=("output_layer.weight",)))
    values = forward_logits(critic, data["input_ids"], data["attention_mask"])
    values.sum().backward()
    out["tp_critic"] = dict(
        values_diff=float((values.detach() - refs["critic"]["logits"]).abs().max()),
        values_scale=float(refs["critic"]["logits"].abs().max()),
        grad_diff=_grad_diff(critic, refs["critic"]["grads"],
                             lambda g: fx.shard_tp(g, r, 2, 512, replicated=("output_layer.weight",))),
    )
    ps.destroy_model_parallel()


def _pp_phase(archs, refs, data, out):
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(tp=1, pp=2, dp=1), seed=0)
    stage = ps.get_pipeline_model_parallel_rank()
    for key in ("llama", "qwen2_tied"):
        model = build_gpt_model(archs[key])
        info = dict(
            stage=stage, n_layers=len(model.decoder.layers),
            layer_numbers=[layer.layer_number for layer in model.decoder.layers],
            has_embedding=hasattr(model, "embedding"), has_output=hasattr(model, "output_layer"),
            has_final_norm=getattr(model.decoder, "final_layernorm", None) is not None,
        )
        if key == "qwen2_tied":  # megatron all-reduces the last stage's (zero) copy with the embedding at init
            w = model.shared_embedding_or_output_weight().detach().clone()
            both = [torch.empty_like(w) for _ in range(2)]
            dist.all_gather(both, w)
            info["tied_copy_diff"] = float((both[0] - both[1]).abs().max())
        fx.load_into(model, refs[key]["full"], layer_offset=stage * len(model.decoder.layers))
        info["loss_fwd_only"] = fx.train_step(model, data, forward_only=True)
        info["loss"] = fx.train_step(model, data)
        info["ref_loss"] = refs[key]["loss"]
        offset = stage * len(model.decoder.layers)

        def to_local(g, offset=offset):
            import re

            return {re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) - offset}.", n): t
                    for n, t in g.items()}

        # tied: the embedding/output grads are summed across stages only by finalize_model_grads (DDP), not here
        skip = ("word_embeddings", "output_layer") if key == "qwen2_tied" else ()
        info["grad_diff"] = _grad_diff(model, refs[key]["grads"], to_local, skip=skip)
        out[f"pp_{key}"] = info
    ps.destroy_model_parallel()


def _parallel_checks():
    from megatron.core import parallel_state as ps

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.model import ModelArchConfig
    from ttrl_megatron.megatron.parallel import init_distributed

    data = fx.batch()
    archs = {k: ModelArchConfig.from_hf(c) for k, c in _cfgs().items()}
    init_distributed(ParallelLayout.from_world(2, tp=1, pp=1), seed=0)
    refs = {k: _reference(k, a, data) for k, a in archs.items()}
    refs["critic"] = _reference("qwen2", archs["qwen2"], data, value_head=True)
    ps.destroy_model_parallel()
    out = {}
    _tp_phase(archs, refs, data, out)
    _pp_phase(archs, refs, data, out)
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_distributed(_parallel_checks, 2, timeout_s=150)


def test_tp2_local_shapes(ranks):
    for r in ranks:
        shapes = r["tp_qwen2"]["shapes"]
        for name, shape in TP_SHAPES.items():
            assert shapes[name] == shape, (name, shapes[name])
        assert "output_layer.weight" not in r["tp_qwen2_tied"]["shapes"]


@pytest.mark.parametrize("key", ["qwen2", "qwen2_tied"])
def test_tp2_matches_tp1_forward_and_backward(ranks, key):
    for r in ranks:
        t = r[f"tp_{key}"]
        assert t["logits_diff"] < 1e-5, t
        assert abs(t["loss"] - t["ref_loss"]) < 1e-5, t
        assert t["grad_diff"] < 1e-5, t


def test_tp2_value_model(ranks):
    for r in ranks:
        c = r["tp_critic"]
        assert c["values_scale"] > 0.1 and c["values_diff"] < 1e-5, c
        assert c["grad_diff"] < 1e-4, c


def test_pp2_stages_hold_their_layers(ranks):
    first, last = ranks[0]["pp_llama"], ranks[1]["pp_llama"]
    assert (first["stage"], last["stage"]) == (0, 1)
    assert first["n_layers"] == last["n_layers"] == 1
    assert first["layer_numbers"] == [1] and last["layer_numbers"] == [2]  # megatron's global, 1-based
    assert first["has_embedding"] and not first["has_output"] and not first["has_final_norm"]
    assert last["has_output"] and last["has_final_norm"] and not last["has_embedding"]
    assert ranks[1]["pp_qwen2_tied"]["has_output"]  # tied under PP: the last stage keeps a copy
    assert ranks[0]["pp_qwen2_tied"]["tied_copy_diff"] == 0.0


@pytest.mark.parametrize("key", ["llama", "qwen2_tied"])
def test_pp2_1f1b_matches_reference(ranks, key):
    last = ranks[1][f"pp_{key}"]
    assert abs(last["loss"] - last["ref_loss"]) < 1e-5, last
    assert abs(last["loss_fwd_only"] - last["ref_loss"]) < 1e-5, last
    for r in ranks:
        assert r[f"pp_{key}"]["grad_diff"] < 1e-5, r[f"pp_{key}"]
