"""Registry of advantage estimators: ``register_adv_est``, ``get_adv_estimator_fn``, ``list_adv_estimators``.

Every registered estimator is a function taking keyword arguments only from the vocabulary below and returning
``(advantages [B, T], returns [B, T])``:

    token_level_rewards, response_mask, index, values, token_level_scores, reward_baselines,
    gamma, lam, norm_adv_by_std_in_grpo, epsilon, out, plus estimator-specific config
    (grpo_nsr / psr_nsr: positive_weight, negative_weight, correctness_threshold; gpg: f_norm, alpha).

``adv_estimator_params(name)`` tells which of them an estimator takes; ``compute_advantage`` (in advantages.py) rejects
any other argument instead of ignoring it. Pure python; must not import torch.distributed, megatron, vllm, hydra or
omegaconf.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ttrl_megatron.algorithms.registry import Registry

AdvEstimatorFn = Callable[..., tuple]

_ADV_ESTIMATORS: Registry[AdvEstimatorFn] = Registry("advantage estimator", "algorithm.adv_estimator")


def register_adv_est(name_or_enum) -> Callable[[AdvEstimatorFn], AdvEstimatorFn]:
    """Decorator registering an estimator under ``name_or_enum`` (a str or an Enum with a str value)."""
    return _ADV_ESTIMATORS.register(name_or_enum)


def get_adv_estimator_fn(name_or_enum) -> AdvEstimatorFn:
    """The estimator registered under the name; unknown names raise ValueError listing the valid ones."""
    return _ADV_ESTIMATORS.get(name_or_enum)


def list_adv_estimators() -> list[str]:
    """Sorted names of all registered estimators."""
    return _ADV_ESTIMATORS.names()


def adv_estimator_params(name_or_enum) -> tuple[frozenset[str], frozenset[str]]:
    """(all keyword arguments the estimator takes, the required subset)."""
    sig = inspect.signature(get_adv_estimator_fn(name_or_enum))
    params = frozenset(sig.parameters)
    required = frozenset(n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty)
    return params, required
