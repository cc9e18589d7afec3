"""Megatron actor/critic engines in ONE spawned rank: construction from the typed config sections, lr schedule,
epochs + shuffle against the reference, gradient checkpointing, dist_checkpointing round trip, bf16, errors.

The multi-rank parity checks live in test_actor_critic_parity.py (this file reuses its data and reference).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.dist.test_actor_critic_parity import (
    B, TEMPERATURE, _param_err, hf_forward, make_batch, make_hf_dir, reference_policy_update,
)


def _configs(hf_dir, **actor_kw):
    from ttrl_megatron.config import ActorConfig, ModelConfig, OptimConfig, RolloutConfig
    from ttrl_megatron.config.model_sections import MegatronConfig

    optim = OptimConfig(lr=1e-3, weight_decay=0.1, eps=1e-3, betas=[0.9, 0.99], clip_grad=1.0)
    kw = dict(ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, entropy_coeff=0.01, optim=optim,
              megatron=MegatronConfig(dtype="float32", use_distributed_optimizer=False))
    actor = ActorConfig(**{**kw, **actor_kw})
    rollout = RolloutConfig(n=2, temperature=TEMPERATURE, log_prob_micro_batch_size_per_gpu=3)
    return ModelConfig(path=hf_dir), actor, rollout


def _batch_with_old(hf):
    batch = make_batch()
    with torch.no_grad():
        lp, _ = hf_forward(hf, batch)
    batch["old_log_probs"] = lp + batch["noise0"]
    batch["ref_log_prob"] = lp + batch["noise1"]
    return batch


def _checks(hf_dir: str) -> dict:
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.config import CriticConfig, OptimConfig, RefConfig
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.actor import build_actor, build_reference
    from ttrl_megatron.megatron.critic import build_critic
    from ttrl_megatron.megatron.engine import unwrap
    from ttrl_megatron.megatron.optimizer import OptimConfig as EngineOptim
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.protocol import DataProto

    init_distributed(ParallelLayout(1, 1, 1), seed=1)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch_with_old(hf)
    out = {}

    # 1. from config; 2 epochs with shuffling == the reference on the same row order; + gradient checkpointing
    model_cfg, actor_cfg, rollout = _configs(hf_dir, ppo_epochs=2, shuffle=True)
    actor = build_actor(model_cfg, actor_cfg, rollout)
    engine_cfg = actor.config
    perm_gen = torch.Generator().manual_seed(engine_cfg.seed)
    order = torch.cat([torch.randperm(B, generator=perm_gen) for _ in range(2)])
    shuffled = {k: v[order] for k, v in batch.items()}
    optim = EngineOptim.from_config(actor_cfg.optim, False, "optim")
    # the reference runs the 4 mini-batches of the 2 shuffled epochs as one pass over the permuted rows
    ref_model, _, _ = reference_policy_update(hf, shuffled, engine_cfg, optim)
    metrics = actor.update_policy(DataProto(dict(batch)))
    out["epochs_shuffle_err"] = _param_err(actor.model[0], ref_model)
    model_ckpt, actor_ckpt, rollout_ckpt = _configs(hf_dir, ppo_epochs=2, shuffle=True)
    model_ckpt.enable_gradient_checkpointing = True
    actor2 = build_actor(model_ckpt, actor_ckpt, rollout_ckpt)
    actor2.update_policy(DataProto(dict(batch)))
    out["grad_ckpt_err"] = _param_err(actor2.model[0], ref_model)
    out["actor_metrics"] = metrics

    # 2. lr schedule: 2 warmup steps of 4 then cosine to min_lr_ratio at step 4 (lr used BY each update)
    model_cfg, actor_cfg, rollout = _configs(hf_dir)
    actor_cfg.optim = OptimConfig(lr=1e-3, lr_warmup_steps_ratio=0.5, warmup_style="cosine", min_lr_ratio=0.1,
                                  total_training_steps=4)
    sched_actor = build_actor(model_cfg, actor_cfg, rollout)
    out["lrs"] = [sched_actor.update_policy(DataProto(dict(batch)))["actor/lr"] for _ in range(5)]

    # 3. reference engine (frozen) and critic from config sections
    ref = build_reference(model_cfg, RefConfig(log_prob_micro_batch_size_per_gpu=5), rollout, "float32")
    lp, _ = ref.compute_log_prob(DataProto(dict(batch)))
    with torch.no_grad():
        hf_lp, _ = hf_forward(hf, batch)
    out["ref_logprob_err"] = float(((lp - hf_lp) * batch["response_mask"]).abs().max())
    critic_cfg = CriticConfig(ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, use_dynamic_bsz=False,
                              ppo_epochs=1, shuffle=False, loss_agg_mode="token-mean")
    critic_cfg.model.path = hf_dir
    critic = build_critic(critic_cfg, 2, "float32")
    values = critic.compute_values(DataProto(dict(batch)))
    out["fresh_critic_values_abs"] = float(values.abs().max())  # zero value head: a fresh critic predicts 0
    cb = dict(batch, values=values, returns=batch["advantages"])
    out["critic_metrics"] = critic.update_critic(DataProto(cb))

    # 4. dist_checkpointing round trip of model + optimizer + scheduler, then one more identical update
    out.update(_checkpoint_roundtrip(hf_dir, batch))

    # 5. bf16 parameters (megatron's Float16Module + fp32 main params): log-probs near fp32, update runs
    model_cfg, actor_cfg, rollout = _configs(hf_dir)
    actor_cfg.megatron.dtype = "bfloat16"
    bf = build_actor(model_cfg, actor_cfg, rollout)
    lp16, _ = bf.compute_log_prob(DataProto(dict(batch)))
    out["bf16_logprob_err"] = float(((lp16 - hf_lp) * batch["response_mask"]).abs().max())
    out["bf16_metrics"] = bf.update_policy(DataProto(dict(batch)))

    # 6. errors name what to change
    errors = {}
    for name, call in _error_cases(hf_dir, batch, ref, actor).items():
        try:
            call()
            errors[name] = "no error"
        except Exception as exc:  # noqa: BLE001 - the message is what is checked
            errors[name] = f"{type(exc).__name__}: {exc}"
    out["errors"] = errors
    out["param_count"] = sum(p.numel() for p in unwrap(actor.model[0]).parameters())
    return out


def _checkpoint_roundtrip(hf_dir, batch) -> dict:
    import tempfile

    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from ttrl_megatron.megatron.actor import build_actor
    from ttrl_megatron.protocol import DataProto

    model_cfg, actor_cfg, rollout = _configs(hf_dir)
    a = build_actor(model_cfg, actor_cfg, rollout)
    a.update_policy(DataProto(dict(batch)))
    ckpt = tempfile.mkdtemp() if dist.get_rank() == 0 else None
    box = [ckpt]
    dist.broadcast_object_list(box)
    from ttrl_megatron.megatron.checkpoint import InProcessTorchDistSave

    dist_checkpointing.save(a.engine.sharded_state_dict(), box[0], sharded_strategy=InProcessTorchDistSave())
    b = build_actor(model_cfg, actor_cfg, rollout)  # fresh weights from HF, fresh optimizer
    b.engine.load_state_dict(dist_checkpointing.load(b.engine.sharded_state_dict(for_loading=True), box[0]))
    ma = a.update_policy(DataProto(dict(batch)))
    mb = b.update_policy(DataProto(dict(batch)))
    diff = max(float((pa - pb).detach().abs().max()) for pa, pb in zip(a.model[0].parameters(), b.model[0].parameters()))
    return {"ckpt_param_diff": diff, "ckpt_lr": (ma["actor/lr"], mb["actor/lr"]),
            "ckpt_loss": (ma["actor/loss"], mb["actor/loss"])}


def _error_cases(hf_dir, batch, ref, actor):
    from ttrl_megatron.megatron.actor import ActorEngineConfig, build_actor
    from ttrl_megatron.protocol import DataProto

    no_adv = {k: v for k, v in batch.items() if k != "advantages"}
    model_cfg, actor_cfg, rollout = _configs(hf_dir)
    offload_cfg = dataclasses.replace(actor_cfg, megatron=dataclasses.replace(actor_cfg.megatron, param_offload=True))
    bad_mini = _configs(hf_dir, ppo_mini_batch_size=3)
    override_model = dataclasses.replace(model_cfg, override_config={"num_hidden_layers": 1})
    return {
        "missing_key": lambda: actor.update_policy(DataProto(no_adv)),
        "ref_update": lambda: ref.update_policy(DataProto(dict(batch))),
        "offload": lambda: build_actor(model_cfg, offload_cfg, rollout),
        "override": lambda: build_actor(override_model, actor_cfg, rollout),
        "mini_batch": lambda: build_actor(*bad_mini).update_policy(DataProto(dict(batch))),
        "no_micro": lambda: ActorEngineConfig(ppo_micro_batch_size_per_gpu=None).validate(),
        "token_budget": lambda: _tiny_budget(actor, batch),
    }


def _tiny_budget(actor, batch):
    from ttrl_megatron.protocol import DataProto

    saved = actor.config
    actor.config = dataclasses.replace(saved, use_dynamic_bsz=True, ppo_max_token_len_per_gpu=4)
    try:
        actor.update_policy(DataProto(dict(batch)))
    finally:
        actor.config = saved


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    hf_dir = make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_single"))
    return run_distributed(_checks, 1, hf_dir, timeout_s=300)[0]


def test_epochs_shuffle_and_gradient_checkpointing_match_reference(results):
    assert results["epochs_shuffle_err"] <= 1e-5
    assert results["grad_ckpt_err"] <= 1e-5
    assert results["actor_metrics"]["actor/lr"] == pytest.approx(1e-3)


def test_lr_warmup_then_cosine_decay(results):
    lrs = results["lrs"]
    # megatron: warmup 2 steps from 0 (step k uses k/2 * lr), then cosine from lr to 0.1*lr over steps 2..4
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert lrs[3] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lrs[4] == pytest.approx(1e-4)


def test_reference_and_critic_built_from_config(results):
    assert results["ref_logprob_err"] <= 1e-5
    assert results["fresh_critic_values_abs"] == 0.0
    assert set(results["critic_metrics"]) == {"critic/vf_loss", "critic/vf_clipfrac", "critic/vpred_mean",
                                              "critic/grad_norm", "critic/lr"}


def test_dist_checkpoint_round_trip_continues_identically(results):
    assert results["ckpt_param_diff"] == 0.0
    assert results["ckpt_lr"][0] == results["ckpt_lr"][1]
    assert results["ckpt_loss"][0] == pytest.approx(results["ckpt_loss"][1], abs=0.0)


def test_bf16_runs_close_to_fp32(results):
    assert results["bf16_logprob_err"] < 0.15
    assert torch.isfinite(torch.tensor(results["bf16_metrics"]["actor/loss"]))


@pytest.mark.parametrize("case, words", [
    ("missing_key", ["advantages"]),
    ("ref_update", ["frozen"]),
    ("offload", ["param_offload"]),
    ("override", ["override_config"]),
    ("mini_batch", ["ppo_mini_batch_size"]),
    ("no_micro", ["ppo_micro_batch_size_per_gpu"]),
    ("token_budget", ["ppo_max_token_len_per_gpu"]),
])
def test_errors_name_the_setting(results, case, words):
    message = results["errors"][case]
    assert message != "no error", case
    for word in words:
        assert word in message, message
