"""Engine checkpoints (megatron/engine_checkpoint.py): model + optimizer + lr scheduler as dist-checkpoints.

One spawn of 2 gloo ranks runs every check. Phase 1 at DP=2 (TP=1): an actor with the distributed optimizer and
one with the plain optimizer take 2 updates (4 optimizer steps, lr still in warmup) and are saved; fresh engines
load them and the next update must be bit-identical to the uninterrupted engine's; the same for a critic.
Phase 2 re-initialises megatron at TP=2 (DP=1, so the vocab is padded differently: 384 -> 512 rows) and loads the
DP=2 checkpoints: the next update must match the uninterrupted DP=2 run within 1e-6, while loading the weights alone
(fresh Adam moments and schedule) must not - which shows the optimizer state is what carries the match.
Switching between distributed and plain optimizer must fail with both layouts in the message. The distributed-
optimizer actor is saved and resumed (both layouts) through the trainer's CheckpointManager.
"""
from __future__ import annotations

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.dist.test_actor_critic_parity import make_hf_dir
from tests.dist.test_actor_single import _batch_with_old, _configs


def _actor(hf_dir, distributed: bool):
    from ttrl_megatron.config import OptimConfig
    from ttrl_megatron.megatron.actor import build_actor

    model_cfg, actor_cfg, rollout = _configs(hf_dir)
    # warmup over 6 updates: a fresh scheduler would give another lr than the restored one
    actor_cfg.optim = OptimConfig(lr=1e-3, weight_decay=0.1, eps=1e-3, betas=[0.9, 0.99], clip_grad=1.0,
                                  lr_warmup_steps=6)
    actor_cfg.megatron.use_distributed_optimizer = distributed
    return build_actor(model_cfg, actor_cfg, rollout)


def _critic(hf_dir):
    from ttrl_megatron.config import CriticConfig
    from ttrl_megatron.megatron.critic import build_critic

    cfg = CriticConfig(ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, use_dynamic_bsz=False,
                       ppo_epochs=1, shuffle=False, loss_agg_mode="token-mean")
    cfg.model.path = hf_dir
    cfg.megatron.use_distributed_optimizer = True
    return build_critic(cfg, 2, "float32")


def _hf_params(role) -> dict:
    """Full HF-named tensors (TP shards gathered), identical on every rank."""
    from ttrl_megatron.megatron.engine import unwrap
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    return {k: v.clone() for k, v in iter_hf_weights(unwrap(role.model[0]))}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _error(call) -> str:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _checks(hf_dir: str, root: str) -> dict:
    import os

    from megatron.core import parallel_state
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.engine_checkpoint import load_engine_checkpoint, save_engine_checkpoint
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.protocol import DataProto
    from ttrl_megatron.trainer.checkpointing import CheckpointManager, latest_checkpoint

    init_distributed(ParallelLayout(1, 1, 2), seed=1)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch_with_old(hf)
    data = lambda: DataProto(dict(batch))  # noqa: E731
    out, expected = {}, {}

    # phase 1 (DP=2): save after 2 updates, a fresh engine loads, next update bit-identical
    # the distributed-optimizer actor goes through the trainer's CheckpointManager (atomic step dir + tracker)
    manager = CheckpointManager(os.path.join(root, "trainer"), hf_source_dir=hf_dir, max_actor_keep=None,
                                max_critic_keep=None)
    paths = {"distopt": lambda: latest_checkpoint(manager.root) / "actor",
             "plain": lambda: os.path.join(root, "plain")}
    for name, distributed in (("distopt", True), ("plain", False)):
        a = _actor(hf_dir, distributed)
        a.update_policy(data())
        a.update_policy(data())
        b = _actor(hf_dir, distributed)
        if distributed:
            manager.save(2, {"actor": a}, {"sampler": None})
            out["extra"] = manager.load(latest_checkpoint(manager.root), {"actor": b})
        else:
            save_engine_checkpoint(a.engine, paths[name](), hf_source_dir=hf_dir)
            load_engine_checkpoint(b.engine, paths[name]())
        ma, mb = a.update_policy(data()), b.update_policy(data())
        expected[name] = (_hf_params(a), ma)
        out[f"same_layout_{name}"] = {"param_diff": _max_diff(_hf_params(a), _hf_params(b)),
                                      "lr": (ma["actor/lr"], mb["actor/lr"]),
                                      "loss": (ma["actor/loss"], mb["actor/loss"])}
    c1 = _critic(hf_dir)
    cb = dict(batch, values=c1.compute_values(data()), returns=batch["advantages"])
    c1.update_critic(DataProto(dict(cb)))
    save_engine_checkpoint(c1.engine, os.path.join(root, "critic"))
    c2 = _critic(hf_dir)
    load_engine_checkpoint(c2.engine, os.path.join(root, "critic"))
    m1, m2 = c1.update_critic(DataProto(dict(cb))), c2.update_critic(DataProto(dict(cb)))
    out["critic"] = {"param_diff": max(float((p - q).detach().abs().max()) for p, q in
                                       zip(c1.model[0].parameters(), c2.model[0].parameters())),
                     "loss": (m1["critic/vf_loss"], m2["critic/vf_loss"])}
    out["error_dp2"] = _error(lambda: load_engine_checkpoint(_actor(hf_dir, False).engine, paths["distopt"]()))

    # phase 2 (TP=2, DP=1): load the DP=2 checkpoints, the next update matches the uninterrupted DP=2 run
    del a, b, c1, c2
    parallel_state.destroy_model_parallel()  # keeps the default process group
    init_distributed(ParallelLayout(2, 1, 1), seed=1)
    for name, distributed in (("distopt", True), ("plain", False)):
        c = _actor(hf_dir, distributed)
        if distributed:  # the trainer's resume path at a new layout
            manager.load(latest_checkpoint(manager.root), {"actor": c})
        else:
            load_engine_checkpoint(c.engine, paths[name]())
        mc = c.update_policy(data())
        ref_params, ref_metrics = expected[name]
        out[f"tp2_{name}"] = {"param_diff": _max_diff(ref_params, _hf_params(c)),
                              "lr": (ref_metrics["actor/lr"], mc["actor/lr"]),
                              "loss": (ref_metrics["actor/loss"], mc["actor/loss"])}
    # control: the weights alone (fresh Adam moments, lr schedule from 0) give a different update
    w = _actor(hf_dir, True)
    load_engine_checkpoint(w.engine, paths["distopt"](), weights_only=True)
    w.update_policy(data())
    out["tp2_weights_only_diff"] = _max_diff(expected["distopt"][0], _hf_params(w))
    out["error_tp2"] = _error(lambda: load_engine_checkpoint(_actor(hf_dir, True).engine, paths["plain"]()))
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    hf_dir = make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_engine_ckpt"))
    root = tmp_path_factory.mktemp("engine_ckpts")
    return run_distributed(_checks, 2, hf_dir, str(root), timeout_s=240)


@pytest.mark.parametrize("name", ["distopt", "plain"])
def test_same_layout_resume_is_bit_identical(results, name):
    for rank_result in results:
        r = rank_result[f"same_layout_{name}"]
        assert r["param_diff"] == 0.0
        assert r["lr"][0] == r["lr"][1] > 0
        assert r["loss"][0] == r["loss"][1]


def test_trainer_manager_restores_extra_state(results):
    assert results[0]["extra"]["step"] == 2 and results[0]["extra"]["layout"]["dp"] == 2


def test_critic_resume_is_bit_identical(results):
    assert results[0]["critic"]["param_diff"] == 0.0
    assert results[0]["critic"]["loss"][0] == results[0]["critic"]["loss"][1]


@pytest.mark.parametrize("name", ["distopt", "plain"])
def test_dp2_checkpoint_resumes_at_tp2(results, name):
    r = results[0][f"tp2_{name}"]
    assert r["param_diff"] <= 1e-6
    assert r["lr"][0] == r["lr"][1]
    assert r["loss"][0] == pytest.approx(r["loss"][1], abs=1e-6)


def test_weights_alone_do_not_reproduce_the_update(results):
    assert results[0]["tp2_weights_only_diff"] > 1e-4  # so the 1e-6 match above is the optimizer state's doing


def test_switching_distributed_optimizer_names_both_layouts(results):
    dp2, tp2 = results[0]["error_dp2"], results[0]["error_tp2"]
    assert dp2.startswith("CheckpointMismatchError") and "distributed_optimizer=True" in dp2, dp2
    assert "tp=1 pp=1 dp=2" in dp2 and "distributed_optimizer=False" in dp2, dp2
    assert "distributed_optimizer=False at layout tp=1 pp=1 dp=2" in tp2, tp2
    assert "distributed_optimizer=True at layout tp=2 pp=1 dp=1" in tp2, tp2
