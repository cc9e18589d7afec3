"""Advantage estimators: the registry, every built-in estimator, and ``compute_advantage``, verl's trainer entry.

Built-ins (verl names, reference/algorithms-semantics.md §1.4 and §3): gae, grpo, grpo_vectorized, grpo_nsr, rloo,
rloo_vectorized, reinforce_plus_plus, reinforce_plus_plus_baseline, remax, opo, gpg, grpo_passk, psr_nsr,
optimal_token_baseline, tir_optimal_token_baseline. Each is importable under verl's function name with verl's
signature (``compute_<name>_outcome_advantage``, ``compute_gae_advantage_return``, ...).

How an estimator is called: :func:`compute_advantage` has the signature of verl's
``verl.trainer.ppo.ray_trainer.compute_advantage`` and calls every estimator the way it (and the TTRL fork's) does:

- ``gae``: ``compute_gae_advantage_return(token_level_rewards=, values=, response_mask=, gamma=, lam=)``;
- ``grpo``: ``compute_grpo_outcome_advantage(token_level_rewards=, response_mask=, index=uid,
  norm_adv_by_std_in_grpo=)``;
- ``grpo_nsr`` (the fork): the same plus ``token_level_scores=`` and ``config=``;
- every other name, built-in or registered by the user: ``fn(token_level_rewards=, response_mask=, config=)`` plus
  ``index=uid`` when the batch has uids, ``reward_baselines=`` when it has them, ``token_level_scores=`` for
  psr_nsr (as the fork does for grpo_nsr), and ``old_log_probs=, sum_pi_squared=, rollout_is_weights=`` for the
  optimal-token-baseline estimators.

So a function copied from a verl recipe and registered with ``register_adv_est`` gets exactly verl's arguments.
Deliberate differences: group statistics are float64 and a uniform group gives exactly 0; ``rloo`` keeps verl's
loop semantics (a singleton keeps its score) while ``rloo_vectorized`` gives singletons 0 as verl's vectorized one
does; ``psr_nsr`` reads its weights from ``config.psr_nsr``; outcome estimators accept keyword-only ``out=``.

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from ttrl_megatron.algorithms.adv_group import (  # noqa: F401  (importing registers the estimators)
    compute_gpg_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_rloo_outcome_advantage,
    compute_rloo_vectorized_outcome_advantage,
)
from ttrl_megatron.algorithms.adv_otb import (  # noqa: F401
    compute_multi_turn_optimal_token_baseline_advantage,
    compute_optimal_token_baseline_advantage,
)
from ttrl_megatron.algorithms.adv_outcome import (  # noqa: F401
    compute_grpo_nsr_metrics,
    compute_grpo_nsr_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
)
from ttrl_megatron.algorithms.adv_registry import (  # noqa: F401
    AdvantageEstimator,
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
from ttrl_megatron.algorithms.loss_config import config_get
from ttrl_megatron.algorithms.registry import accepts_call

OTB_ESTIMATORS = ("optimal_token_baseline", "tir_optimal_token_baseline")


def _name(adv_estimator) -> str:
    return getattr(adv_estimator, "value", adv_estimator)


def call_keywords(adv_estimator) -> tuple[str, ...]:
    """The keywords :func:`compute_advantage` passes the estimator (with uids in the batch, no reward_baselines)."""
    name = _name(adv_estimator)
    if name == "gae":
        return ("token_level_rewards", "values", "response_mask", "gamma", "lam")
    if name == "grpo":
        return ("token_level_rewards", "response_mask", "index", "norm_adv_by_std_in_grpo")
    if name == "grpo_nsr":
        return ("token_level_rewards", "response_mask", "index", "norm_adv_by_std_in_grpo", "token_level_scores",
                "config")
    keys = ("token_level_rewards", "response_mask", "config", "index")
    if name == "psr_nsr":
        keys += ("token_level_scores",)
    if name in OTB_ESTIMATORS:
        keys += ("sum_pi_squared", "old_log_probs", "rollout_is_weights")
    return keys


def check_adv_estimator_call(adv_estimator) -> None:
    """Raise ValueError (naming algorithm.adv_estimator) unless the registered estimator accepts the keywords
    :func:`compute_advantage` will pass it (verl's call)."""
    keys = call_keywords(adv_estimator)
    why = accepts_call(get_adv_estimator_fn(adv_estimator), 0, keys)
    if why:
        raise ValueError(f"algorithm.adv_estimator={_name(adv_estimator)}: the registered function cannot take "
                         f"verl's call fn({'=, '.join(keys)}=) ({why}); write it with verl's signature (e.g. "
                         f"token_level_rewards, response_mask, index, epsilon=1e-6, config=None, **kwargs)")


def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True,
                      config=None):
    """verl's ``compute_advantage`` on our DataProto: writes ``data.batch["advantages"]`` and ``["returns"]`` [B, T]
    and returns ``data``.

    Args:
        data: a batch with ``.batch`` (tensors: token_level_rewards, response_mask or responses + attention_mask,
            and what the estimator needs: values, reward_baselines, token_level_scores, old_log_probs,
            sum_pi_squared, rollout_is_weights) and ``.non_tensor_batch`` (``uid``: the per-prompt group ids).
        adv_estimator: a registered name or an ``AdvantageEstimator``.
        gamma, lam: gae's discount and lambda. num_repeat: accepted and unused (as verl).
        norm_adv_by_std_in_grpo: grpo / grpo_nsr std normalization.
        config: the algorithm config (``algorithm``: ours, verl's or a DictConfig), handed to the estimators.
    """
    t, objects = data.batch, data.non_tensor_batch
    if "response_mask" not in t:
        t["response_mask"] = t["attention_mask"][:, -t["responses"].shape[1]:]
    name = _name(adv_estimator)
    rewards, mask = t["token_level_rewards"], t["response_mask"]
    if name == "gae":
        if config is not None and config_get(config, "use_pf_ppo", False):
            raise NotImplementedError("algorithm.use_pf_ppo (verl's PF-PPO reweighting) is not supported")
        advantages, returns = compute_gae_advantage_return(token_level_rewards=rewards, values=t["values"],
                                                           response_mask=mask, gamma=gamma, lam=lam)
    elif name == "grpo":
        advantages, returns = compute_grpo_outcome_advantage(token_level_rewards=rewards, response_mask=mask,
                                                             index=objects["uid"],
                                                             norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo)
    elif name == "grpo_nsr":
        advantages, returns = compute_grpo_nsr_outcome_advantage(
            token_level_rewards=rewards, response_mask=mask, index=objects["uid"],
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, token_level_scores=t.get("token_level_scores"),
            config=config)
    else:
        fn = get_adv_estimator_fn(adv_estimator)
        kwargs = {"token_level_rewards": rewards, "response_mask": mask, "config": config}
        if "uid" in objects:
            kwargs["index"] = objects["uid"]
        if "reward_baselines" in t:
            kwargs["reward_baselines"] = t["reward_baselines"]
        if name == "psr_nsr":
            kwargs["token_level_scores"] = t.get("token_level_scores")
        if name in OTB_ESTIMATORS:
            if "sum_pi_squared" not in t:
                raise ValueError(f"algorithm.adv_estimator={name} needs sum_pi_squared in the batch (set "
                                 f"actor_rollout_ref.actor.calculate_sum_pi_squared=True)")
            kwargs.update(sum_pi_squared=t["sum_pi_squared"], old_log_probs=t["old_log_probs"],
                          rollout_is_weights=t.get("rollout_is_weights"))
        advantages, returns = fn(**kwargs)
    t["advantages"], t["returns"] = advantages, returns
    return data
