"""GRPO-family outcome advantage estimators: grpo (also registered as grpo_vectorized), grpo_nsr, grpo_passk
(reference/algorithms-semantics.md §1.4 and §3.4), with verl's (and the TTRL fork's) signatures.

Each takes ``token_level_rewards`` [B, T] and reduces it to one score per row, ``s_i = sum_t R[i, t]`` (no mask: the
reward sits on the last valid token and KL terms are already masked), computes a per-row advantage ``a_i`` from the
statistics of the row's group (rows sharing ``index``, verl's per-prompt uid) and broadcasts it,
``A[i, t] = a_i * response_mask[i, t]``. ``returns`` is the same tensor as ``advantages`` (§0). Group statistics are
vectorized segment operations (groupwise.py), computed in float64, cast back to the rewards' dtype; a group whose
scores are all equal gets exactly 0 (verl's float32 mean can leave a ~1e-8 residual). Everything runs under
``torch.no_grad()`` and no input is modified. Keyword-only ``out=`` (ours) lets the caller reuse a [B, T] buffer
(groupwise.broadcast_rows).

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_common import check_token_tensors, correct_rows, nsr_weights
from ttrl_megatron.algorithms.adv_registry import check_extra_kwargs, register_adv_est
from ttrl_megatron.algorithms.groupwise import broadcast_rows, factorize_index, group_stats
from ttrl_megatron.algorithms.loss_config import config_get


def _grpo_row_advantage(scores: torch.Tensor, index, epsilon: float, norm_adv_by_std_in_grpo: bool) -> torch.Tensor:
    """[B] float64 ``(s - mean_g) / (std_g + eps)`` (or ``s - mean_g``) with the singleton/uniform rules."""
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    stats = group_stats(scores, group_ids, num_groups)
    centered = scores.to(torch.float64) - stats.mean
    return centered / (stats.std + epsilon) if norm_adv_by_std_in_grpo else centered


@register_adv_est("grpo")
@torch.no_grad()
def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True, config=None, *, out=None):
    """GRPO (Shao et al. 2024, arXiv 2402.03300): ``a_i = (s_i - mean_g) / (std_g + eps)``.

    Singleton group: mean 0, std 1 (a lone row keeps ``s_i / (1 + eps)``). Uniform group: 0. std is unbiased.
    ``norm_adv_by_std_in_grpo=False`` gives the mean-only baseline ``s_i - mean_g`` (Dr.GRPO, arXiv 2503.20783).
    ``config`` is accepted and not read (as verl). Also registered as ``grpo_vectorized``.

    Args: token_level_rewards, response_mask [B, T]; index [B] group ids.
    Returns: (advantages, returns) [B, T], the same tensor.
    """
    check_token_tensors(token_level_rewards, response_mask)
    a = _grpo_row_advantage(token_level_rewards.sum(dim=-1), index, epsilon, norm_adv_by_std_in_grpo)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


# verl's vectorized GRPO has the same definition (singleton mean 0 / std 1, unbiased std): one implementation.
compute_grpo_vectorized_outcome_advantage = compute_grpo_outcome_advantage
register_adv_est("grpo_vectorized")(compute_grpo_outcome_advantage)


@register_adv_est("grpo_nsr")
@torch.no_grad()
def compute_grpo_nsr_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                       norm_adv_by_std_in_grpo=True, token_level_scores=None, config=None, *,
                                       out=None, **kwargs):
    """GRPO with separate weights for correct and incorrect rows (the TTRL fork's estimator, §3.4; NSR: Zhu et al.
    2025, arXiv 2506.01347). The fork's signature and config reading.

    ``a_i = grpo_i * (positive_weight if c_i else negative_weight)`` with ``c_i = sum_t S[i, t] >= threshold``, S the
    ``token_level_scores`` (pre-KL) or the rewards when None. The weights come from ``config.grpo_nsr`` (fallback
    ``config.grpo_dual_adv``; missing keys: 0.1 / 1.0 / 0.5). With both weights 1 it equals grpo bit for bit.
    Uniform groups give 0 (no NSR signal from all-wrong groups, unlike psr_nsr). Metrics:
    :func:`compute_grpo_nsr_metrics`.

    Args: token_level_rewards, response_mask, token_level_scores [B, T]; index [B]. Returns (advantages, returns).
    """
    check_extra_kwargs(kwargs, "compute_grpo_nsr_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask, token_level_scores=token_level_scores)
    w = nsr_weights(config, "grpo_nsr", "grpo_dual_adv")
    a = _grpo_row_advantage(token_level_rewards.sum(dim=-1), index, epsilon, norm_adv_by_std_in_grpo)
    if w.positive_weight != 1.0 or w.negative_weight != 1.0:
        scores = token_level_rewards if token_level_scores is None else token_level_scores
        a = torch.where(correct_rows(scores, w.correctness_threshold), a * w.positive_weight, a * w.negative_weight)
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


@register_adv_est("grpo_passk")
@torch.no_grad()
def compute_grpo_passk_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                         norm_adv_by_std_in_grpo=True, config=None, *, out=None, **kwargs):
    """Pass@k GRPO (Chen et al. 2025, arXiv 2503.19595): only the best row of each group gets
    ``s_max - s_second`` (divided by ``std_g + eps`` if normalizing); every other row 0; ties give 0.

    As in verl, a given ``config`` decides the normalization (``config.norm_adv_by_std_in_grpo``, default True) and
    the argument is used only without a config. Needs at least 2 rows per group. Returns (advantages, returns)
    [B, T], the same tensor.
    """
    check_extra_kwargs(kwargs, "compute_grpo_passk_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    if config is not None:
        norm_adv_by_std_in_grpo = config_get(config, "norm_adv_by_std_in_grpo", True)
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
