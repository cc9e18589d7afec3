"""Policy-gradient losses behind a registry: vanilla (PPO with dual clip), gspo, gpg, clip_cov, kl_cov.

Semantics follow reference/algorithms-semantics.md §1.5. Every registered loss has the signature
``fn(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights) -> (loss, metrics)`` with [B, T]
tensors, ``params`` a :class:`PolicyLossParams`, and metrics detached 0-dim tensors computed on this shard
(``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``; gpg reports none). The loss is aggregated with
``agg_loss`` and the global counts in ``params``, so shards sum to the whole-batch loss (see agg.py).

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ttrl_megatron.algorithms.agg import agg_loss
from ttrl_megatron.algorithms.masked import masked_mean
from ttrl_megatron.algorithms.registry import Registry

_LOG_RATIO_CLAMP = 20.0  # keeps exp() finite for tokens whose probability moved a lot


@dataclass(frozen=True)
class PolicyLossParams:
    """Everything a policy loss may read besides the tensors (built by compute_policy_loss)."""

    loss_agg_mode: str
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_c: float
    clip_cov_ratio: float
    clip_cov_lb: float
    clip_cov_ub: float
    kl_cov_ratio: float
    ppo_kl_coef: float
    loss_scale_factor: float | None
    global_num_tokens: object
    global_num_seqs: object
    generator: torch.Generator | None  # randomness of clip_cov's token selection

    def agg(self, loss_mat: torch.Tensor, mask: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        return agg_loss(loss_mat, mask, mode or self.loss_agg_mode, self.loss_scale_factor,
                        global_num_tokens=self.global_num_tokens, global_num_seqs=self.global_num_seqs)


PolicyLossFn = Callable[..., tuple]
_POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", "actor.policy_loss.loss_mode")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a policy loss under ``name``."""
    return _POLICY_LOSSES.register(name)


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The loss registered under ``name``; unknown names raise ValueError listing the valid ones."""
    return _POLICY_LOSSES.get(name)


def list_policy_losses() -> list[str]:
    """Sorted names of all registered policy losses."""
    return _POLICY_LOSSES.names()


def _weighted(loss_mat: torch.Tensor, rollout_is_weights: torch.Tensor | None) -> torch.Tensor:
    return loss_mat if rollout_is_weights is None else loss_mat * rollout_is_weights


def _detached(x: torch.Tensor) -> torch.Tensor:
    return x.detach()


@register_policy_loss("vanilla")
def compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights=None):
    """PPO clipped surrogate (Schulman et al. 2017) with dual clip (Ye et al. 2020, arXiv 1912.09729) for A < 0."""
    if params.clip_ratio_c <= 1.0:
        raise ValueError(f"actor.clip_ratio_c must be > 1.0 for the dual clip, got {params.clip_ratio_c}")
    log_ratio = torch.clamp(log_prob - old_log_prob, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - params.clip_ratio_low, 1.0 + params.clip_ratio_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * params.clip_ratio_c
    negative = advantages < 0
    loss_mat = torch.where(negative, torch.minimum(loss3, clipped), clipped)
    loss = params.agg(_weighted(loss_mat, rollout_is_weights), response_mask)
    metrics = {
        "actor/pg_clipfrac": masked_mean((loss2 > loss1).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": masked_mean(((clipped > loss3) & negative).to(loss1.dtype), response_mask),
    }
    return loss, {k: _detached(v) for k, v in metrics.items()}


@register_policy_loss("gspo")
def compute_policy_loss_gspo(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights=None):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): sequence-level ratio ``exp(mean_t(logp - old))`` as value, token
    log-prob gradients; clipped; always aggregated seq-mean-token-mean (the configured mode is not used)."""
    log_ratio = log_prob - old_log_prob
    mask = response_mask.to(log_ratio.dtype)
    seq_log_ratio = (torch.where(response_mask != 0, log_ratio, 0.0) * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    token_log_ratio = log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(token_log_ratio, max=10.0))
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - params.clip_ratio_low, 1.0 + params.clip_ratio_high)
    loss_mat = torch.maximum(loss1, loss2)
    loss = params.agg(_weighted(loss_mat, rollout_is_weights), response_mask, "seq-mean-token-mean")
    metrics = {
        "actor/pg_clipfrac": masked_mean((loss2 > loss1).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(-log_ratio, response_mask),
        "actor/pg_clipfrac_lower": torch.zeros((), dtype=loss1.dtype, device=loss1.device),
    }
    return loss, {k: _detached(v) for k, v in metrics.items()}


@register_policy_loss("gpg")
def compute_policy_loss_gpg(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights=None):
    """GPG (Chu et al. 2025, arXiv 2504.02546): plain policy gradient ``-logp * A`` (no ratio, no clip), no metrics."""
    loss = params.agg(_weighted(-log_prob * advantages, rollout_is_weights), response_mask)
    return loss, {}


def _centered_cov(advantages, log_prob, response_mask) -> torch.Tensor:
    """[B, T] per-token ``(A - mean A)(logp - mean logp)`` with means over valid tokens; no gradient."""
    adv, logp = advantages.detach(), log_prob.detach()
    return (adv - masked_mean(adv, response_mask)) * (logp - masked_mean(logp, response_mask))


@register_policy_loss("clip_cov")
def compute_policy_loss_clip_cov(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights=None):
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): zero the gradient of a random subset (up to clip_cov_ratio of
    the valid tokens) of the unclipped tokens whose covariance lies in (clip_cov_lb, clip_cov_ub); no dual clip."""
    ratio = torch.exp(log_prob - old_log_prob)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - params.clip_ratio_low, 1.0 + params.clip_ratio_high)
    valid = response_mask != 0
    cov = _centered_cov(advantages, log_prob, response_mask)
    eligible = valid & ~(loss2 > loss1) & (cov > params.clip_cov_lb) & (cov < params.clip_cov_ub)
    candidates = torch.nonzero(eligible.reshape(-1)).squeeze(-1)
    budget = max(int(params.clip_cov_ratio * int(valid.sum())), 1)
    perm = torch.randperm(candidates.numel(), generator=params.generator, device="cpu").to(candidates.device)
    keep = torch.ones(eligible.numel(), dtype=loss1.dtype, device=loss1.device)
    keep[candidates[perm[:budget]]] = 0.0
    keep = keep.reshape(eligible.shape)
    loss_mat = torch.maximum(loss1, loss2) * keep
    loss = params.agg(_weighted(loss_mat, rollout_is_weights), response_mask)
    metrics = {
        "actor/pg_clipfrac": masked_mean((keep == 0).to(loss1.dtype), response_mask),
        "actor/ppo_kl": masked_mean(old_log_prob - log_prob, response_mask),
        "actor/pg_clipfrac_lower": torch.zeros((), dtype=loss1.dtype, device=loss1.device),
    }
    return loss, {k: _detached(v) for k, v in metrics.items()}


@register_policy_loss("kl_cov")
def compute_policy_loss_kl_cov(old_log_prob, log_prob, advantages, response_mask, params, rollout_is_weights=None):
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): unclipped ``-A r``; the top kl_cov_ratio of valid tokens by
    covariance also get ``ppo_kl_coef * |logp - old|``. Metric actor/ppo_kl is mean |logp - old|."""
    log_ratio = log_prob - old_log_prob
    abs_kl = log_ratio.abs()
    loss_mat = -advantages * torch.exp(log_ratio)
    valid_idx = torch.nonzero((response_mask != 0).reshape(-1)).squeeze(-1)
    if valid_idx.numel() > 0:
        # Covariance against the means of the valid tokens only (they are the population being ranked).
        adv = advantages.detach().reshape(-1)[valid_idx]
        logp = log_prob.detach().reshape(-1)[valid_idx]
        cov = (adv - adv.mean()) * (logp - logp.mean())
        k = max(1, int(valid_idx.numel() * params.kl_cov_ratio))
        top = valid_idx[torch.topk(cov, k).indices]
        penalty = torch.zeros(loss_mat.numel(), dtype=loss_mat.dtype, device=loss_mat.device)
        penalty[top] = 1.0
        loss_mat = loss_mat + params.ppo_kl_coef * abs_kl * penalty.reshape(loss_mat.shape)
    loss = params.agg(_weighted(loss_mat, rollout_is_weights), response_mask)
    zero = torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device)
    metrics = {"actor/pg_clipfrac": zero, "actor/ppo_kl": masked_mean(abs_kl, response_mask),
               "actor/pg_clipfrac_lower": zero}
    return loss, {k: _detached(v) for k, v in metrics.items()}
