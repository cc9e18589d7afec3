"""The trainer's pure phases on hand-made batches, without processes: TTRL labelling + scores (labels.py), the
advantage phase wired at setup (estimator kwargs, grpo_nsr metrics), reward shaping with and without KL, balancing."""

import numpy as np
import pytest
import torch

from ttrl_megatron.algorithms import FixedKLController, compute_gae_advantage_return, compute_grpo_nsr_outcome_advantage
from ttrl_megatron.config import AlgorithmConfig, TTRLConfig, TTRLTrainerConfig
from ttrl_megatron.distributed import ParallelLayout
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.labels import RewardStep
from ttrl_megatron.trainer.trainer import TTRLTrainer
from ttrl_megatron.ttrl import MajorityRewardManager


def _vote_batch():
    """2 prompts x 4 votes, prompt-major; prompt 0 votes 3,3,5,none (label 3), prompt 1 votes 7,8,8,8 (label 8)."""
    answers = ["3", "3", "5", None, "7", "8", "8", "8"]
    texts = [f"so \\boxed{{{a}}}" if a else "no idea" for a in answers]
    mask = torch.tensor([[1, 1, 1, 0]] * 8)
    objects = {"response_text": texts, "uid": ["p0"] * 4 + ["p1"] * 4,
               "reward_model": [{"ground_truth": "3"}] * 4 + [{"ground_truth": "7"}] * 4,
               "extra_info": [{"index": 0}] * 4 + [{"index": 1}] * 4}
    return DataProto.from_dict({"response_mask": mask, "responses": torch.ones(8, 4, dtype=torch.long)}, objects)


def test_reward_step_votes_keeps_first_samples_and_places_scores():
    step = RewardStep(ttrl=TTRLConfig(enable=True, n_votes_per_prompt=4, n_samples_per_prompt=2), n_votes=4,
                      n_samples=2, manager=MajorityRewardManager(), grader=None, seed=0)
    kept, reward_metrics = step(_vote_batch(), step=1)
    assert reward_metrics == {}  # no reward errors
    metrics = step.step_metrics(kept)
    assert len(kept) == 4
    assert [rm["majority_gt"] for rm in kept.obj("reward_model")] == ["3", "3", "8", "8"]
    assert list(kept.obj("score")) == [1.0, 1.0, 0.0, 1.0]  # rows 0,1 of prompt 0 and rows 4,5 of prompt 1
    assert list(kept.obj("gt_score")) == [1.0, 1.0, 1.0, 0.0]
    assert kept.batch["token_level_scores"].tolist()[2:] == [[0, 0, 0.0, 0], [0, 0, 1.0, 0]]
    assert metrics["train/label_accuracy"] == 0.5  # prompt 0 right (3), prompt 1 wrong (8 vs 7)
    assert metrics["train/majority_ratio"] == pytest.approx((0.5 + 0.75) / 2)
    assert metrics["train/reward_accuracy"] == 0.5 and metrics["train/pass@2"] == 1.0


def _trainer(estimator: str) -> TTRLTrainer:
    trainer = TTRLTrainer(TTRLTrainerConfig(algorithm=AlgorithmConfig(adv_estimator=estimator)))
    trainer._setup_advantage()
    trainer.kl_ctrl = None
    return trainer


def _train_batch():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    scores = torch.zeros(4, 4)
    scores[0, 2], scores[2, 3] = 1.0, 1.0
    t = {"response_mask": mask, "token_level_scores": scores, "values": torch.randn(4, 4, generator=gen) * mask,
         "old_log_probs": -torch.rand(4, 4, generator=gen), "ref_log_prob": -torch.rand(4, 4, generator=gen),
         "attention_mask": torch.cat([torch.ones(4, 2, dtype=torch.long), mask], dim=1)}
    return DataProto.from_dict(t, {"uid": np.array(["a", "a", "b", "b"], dtype=object)})


def test_grpo_nsr_phase_matches_the_estimator_and_reports_metrics():
    trainer, batch = _trainer("grpo_nsr"), _train_batch()
    assert trainer.shape_rewards(batch) == {}
    assert batch.batch["token_level_rewards"] is batch.batch["token_level_scores"]
    metrics = trainer.advantages(batch)
    want, _ = compute_grpo_nsr_outcome_advantage(batch.batch["token_level_scores"], batch.batch["response_mask"],
                                                 np.array(["a", "a", "b", "b"], dtype=object),
                                                 token_level_scores=batch.batch["token_level_scores"])
    assert torch.equal(batch.batch["advantages"], want)
    assert metrics["training/grpo_nsr_pos_ratio"] == 0.5 and metrics["training/grpo_nsr_pos_weight"] == 0.1


def test_gae_phase_uses_values_and_kl_in_reward():
    trainer, batch = _trainer("gae"), _train_batch()
    trainer.kl_ctrl = FixedKLController(0.5)
    kl = trainer.shape_rewards(batch)
    assert kl["actor/reward_kl_penalty_coeff"] == 0.5
    assert not torch.equal(batch.batch["token_level_rewards"], batch.batch["token_level_scores"])
    assert trainer.advantages(batch) == {}
    adv, ret = compute_gae_advantage_return(batch.batch["token_level_rewards"], batch.batch["values"],
                                            batch.batch["response_mask"], 1.0, 1.0)
    assert torch.equal(batch.batch["advantages"], adv) and torch.equal(batch.batch["returns"], ret)


def test_balance_phase_is_a_permutation_within_mini_batches():
    trainer = TTRLTrainer(TTRLTrainerConfig())
    trainer.layout, trainer.n_samples = ParallelLayout(dp=2), 2
    trainer.cfg.actor_rollout_ref.actor.ppo_mini_batch_size = 1  # 2 rows per mini-batch
    batch = _train_batch()
    balanced, metrics = trainer.balance(batch)
    assert sorted(balanced.obj("uid")) == sorted(batch.obj("uid")) and "global_seqlen/balanced_max" in metrics
    trainer.cfg.trainer.balance_batch = False
    same, metrics = trainer.balance(batch)
    assert same is batch and "global_seqlen/balanced_max" not in metrics
