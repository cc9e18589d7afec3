"""Optimal Token Baseline estimators (arXiv 2602.07078; verl docs/algo/otb.md) on hand-computed cases:
B*_t = sum_i G_t W_t / sum_i W_t per group, W_t = cumulative (1 - 2 pi + sum pi^2) [x rho^2], zero tail, TIR ranks."""

import math

import numpy as np
import pytest
import torch

from ttrl_megatron.algorithms import (
    compute_multi_turn_optimal_token_baseline_advantage,
    compute_optimal_token_baseline_advantage,
)

OTB = compute_optimal_token_baseline_advantage
TIR = compute_multi_turn_optimal_token_baseline_advantage


def energy_inputs(pis, sum_sq):
    """old_log_probs and sum_pi_squared giving per-token w = 1 - 2 pi + sum_sq."""
    return torch.log(torch.tensor(pis)), torch.tensor(sum_sq)


def two_rows_and_a_singleton():
    # row 0: 3 tokens, reward 1 at the end; row 1: 2 tokens, reward 0.5 at the end (same prompt); row 2: alone
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # w = 1 - 2 * 0.5 + 0.5 = 0.5 on row 0; w = 1 - 1.8 + 0.82 = 0.02 on rows 1 and 2
    old, sum_sq = energy_inputs([[0.5] * 3, [0.9] * 3, [0.9] * 3], [[0.5] * 3, [0.82] * 3, [0.82] * 3])
    return rewards, mask, np.array(["a", "a", "b"], dtype=object), old, sum_sq


def test_otb_baseline_weights_rows_by_realized_energy():
    rewards, mask, index, old, sum_sq = two_rows_and_a_singleton()
    adv, ret = OTB(rewards, mask, index, old, sum_sq, handle_zero_tail=False)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.0], [2.0, 2.0, 0.0]]))
    # W row 0 = [0.5, 1.0, 1.5], row 1 = [0.02, 0.04]; G row 0 = 1, row 1 = 0.5
    b0 = (1.0 * 0.5 + 0.5 * 0.02) / (0.5 + 0.02)
    b1 = (1.0 * 1.0 + 0.5 * 0.04) / (1.0 + 0.04)
    b2 = (1.0 * 1.5) / 1.5  # only row 0 is valid at t = 2
    expected = torch.tensor([[1 - b0, 1 - b1, 1 - b2], [0.5 - b0, 0.5 - b1, 0.0], [2.0, 2.0, 0.0]])
    torch.testing.assert_close(adv, expected)  # the singleton keeps its return


def test_otb_zero_tail_and_rollout_weights():
    rewards, mask, index, old, sum_sq = two_rows_and_a_singleton()
    adv, _ = OTB(rewards, mask, index, old, sum_sq)  # handle_zero_tail=True: row 0 is strictly the longest
    assert adv[0, 2].item() == pytest.approx(1.0)  # its baseline past length 2 is 0
    ties, _ = OTB(rewards, torch.ones(3, 3), index, old, sum_sq)  # equal lengths: no tail to zero
    assert ties[0, 2].item() != pytest.approx(1.0)
    # rollout correction scales w by rho^2: rho = 2 on row 1 -> w = 0.08
    rho = torch.tensor([[1.0] * 3, [2.0] * 3, [1.0] * 3])
    adv_is, _ = OTB(rewards, mask, index, old, sum_sq, rollout_is_weights=rho, handle_zero_tail=False)
    b0 = (0.5 + 0.5 * 0.08) / (0.5 + 0.08)
    assert adv_is[1, 0].item() == pytest.approx(0.5 - b0, rel=1e-5)


def test_tir_aligns_by_valid_token_rank():
    # row 0 has an observation span at t = 1 (masked); row 1 is two tokens long
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    old, sum_sq = energy_inputs([[0.5] * 4] * 2, [[0.5] * 4] * 2)  # w = 0.5 everywhere
    index = np.array([0, 0])
    adv, ret = TIR(rewards, mask, index, old, sum_sq)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.0, 0.0]]))
    # ranks 0 and 1: both rows, W equal -> B = 0.75; rank 2: only row 0, zero tail -> 0
    torch.testing.assert_close(adv, torch.tensor([[0.25, 0.0, 0.25, 1.0], [-0.25, -0.25, 0.0, 0.0]]))
    # by columns instead, row 1's second token would face only itself at t = 1 (row 0 is masked there)
    col, _ = OTB(rewards, mask, index, old, sum_sq)
    assert col[1, 1].item() == pytest.approx(0.0) and adv[1, 1].item() == pytest.approx(-0.25)


def test_tir_ignores_empty_rows_and_groups_of_one():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    old, sum_sq = energy_inputs([[0.5, 0.5]] * 3, [[0.5, 0.5]] * 3)
    adv, _ = TIR(rewards, mask, np.array([0, 0, 1]), old, sum_sq)
    # group 0 has one non-empty row: no baseline; row 2 alone: no baseline
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 0.0]]))


@pytest.mark.parametrize("fn", [OTB, TIR])
def test_otb_inputs_are_checked_and_kept(fn):
    rewards, mask, index, old, sum_sq = two_rows_and_a_singleton()
    old[1, 2] = -math.inf  # a padding log-prob must not poison the running energy
    snapshot = [t.clone() for t in (rewards, mask, old, sum_sq)]
    adv, _ = fn(rewards, mask, index, old, sum_sq, config={"gamma": 1.0})  # verl passes config via **kwargs
    assert torch.isfinite(adv).all()
    for before, after in zip(snapshot, (rewards, mask, old, sum_sq)):
        assert torch.equal(before, after)
    with pytest.raises(ValueError, match="sum_pi_squared"):
        fn(rewards, mask, index, old, sum_sq[:, :2])
    with pytest.raises(TypeError, match="gamma"):
        fn(rewards, mask, index, old, sum_sq, gamma=1.0)
