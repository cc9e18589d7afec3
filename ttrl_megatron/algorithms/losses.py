"""Actor and critic losses with verl's signatures: ``compute_policy_loss`` (verl's PPO function), ``compute_value_loss``,
``compute_entropy_loss``, plus re-exports of ``agg_loss``, the entropy helpers and the policy-loss registry.

Semantics follow reference/algorithms-semantics.md §1.5-§1.7 and verl's ``core_algos``. Every loss takes verl's
whole-mini-batch arguments (``dp_size``, ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``) so the
engine can make it independent of micro-batching and DP sharding (agg.py says exactly what they mean).

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms import policy_losses_extra  # noqa: F401  (registers sapo, geo_mean, cispo)
from ttrl_megatron.algorithms.agg import LOSS_AGG_MODES, agg_loss  # noqa: F401
from ttrl_megatron.algorithms.entropy import entropy_from_logits, entropy_from_logits_chunked  # noqa: F401
from ttrl_megatron.algorithms.loss_config import ActorLossConfig, PolicyLossSettings  # noqa: F401
from ttrl_megatron.algorithms.masked import masked_mean
from ttrl_megatron.algorithms.policy_losses import (  # noqa: F401
    compute_policy_loss_clip_cov,
    compute_policy_loss_gpg,
    compute_policy_loss_gspo,
    compute_policy_loss_kl_cov,
    compute_policy_loss_vanilla,
    get_policy_loss_fn,
    list_policy_losses,
    register_policy_loss,
)
from ttrl_megatron.algorithms.policy_losses_extra import (  # noqa: F401
    compute_policy_loss_cispo,
    compute_policy_loss_geo_mean,
    compute_policy_loss_sapo,
)


def compute_policy_loss(old_log_prob, log_prob, advantages, response_mask, cliprange=None, cliprange_low=None,
                        cliprange_high=None, clip_ratio_c=3.0, loss_agg_mode="token-mean", *, rollout_is_weights=None,
                        dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    """verl's PPO loss function (deprecated there in favour of the registry): clipped surrogate with dual clip.

    Args:
        old_log_prob, log_prob, advantages, response_mask: [B, T]; log_prob carries the gradient.
        cliprange: PPO epsilon (required unless both cliprange_low and cliprange_high are given);
            cliprange_low / cliprange_high default to it. clip_ratio_c: dual-clip bound (> 1).
        loss_agg_mode: see agg.py.
        Keyword-only (ours): rollout_is_weights [B, T] (multiply the per-token loss) and the agg_loss arguments
            dp_size / batch_num_tokens / global_batch_size / loss_scale_factor.
    Returns:
        (pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower), 0-dim tensors (the last three detached), as verl.

    The other losses (gspo, clip_cov, ...) are reached through ``get_policy_loss_fn(loss_mode)``, as in verl.
    """
    if cliprange is None and (cliprange_low is None or cliprange_high is None):
        raise ValueError("compute_policy_loss needs cliprange (the PPO epsilon, actor.clip_ratio)")
    info = {"dp_size": dp_size, "batch_num_tokens": batch_num_tokens, "global_batch_size": global_batch_size,
            "loss_scale_factor": loss_scale_factor}
    config = {"clip_ratio": cliprange, "clip_ratio_low": cliprange_low, "clip_ratio_high": cliprange_high,
              "clip_ratio_c": clip_ratio_c, "global_batch_info": info}
    loss, metrics = compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
                                                config, rollout_is_weights)
    return loss, metrics["actor/pg_clipfrac"], metrics["actor/ppo_kl"], metrics["actor/pg_clipfrac_lower"]


def compute_value_loss(vpreds, returns, values, response_mask, cliprange_value, loss_agg_mode="token-mean",
                       dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    """Clipped value loss (PPO critic): ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))`` with
    ``v_clip = clip(vpreds, values - c, values + c)``; verl's signature.

    Args: vpreds (with gradient), returns, values (old values), response_mask [B, T]; cliprange_value c
    (critic.cliprange_value); the agg_loss arguments (agg.py). Returns (vf_loss 0-dim, vf_clipfrac detached 0-dim =
    share of valid tokens where the clipped error is the larger one).
    """
    for name, tensor in (("returns", returns), ("values", values), ("response_mask", response_mask)):
        if tensor.shape != vpreds.shape:
            raise ValueError(f"{name} must have the shape of vpreds {tuple(vpreds.shape)}, got {tuple(tensor.shape)}")
    clipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    err = (vpreds - returns).square()
    err_clipped = (clipped - returns).square()
    loss = 0.5 * agg_loss(torch.maximum(err, err_clipped), response_mask, loss_agg_mode, dp_size, batch_num_tokens,
                          global_batch_size, loss_scale_factor)
    clipfrac = masked_mean((err_clipped > err).to(err.dtype), response_mask)
    return loss, clipfrac.detach()


def compute_entropy_loss(logits, response_mask, loss_agg_mode: str = "token-mean"):
    """verl's helper: ``agg_loss(entropy_from_logits(logits), response_mask, loss_agg_mode)``; logits [B, T, V]."""
    return agg_loss(entropy_from_logits(logits), response_mask, loss_agg_mode)
