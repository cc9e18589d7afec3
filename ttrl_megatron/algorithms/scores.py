"""Sequence scores <-> token-level scores.

A reward manager produces one scalar per response; the estimators consume a [B, T] ``token_level_scores`` tensor that
carries that scalar on the response's last valid token and zeros elsewhere (reference/algorithms-semantics.md §0).

Placement rule: the last position ``t`` with ``response_mask[b, t] != 0``. For the usual right-padded mask this is
``valid_length - 1``, as in verl; with holes in the mask (e.g. masked tool output) it is still the last generated
token. An EMPTY response (no valid token) gets its scalar in the last column ``T - 1``, exactly like verl's reward
managers, which write to index ``valid_length - 1 = -1``. Outcome estimators sum the row without the mask, so the
score still counts for that row.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch


def last_token_positions(response_mask: torch.Tensor) -> torch.Tensor:
    """[B] int64 column of the last valid token per row of ``response_mask`` [B, T]; ``T - 1`` for empty rows."""
    if response_mask.dim() != 2 or response_mask.shape[1] == 0:
        raise ValueError(f"response_mask must have shape [B, T] with T > 0, got {tuple(response_mask.shape)}")
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = torch.where(response_mask != 0, positions, -1).amax(dim=-1)
    return torch.where(last < 0, response_mask.shape[1] - 1, last)


def scores_to_token_level(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Place one scalar per row on its last valid response token.

    Args:
        scores: [B] sequence-level scores (a float dtype is kept; integer/bool become float32).
        response_mask: [B, T] 1 on generated tokens (incl. EOS), 0 on padding.

    Returns:
        token_level_scores [B, T], zero except ``[b, last_token_positions(mask)[b]] = scores[b]``.
    """
    if scores.dim() != 1 or scores.shape[0] != response_mask.shape[0]:
        raise ValueError(f"scores must have shape [{response_mask.shape[0]}] (one per row of response_mask), "
                         f"got {tuple(scores.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    out = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device)
    cols = last_token_positions(response_mask).unsqueeze(-1)
    return out.scatter_(1, cols, scores.to(dtype=dtype, device=out.device).unsqueeze(-1))


def token_level_to_scores(token_level_scores: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`scores_to_token_level`: [B, T] -> [B] row sums (no mask, like the outcome estimators)."""
    return token_level_scores.sum(dim=-1)
