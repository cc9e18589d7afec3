"""Helpers shared by the advantage estimators: input checks, correctness of a row, and the NSR weights read from the
algorithm config the way the TTRL fork reads them.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttrl_megatron.algorithms.loss_config import config_get

# The TTRL fork's fallbacks when the config has no grpo_nsr section (equal to the defaults of
# ttrl_megatron.config's GrpoNsrConfig / PsrNsrConfig; a unit test keeps them in sync).
NSR_FALLBACKS = {"positive_weight": 0.1, "negative_weight": 1.0, "correctness_threshold": 0.5}


def check_token_tensors(token_level_rewards, response_mask, **others) -> None:
    """Raise one clear error if the [B, T] inputs disagree in shape (or are not tensors)."""
    if not isinstance(token_level_rewards, torch.Tensor) or token_level_rewards.dim() != 2:
        got = tuple(token_level_rewards.shape) if isinstance(token_level_rewards, torch.Tensor) else token_level_rewards
        raise ValueError(f"token_level_rewards must be a [B, T] tensor, got {got!r}")
    for name, tensor in {"response_mask": response_mask, **others}.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a [B, T] tensor, got {type(tensor).__name__} {tensor!r} (verl's "
                             f"positional order: token_level_rewards, response_mask, index, epsilon, ...)")
        if tensor.shape != token_level_rewards.shape:
            raise ValueError(f"{name} must have the shape of token_level_rewards {tuple(token_level_rewards.shape)}, "
                             f"got {tuple(tensor.shape)}")


def correct_rows(token_level_scores: torch.Tensor, correctness_threshold: float) -> torch.Tensor:
    """[B] bool: ``sum_t S[i, t] >= threshold`` (scores, not KL-shaped rewards, decide correctness)."""
    return token_level_scores.sum(dim=-1) >= correctness_threshold


@dataclass(frozen=True)
class NsrWeights:
    positive_weight: float
    negative_weight: float
    correctness_threshold: float


def nsr_weights(config, section: str, fallback_section: str | None = None) -> NsrWeights:
    """``config.<section>`` (e.g. ``algorithm.grpo_nsr``; the fork also accepts ``grpo_dual_adv``) read with the
    fork's fallbacks for missing keys; negative weights raise naming the field."""
    sub = config_get(config, section, None) if config is not None else None
    if sub is None and fallback_section is not None and config is not None:
        sub = config_get(config, fallback_section, None)
    values = {k: float(config_get(sub, k, v)) if sub is not None else v for k, v in NSR_FALLBACKS.items()}
    for key in ("positive_weight", "negative_weight"):
        if values[key] < 0:
            raise ValueError(f"algorithm.{section}.{key} must be >= 0, got {values[key]}")
    return NsrWeights(**values)
