"""Registry of advantage estimators (verl's API): ``register_adv_est``, ``get_adv_estimator_fn``, the
``AdvantageEstimator`` enum, plus ``list_adv_estimators``.

An estimator is called the way verl's ``compute_advantage`` calls it (advantages.py): gae and grpo with their own
arguments, every other name with ``token_level_rewards=, response_mask=, config=`` (the algorithm config) and, when
the batch has them, ``index=`` (the per-prompt uid), ``reward_baselines=``, and for the optimal-token-baseline
estimators ``old_log_probs=, sum_pi_squared=, rollout_is_weights=``. verl's estimators therefore take ``**kwargs``
and ignore what they do not use; ours do the same for exactly those call-site names (:func:`check_extra_kwargs`)
and reject anything else, so a misspelt or stale keyword raises instead of being dropped.

Pure python; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

from ttrl_megatron.algorithms.registry import Registry

AdvEstimatorFn = Callable[..., tuple]

_ADV_ESTIMATORS: Registry[AdvEstimatorFn] = Registry("advantage estimator", "algorithm.adv_estimator")

# Keyword arguments that verl's (or the TTRL fork's) compute_advantage may hand any registered estimator.
CALL_SITE_KWARGS = frozenset({"index", "config", "reward_baselines", "token_level_scores", "old_log_probs",
                              "sum_pi_squared", "rollout_is_weights", "non_tensor_batch", "batch"})


class AdvantageEstimator(str, Enum):
    """verl's estimator names (``verl.trainer.ppo.core_algos.AdvantageEstimator``) plus the TTRL ones."""

    GAE = "gae"
    GRPO = "grpo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"
    REINFORCE_PLUS_PLUS_BASELINE = "reinforce_plus_plus_baseline"
    REMAX = "remax"
    RLOO = "rloo"
    OPO = "opo"
    GRPO_PASSK = "grpo_passk"
    GPG = "gpg"
    RLOO_VECTORIZED = "rloo_vectorized"
    GRPO_VECTORIZED = "grpo_vectorized"
    OPTIMAL_TOKEN_BASELINE = "optimal_token_baseline"
    TIR_OPTIMAL_TOKEN_BASELINE = "tir_optimal_token_baseline"
    GRPO_NSR = "grpo_nsr"
    PSR_NSR = "psr_nsr"


def register_adv_est(name_or_enum) -> Callable[[AdvEstimatorFn], AdvEstimatorFn]:
    """Decorator registering an estimator under ``name_or_enum`` (a str or an Enum with a str value).
    Registering a taken name with another function raises (as verl)."""
    return _ADV_ESTIMATORS.register(name_or_enum)


def get_adv_estimator_fn(name_or_enum) -> AdvEstimatorFn:
    """The estimator registered under the name; unknown names raise ValueError listing the valid ones."""
    return _ADV_ESTIMATORS.get(name_or_enum)


def list_adv_estimators() -> list[str]:
    """Sorted names of all registered estimators."""
    return _ADV_ESTIMATORS.names()


def check_extra_kwargs(kwargs: dict, who: str) -> None:
    """Accept (and ignore) the call-site names verl passes to every estimator; reject any other keyword."""
    unknown = sorted(set(kwargs) - CALL_SITE_KWARGS)
    if unknown:
        raise TypeError(f"{who} got unexpected keyword argument(s) {unknown} (verl's signature; settings such as "
                        f"gamma or the grpo_nsr weights are read from config=)")
