"""A user's module with verl-style functions (verl_recipe_example.py) reaches the trainer through
actor_rollout_ref.model.external_lib: validate imports it and checks the call shapes, the trainer imports it on
every rank and calls its estimator exactly like verl's compute_advantage. (The training run through torchrun is
tests/integration/test_verl_recipe_run.py.)"""

import json

import numpy as np
import pytest
import torch

from ttrl_megatron.algorithms import get_adv_estimator_fn, import_external_libs
from ttrl_megatron.config import AlgorithmConfig, ConfigError, TTRLTrainerConfig, compose, validate
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.trainer import TTRLTrainer

RECIPE = "tests.unit.algorithms.verl_recipe_example"
ARR = "actor_rollout_ref"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return compose([f"trainer.run_dir={run}"], config_name="examples/demo_cpu")


def test_validate_imports_external_lib_and_accepts_its_names(demo):
    cfg = compose([f"trainer.run_dir={demo.trainer.run_dir}", f"{ARR}.model.external_lib={RECIPE}",
                   "algorithm.adv_estimator=recipe_leave_one_out",
                   f"{ARR}.actor.policy_loss.loss_mode=recipe_clipped_pg"], config_name="examples/demo_cpu")
    validate(cfg, check_paths=False)
    assert get_adv_estimator_fn("recipe_leave_one_out").__module__ == RECIPE


def test_bad_external_lib_and_unknown_names_name_the_field(demo):
    cfg = compose([f"trainer.run_dir={demo.trainer.run_dir}", f"{ARR}.model.external_lib=no_such_module_xyz"],
                  config_name="examples/demo_cpu")
    with pytest.raises(ConfigError, match="actor_rollout_ref.model.external_lib.*no_such_module_xyz"):
        validate(cfg, check_paths=False)
    cfg = compose([f"trainer.run_dir={demo.trainer.run_dir}", "algorithm.adv_estimator=recipe_not_registered"],
                  config_name="examples/demo_cpu")
    with pytest.raises(ConfigError, match="algorithm.adv_estimator='recipe_not_registered'"):
        validate(cfg, check_paths=False)
    assert import_external_libs(f" {RECIPE} , {RECIPE}") == [RECIPE, RECIPE]  # comma-separated, idempotent


def test_trainer_calls_the_users_estimator_like_verl(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECIPE_CALL_LOG", str(log))
    cfg = TTRLTrainerConfig(algorithm=AlgorithmConfig(adv_estimator="recipe_leave_one_out", gamma=2.0))
    cfg.actor_rollout_ref.model.external_lib = RECIPE
    trainer = TTRLTrainer(cfg)
    trainer._setup_advantage()
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    scores = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.5]])
    batch = DataProto.from_dict({"token_level_rewards": scores, "token_level_scores": scores, "response_mask": mask},
                                {"uid": np.array(["a", "a", "b", "b"], dtype=object)})
    assert trainer.advantages(batch) == {}
    # leave-one-out per group, times config.gamma = 2: a: [1, -1], b: [0.5, -0.5]
    want = torch.tensor([[2.0, 2.0], [-2.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    torch.testing.assert_close(batch.batch["advantages"], want)
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    # verl's generic call: token_level_rewards, response_mask, config and index, nothing else
    assert call == {"kind": "adv", "keys": ["config", "epsilon", "index", "response_mask", "token_level_rewards"],
                    "gamma": 2.0}
