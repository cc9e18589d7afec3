"""scores_to_token_level / token_level_to_scores (reference §0)."""

import pytest
import torch

from ttrl_megatron.algorithms import last_token_positions, scores_to_token_level, token_level_to_scores


def test_placement_on_last_valid_token_and_empty_rows():
    mask = torch.tensor([
        [1, 1, 1, 0],  # length 3 -> column 2
        [1, 1, 1, 1],  # full -> column 3
        [0, 0, 0, 0],  # empty -> last column (verl writes to index valid_length - 1 = -1)
        [1, 1, 0, 1],  # hole (masked tool output): last generated token is column 3
    ])
    scores = torch.tensor([1.0, 0.5, 0.25, -1.0])
    mask_before, scores_before = mask.clone(), scores.clone()
    out = scores_to_token_level(scores, mask)
    expected = torch.zeros(4, 4)
    expected[0, 2], expected[1, 3], expected[2, 3], expected[3, 3] = 1.0, 0.5, 0.25, -1.0
    assert torch.equal(out, expected)
    assert torch.equal(last_token_positions(mask), torch.tensor([2, 3, 3, 3]))
    assert torch.equal(token_level_to_scores(out), scores)
    assert torch.equal(mask, mask_before) and torch.equal(scores, scores_before)


def test_integer_scores_become_float_and_bool_mask():
    out = scores_to_token_level(torch.tensor([1, 0]), torch.tensor([[True, False], [True, True]]))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="scores"):
        scores_to_token_level(torch.zeros(3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="response_mask"):
        scores_to_token_level(torch.zeros(2), torch.ones(2, 0))
