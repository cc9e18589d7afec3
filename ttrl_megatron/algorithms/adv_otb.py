"""Optimal Token Baseline estimators: optimal_token_baseline and tir_optimal_token_baseline (verl's names and
signatures; Li et al. 2026, arXiv 2602.07078, verl docs/algo/otb.md).

A per-token baseline for each prompt group that weights every trajectory by the "realized energy" accumulated up to
the token, a forward-only proxy of its squared log-prob gradient norm::

    G_t = sum_{u >= t} r_u m_u                        reward-to-go (the returns)
    w_t = 1 - 2 pi_t + sum_v pi_v^2                   pi_t = exp(old_log_probs_t); sum_pi_squared = sum_v pi_v^2
    W_t = sum_{j <= t} w_j m_j     (w_t times rollout_is_weights_t^2 under rollout correction)
    B*_t = sum_i G_t^i W_t^i m_t^i / (sum_i W_t^i m_t^i + eps)    over the rows i of the group
    A_t = (G_t - B*_t) m_t

A group with a single row has no baseline (A = G). ``handle_zero_tail``: when one row of a group is strictly the
longest, its baseline is 0 past the second-longest length (no other row informs it there). The TIR (tool-integrated,
multi-turn) variant aligns rows by VALID-token rank instead of column, so observation spans masked inside a response
do not shift the comparison, and ignores empty rows. ``sum_pi_squared`` comes from the actor's log-prob pass
(verl: ``actor_rollout_ref.actor.calculate_sum_pi_squared=True``).

Vectorized over groups (segment sums with index_add_); verl loops over groups in Python. Pure torch; must not import
torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_common import check_token_tensors
from ttrl_megatron.algorithms.adv_registry import check_extra_kwargs, register_adv_est
from ttrl_megatron.algorithms.groupwise import factorize_index


def _returns_and_energy(token_level_rewards, response_mask, old_log_probs, sum_pi_squared, rollout_is_weights, who):
    check_token_tensors(token_level_rewards, response_mask, old_log_probs=old_log_probs,
                        sum_pi_squared=sum_pi_squared, rollout_is_weights=rollout_is_weights)
    dtype = torch.promote_types(token_level_rewards.dtype, torch.float32)
    valid = response_mask != 0
    mask = response_mask.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=token_level_rewards.device)
    returns = (torch.where(valid, token_level_rewards.to(dtype), zero) * mask).flip(-1).cumsum(-1).flip(-1)
    w = 1.0 - 2.0 * torch.exp(old_log_probs.to(dtype)) + sum_pi_squared.to(dtype)
    if rollout_is_weights is not None:
        w = w * rollout_is_weights.to(dtype).square()
    # where(): log-probs of padding may be -inf/NaN, and NaN * 0 would poison the running sum.
    energy = (torch.where(valid, w, zero) * mask).cumsum(-1)
    return returns, energy, mask, valid


def _tail_rows(lengths: torch.Tensor, group_ids: torch.Tensor, num_groups: int, member: torch.Tensor):
    """Rows that are strictly the longest member of a group of >= 2 members, and the group's second-longest length."""
    minus_one = torch.full((num_groups,), -1, dtype=lengths.dtype, device=lengths.device)
    lengths_m = torch.where(member, lengths, -1)
    longest = minus_one.clone().scatter_reduce_(0, group_ids, lengths_m, "amax")
    at_max = member & (lengths == longest[group_ids])
    n_at_max = torch.zeros(num_groups, dtype=torch.long, device=lengths.device).index_add_(0, group_ids, at_max.long())
    others = torch.where(member & ~at_max, lengths, -1)
    second = minus_one.clone().scatter_reduce_(0, group_ids, others, "amax")
    count = torch.zeros(num_groups, dtype=torch.long, device=lengths.device).index_add_(0, group_ids, member.long())
    tail = at_max & (n_at_max[group_ids] == 1) & (count[group_ids] > 1)
    return tail, second[group_ids]


@register_adv_est("optimal_token_baseline")
@torch.no_grad()
def compute_optimal_token_baseline_advantage(token_level_rewards, response_mask, index, old_log_probs,
                                             sum_pi_squared, rollout_is_weights=None, handle_zero_tail=True,
                                             epsilon=1e-8, **kwargs):
    """OTB over token COLUMNS (single-turn). Args: [B, T] rewards, mask, old_log_probs, sum_pi_squared (and optional
    rollout_is_weights); index [B] group ids. Returns (advantages [B, T], returns = G [B, T])."""
    check_extra_kwargs(kwargs, "compute_optimal_token_baseline_advantage")
    returns, energy, mask, _ = _returns_and_energy(token_level_rewards, response_mask, old_log_probs, sum_pi_squared,
                                                   rollout_is_weights, "optimal_token_baseline")
    rows, cols = returns.shape
    group_ids, num_groups = factorize_index(index, rows, device=returns.device)
    weighted = energy * mask
    num = torch.zeros(num_groups, cols, dtype=returns.dtype, device=returns.device).index_add_(
        0, group_ids, returns * weighted)
    den = torch.zeros_like(num).index_add_(0, group_ids, weighted)
    baseline = (num / (den + epsilon))[group_ids]
    count = torch.bincount(group_ids, minlength=num_groups)[group_ids]
    baseline = torch.where((count > 1).unsqueeze(-1), baseline, 0.0)
    if handle_zero_tail:
        lengths = mask.sum(-1).long()
        tail, second = _tail_rows(lengths, group_ids, num_groups, torch.ones_like(lengths, dtype=torch.bool))
        past = torch.arange(cols, device=returns.device).unsqueeze(0) >= second.unsqueeze(-1)
        baseline = torch.where(tail.unsqueeze(-1) & past, 0.0, baseline)
    return (returns - baseline) * mask, returns


@register_adv_est("tir_optimal_token_baseline")
@torch.no_grad()
def compute_multi_turn_optimal_token_baseline_advantage(token_level_rewards, response_mask, index, old_log_probs,
                                                        sum_pi_squared, rollout_is_weights=None,
                                                        handle_zero_tail=True, epsilon=1e-8, **kwargs):
    """OTB over VALID-token RANKS (multi-turn / tool-integrated): the k-th valid token of every row of a group is
    compared with the k-th valid token of the others; rows without a valid token are left out. Same arguments and
    returns as :func:`compute_optimal_token_baseline_advantage`."""
    check_extra_kwargs(kwargs, "compute_multi_turn_optimal_token_baseline_advantage")
    returns, energy, mask, valid = _returns_and_energy(token_level_rewards, response_mask, old_log_probs,
                                                       sum_pi_squared, rollout_is_weights,
                                                       "tir_optimal_token_baseline")
    rows, cols = returns.shape
    group_ids, num_groups = factorize_index(index, rows, device=returns.device)
    lengths = mask.sum(-1).long()
    member = lengths > 0
    rank = (valid.long().cumsum(-1) - 1).clamp_min(0)  # rank of each valid token within its row
    row_idx, col_idx = valid.nonzero(as_tuple=True)
    g, k = group_ids[row_idx], rank[row_idx, col_idx]
    num = torch.zeros(num_groups, cols, dtype=returns.dtype, device=returns.device)
    den = torch.zeros_like(num)
    num.index_put_((g, k), returns[row_idx, col_idx] * energy[row_idx, col_idx], accumulate=True)
    den.index_put_((g, k), energy[row_idx, col_idx], accumulate=True)
    baseline = num[g, k] / (den[g, k] + epsilon)
    count = torch.zeros(num_groups, dtype=torch.long, device=returns.device).index_add_(0, group_ids, member.long())
    baseline = torch.where(count[g] > 1, baseline, 0.0)
    if handle_zero_tail:
        tail, second = _tail_rows(lengths, group_ids, num_groups, member)
        baseline = torch.where(tail[row_idx] & (k >= second[row_idx]), 0.0, baseline)
    advantages = torch.zeros_like(returns)
    advantages[row_idx, col_idx] = returns[row_idx, col_idx] - baseline
    return advantages * mask, returns
