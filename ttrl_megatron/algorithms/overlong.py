"""Overlong shaping (DAPO, Yu et al. 2025, arXiv 2503.14476 §3.4): the soft overlong punishment and the mask that
takes truncated responses out of the policy loss ("overlong filtering").

Soft overlong punishment (verl ``reward_model.overlong_buffer``): with ``L`` the response length in tokens,
``L_max`` = data.max_response_length and a buffer of ``L_buf`` tokens before it, a response longer than
``L_max - L_buf`` loses reward linearly, reaching ``-penalty_factor`` at ``L_max``:

    penalty(L) = min(0, -(L - (L_max - L_buf)) / L_buf * penalty_factor)

and the row's outcome score becomes ``score + penalty(L)``.

Truncated responses (vLLM finish reason ``length``: the response hit max_tokens without a stop token) carry no
verdict about their unfinished answer; ``truncated_rows`` marks them so their loss can be masked.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["overlong_penalty", "truncated_rows", "mask_rows"]


def overlong_penalty(response_lengths: torch.Tensor, max_response_length: int, buffer_len: int,
                     penalty_factor: float) -> torch.Tensor:
    """``[B]`` penalties (<= 0, float32) for ``[B]`` response lengths (valid tokens, EOS included)."""
    if buffer_len < 1 or buffer_len > max_response_length:
        raise ValueError(f"reward_model.overlong_buffer.len={buffer_len} must be in [1, data.max_response_length="
                         f"{max_response_length}]")
    if penalty_factor < 0:
        raise ValueError(f"reward_model.overlong_buffer.penalty_factor={penalty_factor} must be >= 0")
    expected = max_response_length - buffer_len
    exceed = response_lengths.to(torch.float32) - float(expected)
    return torch.clamp(-exceed / float(buffer_len) * float(penalty_factor), max=0.0)


def truncated_rows(finish_reasons: Sequence[str]) -> torch.Tensor:
    """``[B]`` bool: the rows whose generation stopped at the length limit (finish reason ``length``)."""
    return torch.tensor([reason == "length" for reason in finish_reasons], dtype=torch.bool)


def mask_rows(response_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``response_mask [B, R]`` with the rows where ``rows [B]`` is True set to 0 (same dtype/device)."""
    keep = (~rows.to(device=response_mask.device)).to(response_mask.dtype).unsqueeze(-1)
    return response_mask * keep
