"""Actor and critic losses: ``compute_policy_loss`` (dispatch to the policy-loss registry), ``compute_value_loss``,
plus re-exports of ``agg_loss``, the entropy helpers and the policy-loss registry.

Semantics follow reference/algorithms-semantics.md §1.5-§1.7. All losses take the whole-mini-batch counts
``global_num_tokens`` / ``global_num_seqs`` so the engine can make them independent of micro-batching and DP sharding
(see agg.py for exactly what they mean).

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.agg import LOSS_AGG_MODES, agg_loss  # noqa: F401
from ttrl_megatron.algorithms.entropy import entropy_from_logits, entropy_from_logits_chunked  # noqa: F401
from ttrl_megatron.algorithms.masked import masked_mean
from ttrl_megatron.algorithms.policy_losses import (  # noqa: F401
    PolicyLossParams,
    compute_policy_loss_clip_cov,
    compute_policy_loss_gpg,
    compute_policy_loss_gspo,
    compute_policy_loss_kl_cov,
    compute_policy_loss_vanilla,
    get_policy_loss_fn,
    list_policy_losses,
    register_policy_loss,
)


def compute_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                        clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0,
                        loss_mode="vanilla", *, loss_scale_factor=None, global_num_tokens=None,
                        global_num_seqs=None, rollout_is_weights=None, clip_cov_ratio=2e-4, clip_cov_lb=1.0,
                        clip_cov_ub=5.0, kl_cov_ratio=2e-4, ppo_kl_coef=0.1, generator=None):
    """Policy-gradient loss of ``loss_mode`` (actor.policy_loss.loss_mode).

    Args:
        old_log_prob, log_prob, advantages, response_mask: [B, T]; log_prob carries the gradient.
        clip_ratio_low / clip_ratio_high: default to clip_ratio when None. clip_ratio_c: dual-clip bound (> 1).
        global_num_tokens / global_num_seqs / loss_scale_factor: see agg.py.
        rollout_is_weights: optional [B, T] per-token importance weights multiplying the loss.
        clip_cov_* / kl_cov_ratio / ppo_kl_coef / generator: clip_cov and kl_cov settings.
    Returns:
        (pg_loss 0-dim tensor, metrics dict of detached 0-dim tensors).
    """
    for name, tensor in (("log_prob", log_prob), ("advantages", advantages), ("response_mask", response_mask),
                         ("rollout_is_weights", rollout_is_weights)):
        if tensor is not None and tensor.shape != old_log_prob.shape:
            raise ValueError(f"{name} must have the shape of old_log_prob {tuple(old_log_prob.shape)}, "
                             f"got {tuple(tensor.shape)}")
    params = PolicyLossParams(
        loss_agg_mode=loss_agg_mode,
        clip_ratio_low=clip_ratio if clip_ratio_low is None else clip_ratio_low,
        clip_ratio_high=clip_ratio if clip_ratio_high is None else clip_ratio_high,
        clip_ratio_c=clip_ratio_c, clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb, clip_cov_ub=clip_cov_ub,
        kl_cov_ratio=kl_cov_ratio, ppo_kl_coef=ppo_kl_coef, loss_scale_factor=loss_scale_factor,
        global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs, generator=generator,
    )
    return get_policy_loss_fn(loss_mode)(old_log_prob, log_prob, advantages, response_mask, params,
                                         rollout_is_weights)


def compute_value_loss(vpreds, returns, values, response_mask, cliprange_value, loss_agg_mode="token-mean", *,
                       loss_scale_factor=None, global_num_tokens=None, global_num_seqs=None):
    """Clipped value loss (PPO critic): ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))`` with
    ``v_clip = clip(vpreds, values - c, values + c)``.

    Args: vpreds (with gradient), returns, values (old values), response_mask [B, T]; cliprange_value c
    (critic.cliprange_value). Returns (vf_loss 0-dim, vf_clipfrac detached 0-dim = share of valid tokens where the
    clipped error is the larger one).
    """
    for name, tensor in (("returns", returns), ("values", values), ("response_mask", response_mask)):
        if tensor.shape != vpreds.shape:
            raise ValueError(f"{name} must have the shape of vpreds {tuple(vpreds.shape)}, got {tuple(tensor.shape)}")
    clipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    err = (vpreds - returns).square()
    err_clipped = (clipped - returns).square()
    loss = 0.5 * agg_loss(torch.maximum(err, err_clipped), response_mask, loss_agg_mode, loss_scale_factor,
                          global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs)
    clipfrac = masked_mean((err_clipped > err).to(err.dtype), response_mask)
    return loss, clipfrac.detach()
