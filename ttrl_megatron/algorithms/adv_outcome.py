"""Outcome advantage estimators with group baselines: grpo, grpo_nsr, rloo, reinforce_plus_plus_baseline, opo, gpg,
grpo_passk (reference/algorithms-semantics.md §1.4 and §3.4).

Each takes ``token_level_rewards`` [B, T] and reduces it to one score per row, ``s_i = sum_t R[i, t]`` (no mask: the
reward sits on the last valid token and KL terms are already masked), computes a per-row advantage ``a_i`` from the
statistics of the row's group (rows sharing ``index``, verl's per-prompt uid) and broadcasts it,
``A[i, t] = a_i * response_mask[i, t]``. ``returns`` is the same tensor as ``advantages`` (§0). Group statistics are
vectorized segment operations (groupwise.py), computed in float64, cast back to the rewards' dtype. Everything runs
under ``torch.no_grad()`` and no input is modified. ``out=`` lets the caller reuse a [B, T] buffer (see groupwise.
broadcast_rows).

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_registry import register_adv_est
from ttrl_megatron.algorithms.groupwise import broadcast_rows, factorize_index, group_stats, segment_sum
from ttrl_megatron.algorithms.masked import masked_whiten


def check_token_tensors(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, **others) -> None:
    """Raise one clear error if the [B, T] inputs disagree in shape."""
    if token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards must be [B, T], got shape {tuple(token_level_rewards.shape)}")
    for name, tensor in {"response_mask": response_mask, **others}.items():
        if tensor is not None and tensor.shape != token_level_rewards.shape:
            raise ValueError(f"{name} must have the shape of token_level_rewards {tuple(token_level_rewards.shape)}, "
                             f"got {tuple(tensor.shape)}")


def correct_rows(token_level_scores: torch.Tensor, correctness_threshold: float) -> torch.Tensor:
    """[B] bool: ``sum_t S[i, t] >= threshold`` (scores, not KL-shaped rewards, decide correctness)."""
    return token_level_scores.sum(dim=-1) >= correctness_threshold


def _check_weights(prefix: str, positive_weight: float, negative_weight: float) -> None:
    for key, value in (("positive_weight", positive_weight), ("negative_weight", negative_weight)):
        if value < 0:
            raise ValueError(f"{prefix}.{key} must be >= 0, got {value}")


def _grpo_row_advantage(scores: torch.Tensor, index, epsilon: float, norm_adv_by_std_in_grpo: bool) -> torch.Tensor:
    """[B] float64 ``(s - mean_g) / (std_g + eps)`` (or ``s - mean_g``) with the singleton/uniform rules."""
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    stats = group_stats(scores, group_ids, num_groups)
    centered = scores.to(torch.float64) - stats.mean
    return centered / (stats.std + epsilon) if norm_adv_by_std_in_grpo else centered


@register_adv_est("grpo")
@torch.no_grad()
def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True, *, out=None):
    """GRPO (Shao et al. 2024, arXiv 2402.03300): ``a_i = (s_i - mean_g) / (std_g + eps)``.

    Singleton group: mean 0, std 1 (a lone row keeps ``s_i / (1 + eps)``). Uniform group: 0. std is unbiased.
    ``norm_adv_by_std_in_grpo=False`` gives the mean-only baseline ``s_i - mean_g`` (Dr.GRPO).

    Args: token_level_rewards, response_mask [B, T]; index [B] group ids.
    Returns: (advantages, returns) [B, T], the same tensor.
    """
    check_token_tensors(token_level_rewards, response_mask)
    a = _grpo_row_advantage(token_level_rewards.sum(dim=-1), index, epsilon, norm_adv_by_std_in_grpo)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


@register_adv_est("grpo_nsr")
@torch.no_grad()
def compute_grpo_nsr_outcome_advantage(token_level_rewards, response_mask, index, token_level_scores=None,
                                       epsilon=1e-6, norm_adv_by_std_in_grpo=True, positive_weight=0.1,
                                       negative_weight=1.0, correctness_threshold=0.5, *, out=None):
    """GRPO with separate weights for correct and incorrect rows (§3.4; NSR, Zhu et al. 2025, arXiv 2506.01347).

    ``a_i = grpo_i * (positive_weight if c_i else negative_weight)`` with ``c_i = sum_t S[i, t] >= threshold``, S the
    ``token_level_scores`` (pre-KL) or the rewards when None. With both weights 1 it equals grpo bit for bit. Uniform
    groups give 0 (no NSR signal from all-wrong groups, unlike psr_nsr). Metrics: :func:`compute_grpo_nsr_metrics`.

    Args: token_level_rewards, response_mask, token_level_scores [B, T]; index [B]. Returns (advantages, returns).
    """
    check_token_tensors(token_level_rewards, response_mask, token_level_scores=token_level_scores)
    _check_weights("algorithm.grpo_nsr", positive_weight, negative_weight)
    a = _grpo_row_advantage(token_level_rewards.sum(dim=-1), index, epsilon, norm_adv_by_std_in_grpo)
    if positive_weight != 1.0 or negative_weight != 1.0:
        scores = token_level_rewards if token_level_scores is None else token_level_scores
        a = torch.where(correct_rows(scores, correctness_threshold), a * positive_weight, a * negative_weight)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards, token_level_scores))
    return adv, adv


@torch.no_grad()
def compute_grpo_nsr_metrics(response_mask, token_level_scores, *, correctness_threshold, positive_weight,
                             negative_weight) -> dict[str, float]:
    """Driver metrics of grpo_nsr over the trained rows (§3.4 step 6).

    ``training/grpo_nsr_pos_ratio`` = fraction of rows judged correct; ``training/grpo_nsr_pos_token_ratio`` = valid
    tokens in correct rows / all valid tokens (0 when there are none); plus the two weights. Pass the same
    ``token_level_scores`` the estimator used (the rewards if the batch has no separate scores).
    """
    check_token_tensors(token_level_scores, response_mask)
    correct = correct_rows(token_level_scores, correctness_threshold)
    tokens = response_mask.to(torch.float64).sum(dim=-1)
    total = tokens.sum()
    pos_tokens = (tokens * correct).sum()
    return {
        "training/grpo_nsr_pos_ratio": correct.to(torch.float64).mean().item() if correct.numel() else 0.0,
        "training/grpo_nsr_pos_token_ratio": (pos_tokens / total).item() if total > 0 else 0.0,
        "training/grpo_nsr_pos_weight": float(positive_weight),
        "training/grpo_nsr_neg_weight": float(negative_weight),
    }


@register_adv_est("rloo")
@torch.no_grad()
def compute_rloo_outcome_advantage(token_level_rewards, response_mask, index, *, out=None):
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): ``a_i = s_i - mean of the other rows of the group``
    ``= n/(n-1) * (s_i - mean_g)``; a singleton keeps ``s_i``. Returns (advantages, returns) [B, T], same tensor."""
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    stats = group_stats(scores, group_ids, num_groups)
    s = scores.to(torch.float64)
    n = stats.count.to(torch.float64)
    scale = n / (n - 1).clamp_min(1)
    a = torch.where(stats.count > 1, s * scale - stats.mean * scale, s)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


@register_adv_est("reinforce_plus_plus_baseline")
@torch.no_grad()
def compute_reinforce_plus_plus_baseline_outcome_advantage(token_level_rewards, response_mask, index):
    """REINFORCE++ with group-mean baseline (Hu 2025, arXiv 2501.03262): ``s_i - mean_g`` (singleton mean 0) on
    every valid token, then whitened over all valid tokens of the batch and re-masked. Returns (adv, adv) [B, T]."""
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    centered = scores.to(torch.float64) - group_stats(scores, group_ids, num_groups).mean
    tiled = broadcast_rows(centered, response_mask, token_level_rewards.dtype)
    adv = masked_whiten(tiled, response_mask) * response_mask
    return adv, adv


@register_adv_est("opo")
@torch.no_grad()
def compute_opo_outcome_advantage(token_level_rewards, response_mask, index, *, out=None):
    """OPO (Hao et al. 2025, arXiv 2505.23585): length-weighted baseline ``b_g = sum_j L_j s_j / sum_j L_j``
    (L_j = valid tokens of row j); ``a_i = s_i - b_g``. Singleton, or a group of empty rows: b = 0. Uniform: 0."""
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    stats = group_stats(scores, group_ids, num_groups)
    s = scores.to(torch.float64)
    lengths = response_mask.to(torch.float64).sum(dim=-1)
    num = segment_sum(lengths * s, group_ids, num_groups)
    den = segment_sum(lengths, group_ids, num_groups)
    baseline = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den))[group_ids]
    baseline = torch.where(stats.uniform, s, baseline)  # exact 0 for uniform groups despite rounding
    baseline = torch.where(stats.count > 1, baseline, torch.zeros_like(baseline))
    adv = broadcast_rows(s - baseline, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


@register_adv_est("gpg")
@torch.no_grad()
def compute_gpg_outcome_advantage(token_level_rewards, response_mask, index, f_norm=1.0, alpha=None, *, out=None):
    """GPG (Chu et al. 2025, arXiv 2504.02546): ``a_i = alpha * (s_i - mean_g) / f_norm`` with
    ``alpha = B / max(#rows with s != 0 in the batch, 1)`` unless given; no std. Pair with loss_mode=gpg."""
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    centered = scores.to(torch.float64) - group_stats(scores, group_ids, num_groups).mean
    if alpha is None:
        alpha = scores.shape[0] / max(int(torch.count_nonzero(scores)), 1)
    adv = broadcast_rows(alpha * centered / f_norm, response_mask, token_level_rewards.dtype, out,
                         (token_level_rewards,))
    return adv, adv


@register_adv_est("grpo_passk")
@torch.no_grad()
def compute_grpo_passk_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                         norm_adv_by_std_in_grpo=True, *, out=None):
    """Pass@k GRPO (Chen et al. 2025, arXiv 2503.19595): only the best row of each group gets
    ``s_max - s_second`` (divided by ``std_g + eps`` if normalizing); every other row 0; ties give 0.
    Needs at least 2 rows per group. Returns (advantages, returns) [B, T], same tensor."""
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    counts = torch.bincount(group_ids, minlength=num_groups)
    if bool((counts < 2).any()):
        raise ValueError(f"grpo_passk needs at least 2 responses per group (rows sharing index); "
                         f"{int((counts < 2).sum())} group(s) have 1")
    s = scores.to(torch.float64)
    # Order rows by group, best score first inside each group (two stable sorts), then read the first two per group.
    by_score = torch.argsort(s, descending=True, stable=True)
    order = by_score[torch.argsort(group_ids[by_score], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    best, second = order[starts], order[starts + 1]
    gap = s[best] - s[second]
    if norm_adv_by_std_in_grpo:
        gap = gap / (group_stats(scores, group_ids, num_groups).std[best] + epsilon)
    a = torch.zeros_like(s).index_copy_(0, best, gap)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv
