"""The step's batch collection (trainer/dynamic_sampling.py) with the real RewardStep (majority vote, majority
reward) on scripted rollout batches: DAPO dynamic sampling over several prompt batches, the trim to
train_batch_size, padding to whole mini-batches when the generation limit is hit, the empty step, the TTRL consensus
filter with label accuracy of kept vs dropped prompts, and the unchanged plain path."""

import pytest
import torch

from ttrl_megatron.config import TTRLConfig
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.dynamic_sampling import (FilterSettings, StepBatchCollector, metric_values, real_rows,
                                                    relabel_groups)
from ttrl_megatron.trainer.labels import RewardStep
from ttrl_megatron.trainer.metrics import PhaseTimer
from ttrl_megatron.ttrl import MajorityRewardManager

N_VOTES, N_SAMPLES = 4, 2


def _rollouts(prompts: dict, step: int, gen_index: int) -> DataProto:
    """A rollout batch as generate() returns it: ``prompts`` = {"votes": [[answer or None] x 4 per prompt],
    "truth": [dataset label per prompt], "name": [prompt name]}; 3-token responses, the first vote truncated."""
    rows = [(p, a) for p, votes in enumerate(prompts["votes"]) for a in votes]
    objects = {
        "response_text": [f"\\boxed{{{a}}}" if a is not None else "no idea" for _, a in rows],
        "uid": [f"{step}:{p}" for p, _ in rows],
        "reward_model": [{"ground_truth": prompts["truth"][p]} for p, _ in rows],
        "extra_info": [{"index": prompts["name"][p]} for p, _ in rows],
        "finish_reason": ["length" if i % N_VOTES == 0 else "stop" for i in range(len(rows))],
    }
    n = len(rows)
    batch = DataProto.from_dict({"response_mask": torch.tensor([[1, 1, 1]] * n),
                                 "responses": torch.arange(n * 3).reshape(n, 3)}, objects)
    if gen_index:
        relabel_groups(batch, step, gen_index, N_VOTES)
    return batch


def _collector(batches: list[dict], **settings):
    reward = RewardStep(ttrl=TTRLConfig(enable=True, n_votes_per_prompt=N_VOTES, n_samples_per_prompt=N_SAMPLES),
                        n_votes=N_VOTES, n_samples=N_SAMPLES, manager=MajorityRewardManager(), grader=None, seed=0)
    queue, calls = list(batches[1:]), []

    def generate(prompts, step, gen_index):
        calls.append(gen_index)
        return _rollouts(prompts, step, gen_index)

    collector = StepBatchCollector(FilterSettings(rows_per_prompt=N_SAMPLES, **settings), generate=generate,
                                   reward=reward, next_prompts=lambda: queue.pop(0))
    return collector, batches[0], calls


# Kept rows are the first 2 votes of each prompt; the majority reward is 1 where they agree with the label.
A = ([3, 3, 3, 3], "3")     # label 3, kept 3,3 -> scores 1,1: no signal
B = ([5, 6, 5, 5], "6")     # label 5 (wrong), kept 5,6 -> 1,0
C = ([7, 8, 7, 7], "7")     # label 7, kept 7,8 -> 1,0
D = ([1, 2, 1, 2], "1")     # tie -> earliest, label 1, kept 1,2 -> 1,0
E = ([None] * 4, "4")       # no answer: no label, ratio 0, scores 0,0
F = ([7, 8, 7, 9], "9")     # label 7 (wrong), ratio 0.5, kept 7,8 -> 1,0


def _batch(*prompts):
    return {"votes": [p[0] for p in prompts], "truth": [p[1] for p in prompts],
            "name": [f"q{i}" for i in range(len(prompts))]}


def test_dynamic_sampling_fills_the_batch_from_further_prompt_batches_and_trims():
    collector, first, calls = _collector([_batch(A, B), _batch(C, D)], dynamic=True, metric="acc",
                                         max_num_gen_batches=0, train_batch_size=2, unit=1)
    timer = PhaseTimer()
    batch, m = collector(first, step=3, timer=timer)
    assert calls == [0, 1] and {"gen", "reward"} <= set(timer.seconds)
    # A is dropped (no signal); B, C, D are kept; the batch is trimmed to the first 2 kept prompts (B, then C)
    assert list(batch.obj("uid")) == ["3:1", "3:1", "3:1:0", "3:1:0"]
    assert list(batch.obj("padding")) == [False] * 4
    assert batch.batch["token_level_scores"].sum(-1).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert m["filter/num_gen_batches"] == 2 == m["train/num_gen_batches"]
    assert (m["filter/prompts_generated"], m["filter/prompts_dropped_no_signal"], m["filter/prompts_kept"],
            m["filter/prompts_trained"], m["filter/prompts_padding"], m["filter/batch_full"]) == (4, 1, 3, 2, 0, 1)
    assert m["filter/zero_adv_share_unfiltered"] == 0.5  # A's rows in the first batch (A, B)
    assert m["filter/zero_adv_share"] == 0.0
    # train/* over all 4 generated prompts, before filtering: labels 3 (right), 5 (wrong), 7 (right), 1 (right)
    assert m["train/label_accuracy"] == 0.75
    assert m["train/majority_ratio"] == pytest.approx((1 + 0.75 + 0.75 + 0.5) / 4)


def test_limit_reached_pads_to_whole_mini_batches_with_masked_prompts():
    collector, first, calls = _collector([_batch(A, B), _batch(C, D)], dynamic=True, metric="seq_reward",
                                         max_num_gen_batches=1, train_batch_size=2, unit=2)
    batch, m = collector(first, step=1, timer=PhaseTimer())
    assert calls == [0]
    # one kept prompt (B) + one padding prompt (A, dropped) so the mini-batch of 2 prompts is whole
    assert list(batch.obj("uid")) == ["1:1", "1:1", "1:0", "1:0"]
    assert list(batch.obj("padding")) == [False, False, True, True]
    assert batch.batch["response_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert (m["filter/prompts_trained"], m["filter/prompts_padding"], m["filter/batch_full"]) == (1, 1, 0)
    assert list(real_rows(batch).obj("uid")) == ["1:1", "1:1"]


def test_nothing_kept_gives_no_batch():
    collector, first, _ = _collector([_batch(A, E)], dynamic=True, metric="acc", max_num_gen_batches=1,
                                     train_batch_size=2, unit=1)
    batch, m = collector(first, step=1, timer=PhaseTimer())
    assert batch is None
    assert m["filter/prompts_trained"] == 0 and m["filter/prompts_dropped_no_signal"] == 2
    assert "filter/zero_adv_share" not in m and m["filter/zero_adv_share_unfiltered"] == 1.0


def test_consensus_filter_drops_low_agreement_and_unlabelled_prompts():
    collector, first, calls = _collector([_batch(A, B, F, E)], min_majority_ratio=0.6, skip_no_answer=True,
                                         train_batch_size=4, unit=2)
    batch, m = collector(first, step=1, timer=PhaseTimer())
    assert calls == [0]  # no dynamic sampling: one prompt batch
    assert list(real_rows(batch).obj("uid")) == ["1:0", "1:0", "1:1", "1:1"]  # A (ratio 1) and B (0.75)
    assert (m["filter/prompts_dropped_consensus"], m["filter/prompts_trained"], m["filter/prompts_padding"]) == (2, 2, 0)
    assert m["train/consensus_kept_ratio"] == 0.5
    assert m["train/label_accuracy_consensus_kept"] == 0.5  # A right, B wrong
    assert m["train/label_accuracy_consensus_dropped"] == 0.0  # F wrong, E has no label
    assert m["train/label_accuracy"] == 0.25


def test_without_filters_the_first_batch_is_trained_whole():
    collector, first, calls = _collector([_batch(A, B)], train_batch_size=2, unit=1)
    batch, m = collector(first, step=1, timer=PhaseTimer())
    direct, _ = collector.reward(_rollouts(first, 1, 0), 1, 0)
    assert calls == [0] and "padding" not in batch.non_tensor_batch
    assert torch.equal(batch.batch["token_level_scores"], direct.batch["token_level_scores"])
    assert list(batch.obj("uid")) == list(direct.obj("uid"))
    assert m == collector.reward.step_metrics(direct) and not any(k.startswith("filter/") for k in m)


def test_unknown_metric_names_the_field():
    collector, first, _ = _collector([_batch(A, B)], dynamic=True, metric="nope", train_batch_size=2, unit=1)
    with pytest.raises(ValueError, match="algorithm.filter_groups.metric='nope'"):
        collector(first, step=1, timer=PhaseTimer())
    batch, _ = collector.reward(_rollouts(_batch(B), 1, 0), 1, 0)
    assert metric_values(batch, "seq_reward") == [1.0, 0.0] == metric_values(batch, "seq_final_reward")
    assert metric_values(batch, "acc") == [True, False] and metric_values(batch, "score") == [1.0, 0.0]
