"""Token-level advantage estimators (a recursion over time, not a group baseline): gae, reinforce_plus_plus, remax,
psr_nsr (reference/algorithms-semantics.md §1.4, §3.2).

The loops here run over the T token positions, each step vectorized over all B rows. All functions run under
``torch.no_grad()``, never modify their inputs and return ``(advantages [B, T], returns [B, T])``.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_outcome import _check_weights, check_token_tensors, correct_rows
from ttrl_megatron.algorithms.adv_registry import register_adv_est
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
    """[B, T] ``G_t = r_t + gamma G_{t+1}``, the running sum restarting at the end of each response (after EOS)."""
    mask = response_mask.to(token_level_rewards.dtype)
    running = torch.zeros_like(token_level_rewards[:, 0])
    returns = torch.empty_like(token_level_rewards)
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    return returns


@register_adv_est("reinforce_plus_plus")
@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(token_level_rewards, response_mask, gamma):
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): returns G (discounted, reset after EOS); advantages = G whitened over
    all valid tokens of the batch, re-masked. Args: [B, T] tensors, gamma. Returns (advantages, returns) [B, T]."""
    check_token_tensors(token_level_rewards, response_mask)
    returns = discounted_returns(token_level_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask) * response_mask, returns


@register_adv_est("remax")
@torch.no_grad()
def compute_remax_outcome_advantage(token_level_rewards, reward_baselines, response_mask):
    """ReMax (Li et al. 2023, arXiv 2310.10505): returns = reverse cumsum of masked rewards; advantages =
    returns - b_i on valid tokens, b_i [B] the reward of the greedy rollout of the same prompt."""
    check_token_tensors(token_level_rewards, response_mask)
    if reward_baselines.shape != token_level_rewards.shape[:1]:
        raise ValueError(f"reward_baselines must have shape [{token_level_rewards.shape[0]}], "
                         f"got {tuple(reward_baselines.shape)}")
    masked = token_level_rewards * response_mask
    returns = masked.flip(-1).cumsum(dim=-1).flip(-1)
    return returns - reward_baselines.to(returns.dtype).unsqueeze(-1) * response_mask, returns


@register_adv_est("psr_nsr")
@torch.no_grad()
def compute_psr_nsr_outcome_advantage(token_level_rewards, response_mask, gamma, token_level_scores=None,
                                      positive_weight=0.1, negative_weight=1.0, correctness_threshold=0.5):
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347, §3.2): no baseline, no normalization.

    G = discounted returns of the rewards (reset after EOS). Correct rows (``sum_t S >= threshold``, S the scores or
    the rewards when None) get ``positive_weight * G``; incorrect rows ``negative_weight * (G - 1)``. With 0/1 rewards
    and no KL this is ``+positive_weight`` / ``-negative_weight`` on every valid token, including all-wrong groups.
    The 1 is the reward of a correct answer (rewards are 0/1 in TTRL). Returns (advantages, returns=G) [B, T].
    """
    check_token_tensors(token_level_rewards, response_mask, token_level_scores=token_level_scores)
    _check_weights("algorithm.psr_nsr", positive_weight, negative_weight)
    returns = discounted_returns(token_level_rewards, response_mask, gamma)
    scores = token_level_rewards if token_level_scores is None else token_level_scores
    correct = correct_rows(scores, correctness_threshold).unsqueeze(-1)
    adv = torch.where(correct, positive_weight * returns, negative_weight * (returns - 1.0)) * response_mask
    return adv, returns
