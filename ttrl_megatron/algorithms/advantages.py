"""Advantage estimators: the registry, every built-in estimator, and ``compute_advantage``, the trainer's one entry.

Built-ins (verl names, reference/algorithms-semantics.md §1.4 and §3): gae, grpo, grpo_nsr, rloo, reinforce_plus_plus,
reinforce_plus_plus_baseline, remax, opo, gpg, grpo_passk, psr_nsr. Each is also importable under verl's function
name (``compute_<name>_outcome_advantage``, ``compute_gae_advantage_return``).

How the trainer calls it. An estimator is a function of keyword arguments from one vocabulary (adv_registry.py); it
takes only what it uses and ``compute_advantage`` refuses anything else, so nothing is ignored silently. The trainer
decides at setup which inputs and config values to pass, once:

    params, required = adv_estimator_params(cfg.adv_estimator)       # e.g. grpo: token_level_rewards, response_mask,
    static = {k: v for k, v in estimator_cfg.items() if k in params}  #   index, epsilon, norm_adv_by_std_in_grpo, out
    ...
    advantages, returns = compute_advantage(cfg.adv_estimator, token_level_rewards=R, response_mask=M, index=uid,
                                            **static)

where ``estimator_cfg`` holds gamma, lam, norm_adv_by_std_in_grpo and the estimator's own section (e.g.
algorithm.grpo_nsr's positive_weight / negative_weight / correctness_threshold), and the tensors are added when the
estimator lists them (values for gae, reward_baselines for remax, token_level_scores for grpo_nsr / psr_nsr).

Differences from verl a porter should know (all deliberate):
- No estimator takes verl's ``config`` object; pass the values as keyword arguments (grpo_passk reads
  ``norm_adv_by_std_in_grpo`` from its argument, not from config).
- Group statistics are float64 and a uniform group gives exactly 0 even when its common score is not exactly
  representable (verl's float32 mean of e.g. seven 0.1s leaves a ~1e-8 residual that the std division can amplify).
- ``rloo`` keeps verl's loop semantics (a singleton keeps its score); ``grpo_vectorized`` / ``rloo_vectorized`` are
  not registered (grpo/rloo already are vectorized).
- ``psr_nsr`` takes ``positive_weight`` / ``negative_weight`` / ``correctness_threshold`` and uses token_level_scores
  for correctness instead of asserting 0/1 rewards.
- Outcome estimators accept ``out=`` to reuse a [B, T] buffer across steps.

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from ttrl_megatron.algorithms.adv_outcome import (  # noqa: F401  (importing registers the estimators)
    compute_gpg_outcome_advantage,
    compute_grpo_nsr_metrics,
    compute_grpo_nsr_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_rloo_outcome_advantage,
)
from ttrl_megatron.algorithms.adv_registry import (  # noqa: F401
    adv_estimator_params,
    get_adv_estimator_fn,
    list_adv_estimators,
    register_adv_est,
)
from ttrl_megatron.algorithms.adv_token import (  # noqa: F401
    compute_gae_advantage_return,
    compute_psr_nsr_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    discounted_returns,
)


def compute_advantage(adv_estimator, **kwargs):
    """Run the registered estimator ``adv_estimator`` with ``kwargs``; returns (advantages [B, T], returns [B, T]).

    Raises ValueError naming the estimator if an argument is one it does not use, or a required one is missing.
    """
    fn = get_adv_estimator_fn(adv_estimator)
    params, required = adv_estimator_params(adv_estimator)
    name = getattr(adv_estimator, "value", adv_estimator)
    unused = sorted(set(kwargs) - params)
    if unused:
        raise ValueError(f"advantage estimator {name!r} does not use {unused}; it takes: {', '.join(sorted(params))}")
    missing = sorted(required - set(kwargs))
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {missing}")
    return fn(**kwargs)
