"""DAPO's overlong shaping (algorithms/overlong.py) and group filter (algorithms/group_filter.py), by hand."""

import pytest
import torch

from ttrl_megatron.algorithms.group_filter import constant_group_share, groups_with_signal
from ttrl_megatron.algorithms.overlong import mask_rows, overlong_penalty, truncated_rows


def test_soft_overlong_penalty_is_linear_in_the_buffer():
    lengths = torch.tensor([3, 6, 7, 8, 10])
    # L_max 10, buffer 4: no penalty up to 6 tokens, then -1/4 per token, -1 at 10
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalty(lengths, 10, 4, 0.5).tolist() == [0.0, 0.0, -0.125, -0.25, -0.5]
    assert overlong_penalty(lengths, 10, 10, 1.0).tolist() == pytest.approx([-0.3, -0.6, -0.7, -0.8, -1.0])


def test_overlong_penalty_rejects_a_bad_buffer():
    with pytest.raises(ValueError, match="overlong_buffer.len"):
        overlong_penalty(torch.tensor([1]), 10, 11, 1.0)
    with pytest.raises(ValueError, match="penalty_factor"):
        overlong_penalty(torch.tensor([1]), 10, 4, -1.0)


def test_truncated_rows_are_masked_whole():
    cut = truncated_rows(["stop", "length", "abort", "length"])
    assert cut.tolist() == [False, True, False, True]
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    assert mask_rows(mask, cut).tolist() == [[1, 1], [0, 0], [1, 1], [0, 0]]
    assert mask.tolist() == [[1, 1], [1, 0], [1, 1], [1, 1]]  # input untouched


def test_groups_with_signal_and_constant_share():
    uids = ["a", "a", "b", "b", "c", "d", "d"]
    values = [1.0, 1.0, 0.0, 1.0, 1.0, True, True]
    assert groups_with_signal(uids, values) == {"a": False, "b": True, "c": True, "d": False}  # c: one rollout
    assert constant_group_share(uids, values) == pytest.approx(4 / 7)
    # a failed reward (None) differs from a number but equals another None
    assert groups_with_signal(["x", "x", "y", "y"], [None, 1.0, None, None]) == {"x": True, "y": False}
    assert constant_group_share([], []) == 0.0
    with pytest.raises(ValueError, match="2 group ids but 1 values"):
        groups_with_signal(["a", "a"], [1.0])
