"""Token-level advantage estimators (a recursion over time, not a group baseline): gae, reinforce_plus_plus, remax,
psr_nsr (reference/algorithms-semantics.md §1.4, §3.2), with verl's signatures.

The loops here run over the T token positions, each step vectorized over all B rows. All functions run under
``torch.no_grad()``, never modify their inputs and return ``(advantages [B, T], returns [B, T])``.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_common import check_token_tensors, correct_rows, nsr_weights
from ttrl_megatron.algorithms.adv_registry import check_extra_kwargs, register_adv_est
from ttrl_megatron.algorithms.loss_config import config_get
from ttrl_megatron.algorithms.masked import masked_whiten


@register_adv_est("gae")
@torch.no_grad()
def compute_gae_advantage_return(token_level_rewards, values, response_mask, gamma, lam):
    """Generalized advantage estimation (Schulman et al. 2016, arXiv 1506.02438), backwards over t:
    ``delta_t = r_t + gamma V_next - V_t``; ``g_t = delta_t + gamma lam g_next``. Masked positions (padding, or
    observation tokens inside a response) are skipped: they carry ``V_next`` and ``g_next`` through unchanged.

    Args: token_level_rewards, values, response_mask [B, T]; gamma, lam floats (or 0-dim tensors).
    Returns: advantages = masked_whiten(g) over the batch (not re-masked), returns = g + V; both [B, T].
    """
    check_token_tensors(token_level_rewards, response_mask, values=values)
    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    last_gae = torch.zeros_like(values[:, 0])
    raw = torch.empty_like(values)
    for t in reversed(range(values.shape[1])):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        gae_t = delta + gamma * lam * last_gae
        m = mask[:, t]
        next_value = values[:, t] * m + (1 - m) * next_value
        last_gae = gae_t * m + (1 - m) * last_gae
        raw[:, t] = last_gae
    returns = raw + values
    return masked_whiten(raw, response_mask), returns


def discounted_returns(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma) -> torch.Tensor:
    """[B, T] reward-to-go ``G_t = r_t + gamma G_next`` over the VALID tokens (current verl, PR #7278).

    Masked positions (padding after EOS, or observation tokens inside a response) get ``G = 0`` and carry the running
    return through unchanged, so rewards after an observation span still reach the tokens before it; rewards placed
    on masked positions are dropped.
    """
    mask = response_mask.to(token_level_rewards.dtype)
    running = torch.zeros_like(token_level_rewards[:, 0])
    returns = torch.empty_like(token_level_rewards)
    for t in reversed(range(token_level_rewards.shape[1])):
        m = mask[:, t]
        new = token_level_rewards[:, t] + gamma * running
        returns[:, t] = new * m
        running = new * m + running * (1 - m)
    return returns


@register_adv_est("reinforce_plus_plus")
@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, config=None, **kwargs):
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): returns G (discounted reward-to-go, :func:`discounted_returns`) with
    ``gamma = config.gamma`` (required, as verl); advantages = G whitened over all valid tokens of the batch,
    re-masked. Returns (advantages, returns) [B, T]."""
    check_extra_kwargs(kwargs, "compute_reinforce_plus_plus_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    gamma = config_get(config, "gamma", who="advantage estimator 'reinforce_plus_plus'")
    returns = discounted_returns(token_level_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask) * response_mask, returns


@register_adv_est("remax")
@torch.no_grad()
def compute_remax_outcome_advantage(token_level_rewards, reward_baselines, response_mask, config=None, **kwargs):
    """ReMax (Li et al. 2023, arXiv 2310.10505): returns = reverse cumsum of masked rewards; advantages =
    returns - b_i on valid tokens, b_i [B] the reward of the greedy rollout of the same prompt."""
    check_extra_kwargs(kwargs, "compute_remax_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    if reward_baselines.shape != token_level_rewards.shape[:1]:
        raise ValueError(f"reward_baselines must have shape [{token_level_rewards.shape[0]}], "
                         f"got {tuple(reward_baselines.shape)}")
    masked = token_level_rewards * response_mask
    returns = masked.flip(-1).cumsum(dim=-1).flip(-1)
    return returns - reward_baselines.to(returns.dtype).unsqueeze(-1) * response_mask, returns


@register_adv_est("psr_nsr")
@torch.no_grad()
def compute_psr_nsr_outcome_advantage(token_level_rewards, response_mask, token_level_scores=None, config=None,
                                      **kwargs):
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347, §3.2): no baseline, no normalization.

    G = :func:`discounted_returns` of the rewards with ``gamma = config.gamma`` (1.0 without a config). Correct rows
    (``sum_t S >= threshold``, S the scores or the rewards when None) get ``positive_weight * G``; incorrect rows
    ``negative_weight * (G - 1)``; weights and threshold from ``config.psr_nsr`` (missing: 0.1 / 1.0 / 0.5). With 0/1
    rewards and no KL this is ``+positive_weight`` / ``-negative_weight`` on every valid token, including all-wrong
    groups. The 1 is the reward of a correct answer (rewards are 0/1 in TTRL). Returns (advantages, returns=G).
    (The paper's code, a verl 0.2 fork, has another signature; this one follows the registry convention.)
    """
    check_extra_kwargs(kwargs, "compute_psr_nsr_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask, token_level_scores=token_level_scores)
    w = nsr_weights(config, "psr_nsr")
    gamma = config_get(config, "gamma", 1.0) if config is not None else 1.0
    returns = discounted_returns(token_level_rewards, response_mask, gamma)
    scores = token_level_rewards if token_level_scores is None else token_level_scores
    correct = correct_rows(scores, w.correctness_threshold).unsqueeze(-1)
    adv = torch.where(correct, w.positive_weight * returns, w.negative_weight * (returns - 1.0)) * response_mask
    return adv, returns
