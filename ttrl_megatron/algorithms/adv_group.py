"""Outcome advantage estimators with other group baselines: rloo, rloo_vectorized, reinforce_plus_plus_baseline,
opo, gpg (reference/algorithms-semantics.md §1.4), with verl's signatures.

Same conventions as adv_outcome.py: one score per row ``s_i = sum_t R[i, t]``, a per-row advantage from the row's
group (rows sharing ``index``), broadcast over the response mask; float64 group statistics; ``returns`` is the
advantages tensor; no input is modified; keyword-only ``out=`` reuses a [B, T] buffer. ``epsilon`` and ``config``
are accepted and not read (as verl), and ``**kwargs`` takes verl's other call-site arguments (adv_registry.py).

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.adv_common import check_token_tensors
from ttrl_megatron.algorithms.adv_registry import check_extra_kwargs, register_adv_est
from ttrl_megatron.algorithms.groupwise import broadcast_rows, factorize_index, group_stats, segment_sum
from ttrl_megatron.algorithms.masked import masked_whiten


def _rloo_rows(token_level_rewards, index, singleton_keeps_score: bool) -> torch.Tensor:
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    stats = group_stats(scores, group_ids, num_groups)
    s = scores.to(torch.float64)
    n = stats.count.to(torch.float64)
    scale = n / (n - 1).clamp_min(1)
    lone = s if singleton_keeps_score else torch.zeros_like(s)
    return torch.where(stats.count > 1, s * scale - stats.mean * scale, lone)


@register_adv_est("rloo")
@torch.no_grad()
def compute_rloo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, config=None, *,
                                   out=None, **kwargs):
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): ``a_i = s_i - mean of the other rows of the group``
    ``= n/(n-1) * (s_i - mean_g)``; a singleton keeps ``s_i`` (verl's loop version). Returns (adv, adv) [B, T]."""
    check_extra_kwargs(kwargs, "compute_rloo_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    a = _rloo_rows(token_level_rewards, index, singleton_keeps_score=True)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


@register_adv_est("rloo_vectorized")
@torch.no_grad()
def compute_rloo_vectorized_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, config=None,
                                              *, out=None, **kwargs):
    """RLOO as verl's vectorized version defines it: like :func:`compute_rloo_outcome_advantage` except that a
    singleton group gets 0 (it has no other row to compare with). Returns (adv, adv) [B, T]."""
    check_extra_kwargs(kwargs, "compute_rloo_vectorized_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    a = _rloo_rows(token_level_rewards, index, singleton_keeps_score=False)
    adv = broadcast_rows(a, response_mask, token_level_rewards.dtype, out, (token_level_rewards,))
    return adv, adv


@register_adv_est("reinforce_plus_plus_baseline")
@torch.no_grad()
def compute_reinforce_plus_plus_baseline_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                                           config=None, **kwargs):
    """REINFORCE++ with group-mean baseline (Hu 2025, arXiv 2501.03262): ``s_i - mean_g`` (singleton mean 0) on
    every valid token, then whitened over all valid tokens of the batch and re-masked. Returns (adv, adv) [B, T]."""
    check_extra_kwargs(kwargs, "compute_reinforce_plus_plus_baseline_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    centered = scores.to(torch.float64) - group_stats(scores, group_ids, num_groups).mean
    tiled = broadcast_rows(centered, response_mask, token_level_rewards.dtype)
    adv = masked_whiten(tiled, response_mask) * response_mask
    return adv, adv


@register_adv_est("opo")
@torch.no_grad()
def compute_opo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, config=None, *, out=None,
                                  **kwargs):
    """OPO (Hao et al. 2025, arXiv 2505.23585): length-weighted baseline ``b_g = sum_j L_j s_j / sum_j L_j``
    (L_j = valid tokens of row j); ``a_i = s_i - b_g``. Singleton, or a group of empty rows: b = 0. Uniform: 0."""
    check_extra_kwargs(kwargs, "compute_opo_outcome_advantage")
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
def compute_gpg_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, f_norm=1.0, alpha=None,
                                  config=None, *, out=None, **kwargs):
    """GPG (Chu et al. 2025, arXiv 2504.02546): ``a_i = alpha * (s_i - mean_g) / f_norm`` with
    ``alpha = B / max(#rows with s != 0 in the batch, 1)``; no std. Pair with loss_mode=gpg.

    verl computes alpha always and ignores its ``alpha`` argument (default 1.0); here ``alpha=None`` (the default)
    computes it and an explicit value is used as given.
    """
    check_extra_kwargs(kwargs, "compute_gpg_outcome_advantage")
    check_token_tensors(token_level_rewards, response_mask)
    scores = token_level_rewards.sum(dim=-1)
    group_ids, num_groups = factorize_index(index, scores.shape[0], device=scores.device)
    centered = scores.to(torch.float64) - group_stats(scores, group_ids, num_groups).mean
    if alpha is None:
        alpha = scores.shape[0] / max(int(torch.count_nonzero(scores)), 1)
    adv = broadcast_rows(alpha * centered / f_norm, response_mask, token_level_rewards.dtype, out,
                         (token_level_rewards,))
    return adv, adv
