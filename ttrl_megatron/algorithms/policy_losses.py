"""Policy-gradient losses behind a registry, with verl's calling convention.

Every registered loss has verl's signature (``verl/trainer/ppo/core_algos.py``)::

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
       rollout_is_weights=None) -> (pg_loss, metrics)

with [B, T] tensors, ``config`` the actor config read as verl reads it (loss_config.py: ``clip_ratio*``,
``clip_ratio_c``, ``tau_pos``/``tau_neg``, ``policy_loss.*``, ``global_batch_info``), ``rollout_is_weights`` an
optional [B, T] tensor of rollout-correction weights that multiplies the per-token loss (verl's rule), and metrics
``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower`` computed on this shard. The loss is aggregated
with ``agg_loss(..., **config.global_batch_info)``, so shards sum to the whole-batch loss (see agg.py). The actor
(megatron/actor.py) calls every loss exactly like verl's actor:
``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=..., config=..., rollout_is_weights=...)``.

Differences from verl a porter should know (deliberate): metric values are detached 0-dim tensors, not Python floats
(no device sync per micro-batch; ``float(v)`` gives verl's number); clip_cov and kl_cov also report
``actor/pg_clipfrac_lower`` (0); clip_cov draws its random token choice on the log-probs' device from
``config.generator`` (see :func:`compute_policy_loss_clip_cov`). The new losses (sapo, geo_mean, cispo) live in
policy_losses_extra.py.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from typing import Callable

import torch

from ttrl_megatron.algorithms.agg import agg_loss
from ttrl_megatron.algorithms.loss_config import clip_ratios, config_get, global_batch_info, policy_loss_value
from ttrl_megatron.algorithms.masked import masked_mean
from ttrl_megatron.algorithms.registry import Registry, accepts_call

_LOG_RATIO_CLAMP = 20.0  # keeps exp() finite for tokens whose probability moved a lot

PolicyLossFn = Callable[..., tuple]
_POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", "actor_rollout_ref.actor.policy_loss.loss_mode")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a policy loss under ``name`` (verl's). Registering a taken name raises."""
    return _POLICY_LOSSES.register(name)


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The loss registered under ``name``; unknown names raise ValueError listing the valid ones."""
    return _POLICY_LOSSES.get(name)


def list_policy_losses() -> list[str]:
    """Sorted names of all registered policy losses."""
    return _POLICY_LOSSES.names()


def check_policy_loss_call(name: str) -> None:
    """Raise ValueError (naming the config field) unless the loss registered under ``name`` accepts verl's actor
    call ``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=, config=, rollout_is_weights=)``."""
    why = accepts_call(get_policy_loss_fn(name), 4, ("loss_agg_mode", "config", "rollout_is_weights"))
    if why:
        raise ValueError(f"actor_rollout_ref.actor.policy_loss.loss_mode={name}: the registered function cannot take "
                         f"verl's call fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode=, "
                         f"config=, rollout_is_weights=) ({why})")


def check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights=None) -> None:
    """Raise one clear error if the [B, T] inputs disagree in shape."""
    for name, tensor in (("log_prob", log_prob), ("advantages", advantages), ("response_mask", response_mask),
                         ("rollout_is_weights", rollout_is_weights)):
        if tensor is not None and tensor.shape != old_log_prob.shape:
            raise ValueError(f"{name} must have the shape of old_log_prob {tuple(old_log_prob.shape)}, "
                             f"got {tuple(tensor.shape)}")


def weighted(loss_mat: torch.Tensor, rollout_is_weights: torch.Tensor | None) -> torch.Tensor:
    """verl's rollout correction: the per-token loss times the (gradient-free) IS weights, before aggregation."""
    return loss_mat if rollout_is_weights is None else loss_mat * rollout_is_weights


def aggregate(loss_mat, response_mask, loss_agg_mode, config) -> torch.Tensor:
    """``agg_loss(loss_mat, response_mask, loss_agg_mode, **config.global_batch_info)``, as every verl loss does."""
    return agg_loss(loss_mat, response_mask, loss_agg_mode, **global_batch_info(config))


def detached(metrics: dict) -> dict:
    return {k: v.detach() for k, v in metrics.items()}


def zero_like(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


@register_policy_loss("vanilla")
def compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                config=None, rollout_is_weights=None):
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with dual clip (Ye et al. 2020,
    arXiv 1912.09729) for A < 0: ``max(-A r, -A clip(r, 1-eps_lo, 1+eps_hi))``, capped at ``-A c`` when A < 0.

    Reads ``clip_ratio``, ``clip_ratio_low/high`` (None = clip_ratio), ``clip_ratio_c`` (default 3.0, must be > 1).
    """
    who = "policy loss 'vanilla'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = clip_ratios(config, who)
    clip_ratio_c = config_get(config, "clip_ratio_c", 3.0, who=who)
    if clip_ratio_c <= 1.0:
        raise ValueError(f"actor.clip_ratio_c must be > 1.0 for the dual clip, got {clip_ratio_c}")
    log_ratio = torch.clamp(log_prob - old_log_prob, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_ratio_c
    negative = advantages < 0
    loss_mat = torch.where(negative, torch.minimum(loss3, clipped), clipped)
    loss = aggregate(weighted(loss_mat, rollout_is_weights), response_mask, loss_agg_mode, config)
    return loss, detached({
        "actor/pg_clipfrac": masked_mean((loss2 > loss1).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": masked_mean(((clipped > loss3) & negative).to(loss1.dtype), response_mask),
    })


@register_policy_loss("gspo")
def compute_policy_loss_gspo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-mean",
                             config=None, rollout_is_weights=None):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): sequence-level ratio ``exp(mean_t(logp - old))`` as value, token
    log-prob gradients; clipped; always aggregated seq-mean-token-mean (``loss_agg_mode`` is not used, as in verl)."""
    who = "policy loss 'gspo'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    low, high = clip_ratios(config, who)
    log_ratio = log_prob - old_log_prob
    mask = response_mask.to(log_ratio.dtype)
    seq_log_ratio = (torch.where(response_mask != 0, log_ratio, 0.0) * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    token_log_ratio = log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(token_log_ratio, max=10.0))
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    loss_mat = torch.maximum(loss1, loss2)
    loss = aggregate(weighted(loss_mat, rollout_is_weights), response_mask, "seq-mean-token-mean", config)
    return loss, detached({
        "actor/pg_clipfrac": masked_mean((loss2 > loss1).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": zero_like(loss1),
    })


@register_policy_loss("gpg")
def compute_policy_loss_gpg(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                            config=None, rollout_is_weights=None):
    """GPG (Chu et al. 2025, arXiv 2504.02546): plain policy gradient ``-logp * A`` (no ratio, no clip), no metrics."""
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    loss = aggregate(weighted(-log_prob * advantages, rollout_is_weights), response_mask, loss_agg_mode, config)
    return loss, {}


def _centered_cov(advantages, log_prob, response_mask) -> torch.Tensor:
    """[B, T] per-token ``(A - mean A)(logp - mean logp)`` with means over valid tokens; no gradient."""
    adv, logp = advantages.detach(), log_prob.detach()
    return (adv - masked_mean(adv, response_mask)) * (logp - masked_mean(logp, response_mask))


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    gdev = generator.device
    if gdev.type != device.type or (gdev.index or 0) != (device.index or 0):
        raise ValueError(f"clip_cov draws its random token choice on the device of the log-probs ({device}), but "
                         f"config.generator lives on {gdev}; create it with torch.Generator(device=<that device>)")


def random_subset(eligible: torch.Tensor, budget: torch.Tensor, generator) -> torch.Tensor:
    """Bool mask of a uniformly random subset of ``min(budget, #eligible)`` of the True entries of ``eligible``.

    Everything happens on ``eligible``'s device, without a host sync: uniform keys from ``generator`` (which must
    live on that device; None = that device's global RNG), non-eligible entries pushed past every eligible one, and
    the entries whose rank in key order is below ``budget`` (a 0-dim tensor) are taken.
    """
    flat = eligible.reshape(-1)
    keys = torch.rand(flat.shape, generator=generator, device=flat.device, dtype=torch.float32)
    keys = torch.where(flat, keys, torch.full((), 2.0, device=flat.device))  # rand < 1 < 2: eligible sort first
    order = torch.argsort(keys)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return ((rank < budget) & flat).reshape(eligible.shape)


@register_policy_loss("clip_cov")
def compute_policy_loss_clip_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                 config=None, rollout_is_weights=None):
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): zero the gradient of a random subset of up to
    ``max(int(clip_cov_ratio * N_valid), 1)`` tokens among the valid, not-already-clipped tokens whose covariance
    ``(A - mean A)(logp - mean logp)`` lies in (clip_cov_lb, clip_cov_ub); loss ``max(-A r, -A clip(r))``, no dual
    clip. Reads ``clip_ratio*`` and ``policy_loss.clip_cov_{ratio,lb,ub}`` (None = 2e-4, 1.0, 5.0 as verl).

    The random choice is drawn on the device of ``log_prob`` with ``config.generator`` (a torch.Generator on that
    device, e.g. seeded identically on every tensor-parallel rank so they zero the same tokens); without one, that
    device's global RNG. A generator on another device raises (verl draws on the host from the global RNG).
    """
    who = "policy loss 'clip_cov'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    generator = config_get(config, "generator", None)
    _check_generator(generator, log_prob.device)
    low, high = clip_ratios(config, who)
    clip_cov_ratio = policy_loss_value(config, "clip_cov_ratio", 0.0002, who)
    clip_cov_lb = policy_loss_value(config, "clip_cov_lb", 1.0, who)
    clip_cov_ub = policy_loss_value(config, "clip_cov_ub", 5.0, who)
    if clip_cov_ratio <= 0:
        raise ValueError(f"actor.policy_loss.clip_cov_ratio must be > 0, got {clip_cov_ratio}")
    ratio = torch.exp(log_prob - old_log_prob)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    valid = response_mask != 0
    cov = _centered_cov(advantages, log_prob, response_mask)
    eligible = valid & ~(loss2 > loss1) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    # int(ratio * N_valid) of verl, as a device tensor: float64 makes floor() agree with Python's int() exactly.
    budget = torch.clamp(torch.floor(valid.sum(dtype=torch.float64) * clip_cov_ratio), min=1)
    keep = 1.0 - random_subset(eligible, budget, generator).to(loss1.dtype)
    loss_mat = torch.maximum(loss1, loss2) * keep
    loss = aggregate(weighted(loss_mat, rollout_is_weights), response_mask, loss_agg_mode, config)
    return loss, detached({
        "actor/pg_clipfrac": masked_mean((keep == 0).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(old_log_prob - log_prob, response_mask),
        "actor/pg_clipfrac_lower": zero_like(loss1),
    })


@register_policy_loss("kl_cov")
def compute_policy_loss_kl_cov(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                               config=None, rollout_is_weights=None):
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): unclipped ``-A r``; the top ``max(1, int(N_valid kl_cov_ratio))``
    valid tokens by covariance also get ``ppo_kl_coef * |logp - old|``. Reads ``policy_loss.kl_cov_ratio`` and
    ``policy_loss.ppo_kl_coef`` (None = 2e-4 and 1.0, verl's fallbacks). Metric actor/ppo_kl is mean |logp - old|."""
    who = "policy loss 'kl_cov'"
    check_loss_inputs(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
    kl_cov_ratio = policy_loss_value(config, "kl_cov_ratio", 0.0002, who)
    ppo_kl_coef = policy_loss_value(config, "ppo_kl_coef", 1.0, who)
    if kl_cov_ratio <= 0:
        raise ValueError(f"actor.policy_loss.kl_cov_ratio must be > 0, got {kl_cov_ratio}")
    log_ratio = log_prob - old_log_prob
    abs_kl = log_ratio.abs()
    loss_mat = -advantages * torch.exp(log_ratio)
    valid_idx = torch.nonzero((response_mask != 0).reshape(-1)).squeeze(-1)
    if valid_idx.numel() > 0:
        # Covariance against the means of the valid tokens only (they are the population being ranked).
        adv = advantages.detach().reshape(-1)[valid_idx]
        logp = log_prob.detach().reshape(-1)[valid_idx]
        cov = (adv - adv.mean()) * (logp - logp.mean())
        k = max(1, int(valid_idx.numel() * kl_cov_ratio))
        top = valid_idx[torch.topk(cov, k).indices]
        penalty = torch.zeros(loss_mat.numel(), dtype=loss_mat.dtype, device=loss_mat.device)
        penalty[top] = 1.0
        loss_mat = loss_mat + ppo_kl_coef * abs_kl * penalty.reshape(loss_mat.shape)
    loss = aggregate(weighted(loss_mat, rollout_is_weights), response_mask, loss_agg_mode, config)
    zero = zero_like(loss_mat)
    return loss, detached({"actor/pg_clipfrac": zero, "actor/ppo_kl": masked_mean(abs_kl, response_mask),
                           "actor/pg_clipfrac_lower": zero})
