"""Policy losses sapo, geo_mean (GMPO) and cispo, registered under verl's names with verl's signature
(see policy_losses.py for the calling convention and the metrics).

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

from ttrl_megatron.algorithms.loss_config import clip_ratios, config_get, global_batch_info
from ttrl_megatron.algorithms.masked import masked_mean
from ttrl_megatron.algorithms.policy_losses import (
    aggregate, check_loss_inputs, detached, register_policy_loss, weighted, zero_like,
)

_LOG_RATIO_CLAMP = 20.0


@register_policy_loss("sapo")
def compute_policy_loss_sapo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-mean",
                             config=None, rollout_is_weights=None):
    """SAPO, soft adaptive policy optimization (Gao et al. 2025, arXiv 2511.20347): the hard PPO clip is replaced by
    a smooth gate of the token ratio ``r = exp(logp - old)``::

        f(r; tau) = sigmoid(tau (r - 1)) * 4 / tau,   loss_t = -f(r_t; tau_t) A_t,
        tau_t = tau_pos if A_t > 0 else tau_neg.

    At r = 1 the gate's slope is 1, so the gradient equals the on-policy policy gradient; it decays smoothly as r
    leaves 1 (faster for the larger tau_neg on negative advantages). Reads ``config.tau_pos`` / ``config.tau_neg``
    (verl: ``actor.tau_pos`` 1.0, ``actor.tau_neg`` 1.05). Always aggregated seq-mean-token-mean (as verl; the
    ``loss_agg_mode`` argument is not used). pg_clipfrac and pg_clipfrac_lower are 0 (nothing is clipped).
    """
    who = "policy loss 'sapo'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    tau_pos = torch.as_tensor(config_get(config, "tau_pos", who=who), dtype=advantages.dtype, device=advantages.device)
    tau_neg = torch.as_tensor(config_get(config, "tau_neg", who=who), dtype=advantages.dtype, device=advantages.device)
    if not (tau_pos > 0 and tau_neg > 0):
        raise ValueError(f"actor.tau_pos and actor.tau_neg must be > 0, got {float(tau_pos)} and {float(tau_neg)}")
    log_ratio = torch.clamp(log_prob - old_log_prob, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    loss = aggregate(weighted(-gate * advantages, rollout_is_weights), response_mask, "seq-mean-token-mean", config)
    zero = zero_like(loss)
    return loss, detached({"actor/pg_clipfrac": zero, "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
                           "actor/pg_clipfrac_lower": zero})


@register_policy_loss("geo_mean")
def compute_policy_loss_geo_mean(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                 config=None, rollout_is_weights=None):
    """GMPO, geometric-mean policy optimization (Zhao et al. 2025, arXiv 2507.20673): the per-sequence objective
    uses the GEOMETRIC mean of the token ratios, clipped per token in log space::

        l_t = logp_t - old_t,  s = sign(A),  l~_t = s * min(s l_t, s clip(l_t, -eps_lo, eps_hi)),
        rho_i = exp(sum_t l~_t m_t / |y_i|),  a_i = sum_t A_t m_t / |y_i|,  loss_i = -a_i rho_i,

    (|y_i| = valid tokens + 1e-8, as verl; only sequence-level advantages match the paper). The loss is the mean of
    loss_i over the rows (verl: torch.mean over the micro-batch; with ``global_batch_info`` it is this shard's share
    of the mean over ``global_batch_size`` sequences, times ``dp_size``). ``loss_agg_mode`` is not used.
    ``rollout_is_weights`` enter as their per-sequence geometric mean. Metrics: pg_clipfrac / pg_clipfrac_lower =
    share of valid tokens whose log-ratio was clipped with A > 0 / A < 0.
    """
    who = "policy loss 'geo_mean'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = clip_ratios(config, who)
    mask = response_mask.to(log_prob.dtype)
    log_ratio = torch.where(response_mask != 0, log_prob - old_log_prob, 0.0)
    sign = torch.sign(advantages)
    clamped = torch.clamp(log_ratio, -low, high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clamped)
    length = mask.sum(dim=-1) + 1e-8
    seq_ratio = torch.exp((pessimistic * mask).sum(dim=-1) / length)
    seq_adv = (torch.where(response_mask != 0, advantages, 0.0) * mask).sum(dim=-1) / length
    seq_loss = -seq_adv * seq_ratio
    if rollout_is_weights is not None:
        log_w = torch.where(response_mask != 0, torch.log(rollout_is_weights + 1e-10), 0.0)
        seq_loss = seq_loss * torch.exp((log_w * mask).sum(dim=-1) / length)
    info = global_batch_info(config)
    rows = info.get("global_batch_size")
    rows = seq_loss.shape[0] if rows is None else rows
    loss = seq_loss.sum() / max(float(rows), 1.0) * int(info.get("dp_size", 1))
    clipped = (log_ratio != clamped).to(log_prob.dtype)
    return loss, detached({
        "actor/pg_clipfrac": masked_mean(clipped * (advantages > 0), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": masked_mean(clipped * (advantages < 0), response_mask),
    })


@register_policy_loss("cispo")
def compute_policy_loss_cispo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                              config=None, rollout_is_weights=None):
    """CISPO, clipped IS-weight policy optimization (MiniMax-M1, MiniMax et al. 2025, arXiv 2506.13585): clip the
    importance weight, not the update, and keep every token's gradient::

        r = exp(logp - old),  loss_t = -sg(clip(r_t, 1 - eps_lo, 1 + eps_hi)) * A_t * logp_t,

    aggregated with ``loss_agg_mode``. Metric pg_clipfrac = share of valid tokens whose weight was clipped.
    """
    who = "policy loss 'cispo'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = clip_ratios(config, who)
    log_ratio = torch.clamp(log_prob - old_log_prob, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - low, 1.0 + high).detach()
    loss_mat = -clipped_ratio * advantages * log_prob
    loss = aggregate(weighted(loss_mat, rollout_is_weights), response_mask, loss_agg_mode, config)
    return loss, detached({
        "actor/pg_clipfrac": masked_mean((ratio != clipped_ratio).to(ratio.dtype), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": zero_like(loss),
    })
