"""Batch assembly (verl layout) and DP token balancing: pure functions, no processes."""

import torch

from ttrl_megatron.rollout.base import RolloutOutput
from ttrl_megatron.trainer.assemble import assemble_batch, merge_rollouts, prompt_uids, split_evenly
from ttrl_megatron.trainer.balance import balance_permutation, equal_size_partitions, seqlen_metrics

PAD = 0


def _prompts():
    # two prompts left-padded to P=4: [_, _, 5, 6] and [_, 7, 8, 9]
    return {"input_ids": torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]),
            "attention_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
            "position_ids": torch.tensor([[0, 0, 0, 1], [0, 0, 1, 2]]),
            "raw_prompt_ids": [[5, 6], [7, 8, 9]], "raw_prompt": ["a", "b"], "ground_truth": ["1", "2"],
            "reward_model": [{"ground_truth": "1"}, {"ground_truth": "2"}], "data_source": ["d", "d"]}


def _rollout():
    return RolloutOutput(n=2, response_ids=[[11, 12, 1], [13], [14, 15], [16, 17, 18]],
                         logprobs=[[-0.1, -0.2, -0.3], [-0.4], [-0.5, -0.6], [-0.7, -0.8, -0.9]],
                         finish_reasons=["stop", "stop", "length", "length"])


def test_assemble_layout_masks_positions_and_objects():
    batch = assemble_batch(_prompts(), _rollout(), uids=prompt_uids(3, 2), pad_token_id=PAD, response_length=4,
                           decode=lambda ids: ",".join(map(str, ids)))
    t = batch.batch
    assert len(batch) == 4
    assert t["responses"].tolist() == [[11, 12, 1, 0], [13, 0, 0, 0], [14, 15, 0, 0], [16, 17, 18, 0]]
    assert t["response_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert t["input_ids"][0].tolist() == [0, 0, 5, 6, 11, 12, 1, 0]
    assert t["attention_mask"][3].tolist() == [0, 1, 1, 1, 1, 1, 1, 0]
    # HF positions: 0 at the first real token, continuing through the response
    assert t["position_ids"][0].tolist()[2:7] == [0, 1, 2, 3, 4]
    assert torch.equal(t["rollout_log_probs"][1], torch.tensor([-0.4, 0.0, 0.0, 0.0]))
    assert list(batch.obj("uid")) == ["3:0", "3:0", "3:1", "3:1"]
    assert list(batch.obj("response_text"))[0] == "11,12,1"
    assert "raw_prompt_ids" not in batch.non_tensor_batch
    rms = batch.obj("reward_model")
    rms[0]["ground_truth"] = "changed"  # rows own their dicts: no leak into the other copy
    assert rms[1]["ground_truth"] == "1"


def test_split_evenly_and_merge_keep_prompt_major_order():
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 2) == [(0, 1), (1, 1)]
    empty = RolloutOutput(2, [], [], [])
    a = RolloutOutput(2, [[1], [2]], [[-1.0], [-2.0]], ["stop", "stop"])
    b = RolloutOutput(2, [[3], [4]], [[-3.0], [-4.0]], ["length", "stop"])
    merged = merge_rollouts([a, empty, b])
    assert merged.response_ids == [[1], [2], [3], [4]] and merged.num_prompts == 2


def test_partitions_are_equal_sized_and_balanced():
    lengths = [10, 1, 9, 2, 8, 3, 7, 4]
    groups = equal_size_partitions(lengths, 2)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert all(len(g) == 4 for g in groups)
    sums = [sum(lengths[i] for i in g) for g in groups]
    assert max(sums) - min(sums) <= 2


def test_balance_permutation_stays_inside_each_mini_batch():
    lengths = torch.tensor([9, 9, 1, 1, 5, 5, 5, 5])
    perm = balance_permutation(lengths, dp_size=2, mini_batch_rows=4)
    assert sorted(perm[:4].tolist()) == [0, 1, 2, 3] and sorted(perm[4:].tolist()) == [4, 5, 6, 7]
    per_rank = lengths[perm].reshape(2, 2, 2).sum(dim=(0, 2))  # [mini-batch, rank, rows]
    assert per_rank.tolist() == [20, 20]
    m = seqlen_metrics(lengths, 2, perm, 4)
    assert m["global_seqlen/minmax_diff"] == 16.0 and m["global_seqlen/balanced_max"] == 20.0


def test_balance_rejects_sizes_that_do_not_divide():
    import pytest

    with pytest.raises(ValueError, match="do not divide"):
        balance_permutation(torch.ones(6), dp_size=4, mini_batch_rows=6)
