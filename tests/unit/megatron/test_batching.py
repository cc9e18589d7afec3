"""Mini-batch / micro-batch splitting and padding trimming (ttrl_megatron.megatron.batching; pure torch)."""
import pytest
import torch

from ttrl_megatron.megatron import batching

P, R = 5, 4


def _batch(prompt_lens, response_lens):
    b = len(prompt_lens)
    mask = torch.zeros(b, P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        mask[i, P - p: P + r] = 1
    ids = (torch.arange(b * (P + R)).reshape(b, P + R) + 1) * mask
    return {"input_ids": ids, "attention_mask": mask, "responses": ids[:, P:], "response_mask": mask[:, P:],
            "advantages": torch.randn(b, R)}


def test_mini_batches_are_the_same_rows_for_any_dp_size():
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    single = batching.mini_batch_rows(12, 6, 0, 1, order)
    parts = [batching.mini_batch_rows(12, 6, r, 3, order) for r in range(3)]
    assert len(single) == 2
    for k in range(2):
        assert torch.equal(torch.cat([p[k] for p in parts]), single[k])


@pytest.mark.parametrize("rows, mini, dp, word", [(10, 4, 1, "ppo_mini_batch_size"), (8, 4, 3, "data-parallel")])
def test_mini_batch_sizes_must_divide(rows, mini, dp, word):
    with pytest.raises(ValueError, match=word):
        batching.mini_batch_rows(rows, mini, 0, dp)


def test_split_fixed_keeps_order_and_last_short():
    parts = batching.split_fixed(torch.arange(5), 2)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4]]


LENGTHS = torch.tensor([9, 2, 3, 8, 5, 5, 5])  # real tokens per row


@pytest.mark.parametrize("packed", [True, False])
def test_token_budget_bounds_processed_tokens_and_covers_every_row(packed):
    budget = 12
    parts = batching.split_by_token_budget(torch.arange(7), LENGTHS, budget, packed=packed)
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    for part in parts:
        assert batching.layout_tokens(LENGTHS[part], packed) <= budget
        assert part.tolist() == sorted(part.tolist())
    # a looser budget never needs more micro-batches
    assert len(batching.split_by_token_budget(torch.arange(7), LENGTHS, 100, packed=packed)) == 1


def test_packed_budget_counts_real_tokens_and_balances():
    # 37 real tokens: 4 micro-batches of <= 12 packed tokens, balanced (LPT greedy); padded rows would need more
    parts = batching.split_by_token_budget(torch.arange(7), LENGTHS, 12, packed=True)
    loads = sorted(int(LENGTHS[p].sum()) for p in parts)
    assert len(parts) == 4 and loads[-1] - loads[0] <= 3, loads
    assert len(batching.split_by_token_budget(torch.arange(7), LENGTHS, 12, packed=False)) > 4


def test_layout_tokens_and_alignment():
    lens = torch.tensor([3, 5])
    assert batching.layout_tokens(lens, True) == 8 and batching.layout_tokens(lens, False) == 10
    assert batching.layout_tokens(lens, True, align=4) == 12 and batching.layout_tokens(lens, False, align=4) == 16


@pytest.mark.parametrize("packed", [True, False])
def test_every_dp_rank_gets_the_same_micro_batch_count(packed):
    lengths = torch.tensor([9, 9, 9, 9, 1, 1, 1, 1])  # rank 0 holds the long rows
    shares = [torch.arange(0, 4), torch.arange(4, 8)]
    plans = [batching.plan_token_budget(shares, lengths, r, 10, packed=packed) for r in range(2)]
    assert len(plans[0]) == len(plans[1]) == 4
    for r, plan in enumerate(plans):
        assert sorted(torch.cat(plan).tolist()) == [0, 1, 2, 3]  # positions within the share
        for part in plan:
            assert batching.layout_tokens(lengths[shares[r][part]], packed) <= 10


def test_token_budget_smaller_than_one_sequence_is_an_error():
    with pytest.raises(ValueError, match="ppo_max_token_len_per_gpu"):
        batching.split_by_token_budget(torch.arange(2), torch.tensor([9, 2]), 8, packed=True)


def test_trim_cuts_only_all_padding_columns():
    data = _batch([2, 3, 1], [1, 3, 2])
    mb = batching.trim_columns(data, torch.tensor([0, 2]), R, ["input_ids", "attention_mask", "responses",
                                                              "response_mask", "advantages"])
    assert (mb.prompt_width, mb.response_width) == (2, 2)
    t = mb.tensors
    assert t["input_ids"].shape == (2, 4) and t["responses"].shape == (2, 2) and t["advantages"].shape == (2, 2)
    # the response still starts at column prompt_width and holds the same tokens
    assert torch.equal(t["input_ids"][:, mb.prompt_width:], data["responses"][[0, 2], :2])
    assert int(t["attention_mask"].sum()) == int(data["attention_mask"][[0, 2]].sum())


def test_trim_keeps_one_response_column_for_empty_responses():
    data = _batch([2, 2], [0, 0])
    mb = batching.trim_columns(data, torch.tensor([0, 1]), R, ["input_ids", "attention_mask", "responses"])
    assert mb.response_width == 1 and mb.tensors["input_ids"].shape == (2, 3)


def test_trim_rejects_a_response_tensor_of_the_wrong_width():
    data = _batch([2], [2])
    data["advantages"] = torch.zeros(1, R + 1)
    with pytest.raises(ValueError, match="advantages"):
        batching.trim_columns(data, torch.tensor([0]), R, ["attention_mask", "advantages"])


def test_scatter_rows_restores_order_and_zero_fills():
    data = _batch([1, 2, 3, 4], [4, 1, 2, 3])
    parts = [batching.trim_columns(data, rows, R, ["attention_mask", "responses"])
             for rows in (torch.tensor([2, 0]), torch.tensor([1, 3]))]
    values = [mb.tensors["responses"].float() for mb in parts]
    out = batching.scatter_rows(parts, values, 4, R)
    assert torch.equal(out, data["responses"].float())
