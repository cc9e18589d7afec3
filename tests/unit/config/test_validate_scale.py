"""validate() for dynamic sampling, TTRL consensus filtering, rollout correction and overlong shaping: every bad value
is rejected with a message naming the field; verl-style overrides compose (thresholds as numbers or strings)."""

import pytest

from tests.unit.config.conftest import with_changes
from ttrl_megatron.config import ConfigError, compose, validate

ARR = "actor_rollout_ref"
RC = "algorithm.rollout_correction"


CASES = {  # id: (field changes, text the message must contain)
    "filter_without_metric": ({"algorithm.filter_groups.enable": True}, "algorithm.filter_groups.metric"),
    "final_reward_with_kl": ({"algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric":
                              "seq_final_reward", "algorithm.use_kl_in_reward": True},
                             "metric=seq_final_reward with algorithm.use_kl_in_reward=True"),
    "inflight": ({"algorithm.filter_groups.max_inflight_gen_batches": 2}, "max_inflight_gen_batches=2"),
    "is_level": ({f"{RC}.rollout_is": "tokens"}, f"{RC}.rollout_is='tokens'"),
    "is_threshold": ({f"{RC}.rollout_is": "token", f"{RC}.rollout_is_threshold": -1.0}, f"{RC}.rollout_is_threshold"),
    "icepop_order": ({f"{RC}.rollout_is": "sequence", f"{RC}.rollout_is_threshold": "5_0.5"}, "lower bound exceeds"),
    "rs_option": ({f"{RC}.rollout_rs": "token_k9", f"{RC}.rollout_rs_threshold": 2.0}, f"{RC}.rollout_rs"),
    "rs_threshold_missing": ({f"{RC}.rollout_rs": "seq_sum_k3"}, f"{RC}.rollout_rs_threshold must be set"),
    "bypass": ({f"{RC}.bypass_mode": True}, f"{RC}.bypass_mode=True is not supported"),
    "loss_type": ({f"{RC}.loss_type": "ppo"}, f"{RC}.loss_type='ppo'"),
    "overlong_len": ({"reward_model.overlong_buffer.enable": True, "reward_model.overlong_buffer.len": 99},
                     "reward_model.overlong_buffer.len=99 must be in [1, data.max_response_length=14]"),
    "overlong_factor": ({"reward_model.overlong_buffer.penalty_factor": -0.5},
                        "reward_model.overlong_buffer.penalty_factor=-0.5"),
    "majority_ratio_range": ({"ttrl.min_majority_ratio": 1.5}, "ttrl.min_majority_ratio=1.5 must be in [0, 1]"),
    "consensus_needs_ttrl": ({"ttrl.enable": False, "ttrl.skip_no_answer": True,
                              "reward_model.reward_manager": "rule"}, "ttrl.skip_no_answer filter prompts"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_names_the_field(base, case):
    changes, text = CASES[case]
    with pytest.raises(ConfigError) as err:
        validate(with_changes(base, changes))
    assert text in str(err.value), str(err.value)


def test_valid_settings_pass(base):
    validate(with_changes(base, {"algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric": "acc",
                          "algorithm.filter_groups.max_num_gen_batches": 4, f"{RC}.rollout_is": "sequence",
                          f"{RC}.rollout_is_threshold": "0.5_5.0", f"{RC}.rollout_rs": "token_k1,seq_mean_k3",
                          f"{RC}.rollout_rs_threshold": "0.5_2.0,0.1", "reward_model.overlong_buffer.enable": True,
                          "reward_model.overlong_buffer.len": 4, "ttrl.min_majority_ratio": 0.3,
                          "ttrl.skip_no_answer": True, f"{ARR}.actor.mask_truncated_responses": True}))


def test_verl_overrides_compose(tmp_path):
    cfg = compose([f"trainer.run_dir={tmp_path}", "algorithm.filter_groups.enable=true",
                   "algorithm.filter_groups.metric=acc", "algorithm.filter_groups.max_num_gen_batches=10",
                   f"{RC}.rollout_is=token", f"{RC}.rollout_is_threshold=2.0", f"{RC}.rollout_rs=seq_mean_k3",
                   f"{RC}.rollout_rs_threshold='0.5_2.0'", "reward_model.overlong_buffer.enable=true",
                   "reward_model.overlong_buffer.len=4", "reward_model.overlong_buffer.penalty_factor=1.0",
                   "reward_model.overlong_buffer.log=true", f"{ARR}.actor.mask_truncated_responses=true",
                   "ttrl.min_majority_ratio=0.5", "ttrl.skip_no_answer=true"], config_name="examples/demo_cpu")
    fg, rc = cfg.algorithm.filter_groups, cfg.algorithm.rollout_correction
    assert (fg.enable, fg.metric, fg.max_num_gen_batches) == (True, "acc", 10)
    assert (rc.rollout_is, rc.rollout_is_threshold, rc.rollout_rs_threshold) == ("token", 2.0, "0.5_2.0")
    assert cfg.reward_model.overlong_buffer.len == 4 and cfg.ttrl.min_majority_ratio == 0.5
