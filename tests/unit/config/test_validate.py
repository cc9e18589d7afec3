"""validate(): every cross-field rule rejects a bad config with a message naming the field and the fix.

The base is the demo config (2 CPU processes) composed once; each case changes fields on a deep copy (composing ~0.2 s
per case would make this file slow; composition itself is covered by test_compose.py).
"""

import pytest

from tests.unit.config.conftest import with_changes
from ttrl_megatron.config import ConfigError, validate

ARR = "actor_rollout_ref"


CASES = {  # id: (field changes, world_size or None, text the message must contain)
    "world_not_divisible_by_tp_pp": ({f"{ARR}.actor.megatron.tensor_model_parallel_size": 3}, None,
                                     "not divisible by tensor_model_parallel_size x pipeline"),
    "launched_world_differs_from_nodes_x_gpus": ({}, 4, "trainer.nnodes x trainer.n_gpus_per_node"),
    "ref_tp_differs_from_actor": ({f"{ARR}.ref.megatron.tensor_model_parallel_size": 2}, None,
                                  f"{ARR}.ref.megatron.tensor_model_parallel_size=2 differs"),
    "rollout_tp_does_not_divide_world": ({f"{ARR}.rollout.tensor_model_parallel_size": 3}, None,
                                         f"{ARR}.rollout.tensor_model_parallel_size=3 must divide"),
    "train_batch_not_multiple_of_mini": ({f"{ARR}.actor.ppo_mini_batch_size": 5}, None,
                                         f"must be a multiple of {ARR}.actor.ppo_mini_batch_size=5"),
    "rows_not_divisible_by_dp": ({"trainer.n_gpus_per_node": 3}, None, "divisible by the data-parallel size 3"),
    "micro_does_not_divide_mini": ({f"{ARR}.actor.ppo_micro_batch_size_per_gpu": 3,
                                    f"{ARR}.actor.use_dynamic_bsz": False}, None,
                                   f"{ARR}.actor.ppo_micro_batch_size_per_gpu=3 must divide the per-rank mini-batch"),
    "micro_not_set": ({f"{ARR}.actor.ppo_micro_batch_size_per_gpu": None, f"{ARR}.actor.use_dynamic_bsz": False},
                      None, f"{ARR}.actor.ppo_micro_batch_size_per_gpu is not set"),
    "critic_batches_checked_when_enabled": ({"critic.enable": True, "critic.ppo_micro_batch_size_per_gpu": 3,
                                             "critic.use_dynamic_bsz": False}, None,
                                            "critic.ppo_micro_batch_size_per_gpu=3 must divide"),
    "samples_exceed_votes": ({"ttrl.n_samples_per_prompt": 32, f"{ARR}.rollout.n": 32}, None,
                             "ttrl.n_samples_per_prompt=32 exceeds ttrl.n_votes_per_prompt=16"),
    "rollout_n_differs_from_samples": ({f"{ARR}.rollout.n": 4}, None,
                                       f"{ARR}.rollout.n=4 must equal ttrl.n_samples_per_prompt=8"),
    "unknown_estimator": ({"algorithm.adv_estimator": "ppo"}, None, "algorithm.adv_estimator='ppo' is not a valid"),
    "unknown_loss_mode": ({f"{ARR}.actor.policy_loss.loss_mode": "nope"}, None,
                          f"{ARR}.actor.policy_loss.loss_mode='nope' is not a valid name; use one of"),
    "gae_without_critic": ({"algorithm.adv_estimator": "gae", "critic.enable": False}, None,
                           "algorithm.adv_estimator=gae needs a critic"),
    "group_estimator_with_one_rollout": ({"ttrl.enable": False, "reward_model.reward_manager": "rule",
                                          f"{ARR}.rollout.n": 1, f"{ARR}.actor.ppo_micro_batch_size_per_gpu": 16}, None,
                                         f"needs {ARR}.rollout.n >= 2"),
    "remax_needs_sampling": ({"algorithm.adv_estimator": "remax", f"{ARR}.rollout.temperature": 0.0}, None,
                             "algorithm.adv_estimator=remax"),
    "remax_has_no_greedy_baselines": ({"algorithm.adv_estimator": "remax"}, None,
                                      "algorithm.adv_estimator=remax needs reward_baselines"),
    "otb_needs_sum_pi_squared": ({"algorithm.adv_estimator": "optimal_token_baseline"}, None,
                                 f"needs sum_pi_squared per token from the actor: set {ARR}.actor.calculate_sum"),
    "sum_pi_squared_not_computed_yet": ({f"{ARR}.actor.calculate_sum_pi_squared": True}, None,
                                        f"{ARR}.actor.calculate_sum_pi_squared=True: the Megatron actor does not"),
    "sapo_temperatures_positive": ({f"{ARR}.actor.tau_neg": 0.0}, None, f"{ARR}.actor.tau_pos=1.0 and tau_neg=0.0"),
    "bad_kl_loss_type": ({f"{ARR}.actor.kl_loss_type": "k5"}, None, f"{ARR}.actor.kl_loss_type='k5'"),
    "bad_kl_penalty": ({"algorithm.kl_penalty": "full"}, None, "algorithm.kl_penalty='full'"),
    "bad_loss_agg_mode": ({f"{ARR}.actor.loss_agg_mode": "mean"}, None, f"{ARR}.actor.loss_agg_mode='mean'"),
    "adaptive_kl_needs_horizon": ({"algorithm.kl_ctrl.type": "adaptive", "algorithm.kl_ctrl.horizon": 0}, None,
                                  "algorithm.kl_ctrl.horizon"),
    "negative_nsr_weight": ({"algorithm.grpo_nsr.positive_weight": -0.1}, None, "algorithm.grpo_nsr.positive_weight"),
    "missing_train_file": ({"data.train_files": ["/nonexistent/x.parquet"]}, None,
                           "data.train_files[0]='/nonexistent/x.parquet' does not exist"),
    "no_train_files": ({"data.train_files": []}, None, "data.train_files is empty"),
    "missing_model_dir": ({f"{ARR}.model.path": "/nonexistent/model", "data.tokenizer": "/nonexistent/model"}, None,
                          f"{ARR}.model.path='/nonexistent/model' is not an existing directory"),
    "missing_reward_file": ({"custom_reward_function.path": "/nonexistent/r.py"}, None, "custom_reward_function.path"),
    "lengths_exceed_max_model_len": ({f"{ARR}.rollout.max_model_len": 16}, None,
                                     f"exceeds {ARR}.rollout.max_model_len=16"),
    "offload_on_cpu": ({f"{ARR}.ref.megatron.param_offload": True}, None,
                       f"{ARR}.ref.megatron.param_offload=True (or its fsdp_config alias)"),
    "fsdp_size_has_no_meaning": ({f"{ARR}.actor.fsdp_config.fsdp_size": 4}, None, "fsdp_config.fsdp_size=4"),
    "fsdp_offload_policy_rejected": ({f"{ARR}.ref.fsdp_config.offload_policy": True}, None,
                                     f"{ARR}.ref.fsdp_config.offload_policy=True"),
    "grad_clip_conflicts_with_optim": ({f"{ARR}.actor.grad_clip": 0.5}, None, f"{ARR}.actor.grad_clip=0.5"),
    "majority_reward_without_ttrl": ({"ttrl.enable": False}, None, "reward_manager=majority needs ttrl.enable"),
    "rule_reward_with_ttrl": ({"reward_model.reward_manager": "rule"}, None, "reward_model.reward_manager=rule"),
    "custom_reward_needs_path": ({"reward_model.reward_manager": "custom"}, None, "custom_reward_function.path"),
    "reward_model_not_supported": ({"reward_model.enable": True}, None, "reward_model.enable=True"),
    "resume_path_needs_path": ({"trainer.resume_mode": "resume_path"}, None, "trainer.resume_from_path"),
    "bad_logger": ({"trainer.logger": ["console", "mlflow"]}, None, "trainer.logger[1]='mlflow'"),
    "bad_truncation": ({"data.truncation": "middle"}, None, "data.truncation='middle'"),
    "bad_load_format": ({f"{ARR}.model.load_format": "gguf"}, None, f"{ARR}.model.load_format='gguf'"),
    "fsdp_strategy_rejected": ({f"{ARR}.actor.strategy": "fsdp"}, None, f"{ARR}.actor.strategy='fsdp'"),
    "clip_ratio_c_not_above_one": ({f"{ARR}.actor.clip_ratio_c": 1.0}, None, f"{ARR}.actor.clip_ratio_c=1.0"),
    "top_p_out_of_range": ({f"{ARR}.rollout.top_p": 0.0}, None, f"{ARR}.rollout.top_p=0.0 must be in (0, 1]"),
    "rollout_sleep_level": ({f"{ARR}.rollout.sleep_level": 3}, None, f"{ARR}.rollout.sleep_level=3 must be 1 or 2"),
    "rollout_tp_across_nodes": ({"trainer.device": "cuda", "trainer.nnodes": 2, "trainer.n_gpus_per_node": 1,
                                 f"{ARR}.rollout.tensor_model_parallel_size": 2}, 2,
                                f"{ARR}.rollout.tensor_model_parallel_size=2 must divide trainer.n_gpus_per_node=1"),
    "float16_on_cpu": ({f"{ARR}.rollout.dtype": "float16"}, None, "float16 is not supported"),
    "rope_fusion_needs_te": ({f"{ARR}.actor.megatron.override_transformer_config.apply_rope_fusion": True}, None,
                             f"{ARR}.actor.megatron.override_transformer_config.apply_rope_fusion=True needs "
                             "Transformer Engine"),
    "softmax_fusion_needs_cuda_kernel": ({f"{ARR}.actor.megatron.override_transformer_config.masked_softmax_fusion":
                                          True}, None, "override_transformer_config.masked_softmax_fusion=True needs"),
    "grad_accum_fusion_needs_apex": ({f"{ARR}.actor.megatron.override_transformer_config."
                                      "gradient_accumulation_fusion": True}, None,
                                     "gradient_accumulation_fusion=True needs Apex"),
    "sequence_parallel_needs_te_and_tp": ({f"{ARR}.actor.megatron.sequence_parallel": True}, None,
                                          f"{ARR}.actor.megatron.sequence_parallel=True needs "
                                          "tensor_model_parallel_size > 1"),
    "param_gather_overlap_needs_distopt": ({f"{ARR}.actor.megatron.override_ddp_config.overlap_param_gather": True},
                                           None, "overlap_param_gather=True needs "
                                           f"{ARR}.actor.megatron.use_distributed_optimizer=True"),
    "bad_recompute_granularity": ({f"{ARR}.actor.megatron.override_transformer_config.recompute_granularity":
                                   "some"}, None, "recompute_granularity='some'"),
    "logprob_chunk_size_positive": ({f"{ARR}.model.logprob_chunk_size": 0}, None,
                                    f"{ARR}.model.logprob_chunk_size=0 must be a positive int"),
    "dynamic_bsz_token_budget_below_one_sequence": ({f"{ARR}.actor.use_dynamic_bsz": True,
                                                     f"{ARR}.actor.ppo_max_token_len_per_gpu": 10}, None,
                                                    f"{ARR}.actor.ppo_max_token_len_per_gpu=10 is below one full"),
    "collective_timeout_not_positive": ({"trainer.collective_timeout_s": 0}, None,
                                        "trainer.collective_timeout_s=0 must be > 0"),
    "preempt_signal_uncatchable": ({"trainer.preempt_signals": ["SIGUSR1", "SIGKILL"]}, None,
                                   "trainer.preempt_signals[1]='SIGKILL' is not a signal a run can stop on"),
    "preempt_signal_unknown": ({"trainer.preempt_signals": ["USR1"]}, None, "trainer.preempt_signals[0]='USR1'"),
    "watchdog_budget_not_below_collective_timeout": ({"trainer.watchdog.generation_s": 1800.0}, None,
                                                     "trainer.watchdog.generation_s=1800.0 is not below "
                                                     "trainer.collective_timeout_s=1800.0"),
    "watchdog_budget_not_above_poll": ({"trainer.watchdog.sync_s": 0.5}, None,
                                       "trainer.watchdog.sync_s=0.5 must be > trainer.watchdog.poll_s=1.0"),
    "watchdog_poll_not_positive": ({"trainer.watchdog.poll_s": 0}, None, "trainer.watchdog.poll_s=0 must be > 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_names_the_field(base, case):
    changes, world_size, expected = CASES[case]
    with pytest.raises(ConfigError) as err:
        validate(with_changes(base, changes), world_size=world_size)
    assert expected in str(err.value), str(err.value)


def test_all_problems_are_reported_together(base):
    bad = with_changes(base, {"algorithm.adv_estimator": "ppo", "data.truncation": "middle"})
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert len(err.value.problems) == 2 and "2 problems" in str(err.value)


def test_check_paths_false_skips_only_the_paths(base):
    cfg = with_changes(base, {"data.train_files": ["/nonexistent/x.parquet"]})
    validate(cfg, check_paths=False)
    with pytest.raises(ConfigError, match="algorithm.adv_estimator"):
        validate(with_changes(cfg, {"algorithm.adv_estimator": "ppo"}), check_paths=False)


def test_verl_names_added_with_the_drop_in_are_valid(base):
    validate(with_changes(base, {f"{ARR}.actor.kl_loss_type": "low_var_kl+", f"{ARR}.actor.loss_agg_mode": "token-sum",
                          f"{ARR}.actor.policy_loss.loss_mode": "sapo", "algorithm.adv_estimator": "rloo_vectorized"}))


def test_offload_is_fine_on_gpu(base):
    validate(with_changes(base, {"trainer.device": "cuda", f"{ARR}.ref.megatron.param_offload": True}))


def test_estimator_names_come_from_the_registry():
    from ttrl_megatron.config import adv_estimator_names, policy_loss_names

    for name in ("gae", "grpo", "grpo_nsr", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax",
                 "opo", "gpg", "grpo_passk", "psr_nsr"):
        assert name in adv_estimator_names()
    for name in ("vanilla", "gspo", "clip_cov", "kl_cov", "gpg", "sapo", "geo_mean", "cispo"):
        assert name in policy_loss_names()


def test_watchdog_budgets_may_be_off_or_the_watchdog_disabled(base):
    validate(with_changes(base, {"trainer.watchdog.generation_s": None, "trainer.watchdog.step_s": 99999.0}))
    validate(with_changes(base, {"trainer.watchdog.enable": False, "trainer.watchdog.update_s": 99999.0}))
    validate(with_changes(base, {"trainer.preempt_signals": []}))
