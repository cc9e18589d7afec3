"""Pure-torch RL algorithms: KL estimators and controllers, advantage estimators, policy/value losses, loss
aggregation, entropy, masked statistics and token-level score placement.

Drop-in for verl's ``verl.trainer.ppo.core_algos`` (and the TTRL fork's additions): every function that has a verl
name takes verl's call -- the same positional order, parameter names (``config`` included, read by attribute or
``.get`` so verl's config objects and ours both work) and return value; what only we have comes after, keyword-only.
``register_adv_est`` / ``register_policy_loss`` accept functions written with verl's signatures, and the trainer and
actor call them exactly as verl's ``compute_advantage`` and actor do. Code from a verl recipe changes only its import
line (``from ttrl_megatron.algorithms import ...``); a user module with such functions is imported through
``actor_rollout_ref.model.external_lib`` (docs/coming-from-verl.md lists the conventions and the deliberate
differences).

Global denominators for sharded batches arrive as arguments; nothing here communicates. This package must import
only torch, numpy and the standard library -- never torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from ttrl_megatron.algorithms.advantages import (
    AdvantageEstimator,
    check_adv_estimator_call,
    compute_advantage,
    compute_gae_advantage_return,
    compute_gpg_outcome_advantage,
    compute_grpo_nsr_metrics,
    compute_grpo_nsr_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    compute_multi_turn_optimal_token_baseline_advantage,
    compute_opo_outcome_advantage,
    compute_optimal_token_baseline_advantage,
    compute_psr_nsr_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rloo_outcome_advantage,
    compute_rloo_vectorized_outcome_advantage,
    get_adv_estimator_fn,
    list_adv_estimators,
    register_adv_est,
)
from ttrl_megatron.algorithms.groupwise import factorize_index
from ttrl_megatron.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    apply_kl_penalty_to_scores,
    compute_rewards,
    get_kl_controller,
    kl_penalty,
    kl_penalty_forward,
)
from ttrl_megatron.algorithms.losses import (
    LOSS_AGG_MODES,
    ActorLossConfig,
    PolicyLossSettings,
    agg_loss,
    compute_entropy_loss,
    compute_policy_loss,
    compute_policy_loss_cispo,
    compute_policy_loss_clip_cov,
    compute_policy_loss_geo_mean,
    compute_policy_loss_gpg,
    compute_policy_loss_gspo,
    compute_policy_loss_kl_cov,
    compute_policy_loss_sapo,
    compute_policy_loss_vanilla,
    compute_value_loss,
    entropy_from_logits,
    entropy_from_logits_chunked,
    get_policy_loss_fn,
    list_policy_losses,
    register_policy_loss,
)
from ttrl_megatron.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from ttrl_megatron.algorithms.policy_losses import check_policy_loss_call
from ttrl_megatron.algorithms.registry import import_external_libs
from ttrl_megatron.algorithms.scores import last_token_positions, scores_to_token_level, token_level_to_scores

__all__ = [
    "ActorLossConfig", "AdaptiveKLController", "AdvantageEstimator", "FixedKLController", "LOSS_AGG_MODES",
    "PolicyLossSettings", "agg_loss", "apply_kl_penalty", "apply_kl_penalty_to_scores", "check_adv_estimator_call",
    "check_policy_loss_call", "compute_advantage", "compute_entropy_loss", "compute_gae_advantage_return",
    "compute_gpg_outcome_advantage", "compute_grpo_nsr_metrics", "compute_grpo_nsr_outcome_advantage",
    "compute_grpo_outcome_advantage", "compute_grpo_passk_outcome_advantage",
    "compute_grpo_vectorized_outcome_advantage", "compute_multi_turn_optimal_token_baseline_advantage",
    "compute_opo_outcome_advantage", "compute_optimal_token_baseline_advantage", "compute_policy_loss",
    "compute_policy_loss_cispo", "compute_policy_loss_clip_cov", "compute_policy_loss_geo_mean",
    "compute_policy_loss_gpg", "compute_policy_loss_gspo", "compute_policy_loss_kl_cov", "compute_policy_loss_sapo",
    "compute_policy_loss_vanilla", "compute_psr_nsr_outcome_advantage",
    "compute_reinforce_plus_plus_baseline_outcome_advantage", "compute_reinforce_plus_plus_outcome_advantage",
    "compute_remax_outcome_advantage", "compute_rewards", "compute_rloo_outcome_advantage",
    "compute_rloo_vectorized_outcome_advantage", "compute_value_loss", "entropy_from_logits",
    "entropy_from_logits_chunked", "factorize_index", "get_adv_estimator_fn", "get_kl_controller",
    "get_policy_loss_fn", "import_external_libs", "kl_penalty", "kl_penalty_forward", "last_token_positions",
    "list_adv_estimators", "list_policy_losses", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    "register_adv_est", "register_policy_loss", "scores_to_token_level", "token_level_to_scores",
]
