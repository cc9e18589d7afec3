"""Pure-torch RL algorithms: KL estimators and controllers, advantage estimators, policy/value losses, loss
aggregation, entropy, masked statistics and token-level score placement.

Names and signatures follow verl's ``core_algos`` so code ported from verl / the TTRL fork keeps working (see
reference/algorithms-semantics.md). Global denominators for sharded batches arrive as arguments; nothing here
communicates. This package must import only torch, numpy and the standard library -- never torch.distributed,
megatron, vllm, hydra or omegaconf.
"""

from ttrl_megatron.algorithms.advantages import (
    adv_estimator_params,
    compute_advantage,
    compute_gae_advantage_return,
    compute_gpg_outcome_advantage,
    compute_grpo_nsr_metrics,
    compute_grpo_nsr_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_psr_nsr_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rloo_outcome_advantage,
    get_adv_estimator_fn,
    list_adv_estimators,
    register_adv_est,
)
from ttrl_megatron.algorithms.groupwise import factorize_index
from ttrl_megatron.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    get_kl_controller,
    kl_penalty,
    kl_penalty_forward,
)
from ttrl_megatron.algorithms.losses import (
    LOSS_AGG_MODES,
    agg_loss,
    compute_policy_loss,
    compute_value_loss,
    entropy_from_logits,
    entropy_from_logits_chunked,
    get_policy_loss_fn,
    list_policy_losses,
    register_policy_loss,
)
from ttrl_megatron.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from ttrl_megatron.algorithms.scores import last_token_positions, scores_to_token_level, token_level_to_scores

__all__ = [
    "AdaptiveKLController", "FixedKLController", "LOSS_AGG_MODES", "adv_estimator_params", "agg_loss",
    "apply_kl_penalty", "compute_advantage", "compute_gae_advantage_return", "compute_gpg_outcome_advantage",
    "compute_grpo_nsr_metrics", "compute_grpo_nsr_outcome_advantage", "compute_grpo_outcome_advantage",
    "compute_grpo_passk_outcome_advantage", "compute_opo_outcome_advantage", "compute_policy_loss",
    "compute_psr_nsr_outcome_advantage", "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage", "compute_remax_outcome_advantage",
    "compute_rloo_outcome_advantage", "compute_value_loss", "entropy_from_logits", "entropy_from_logits_chunked",
    "factorize_index", "get_adv_estimator_fn", "get_kl_controller", "get_policy_loss_fn", "kl_penalty",
    "kl_penalty_forward", "last_token_positions", "list_adv_estimators", "list_policy_losses", "masked_mean",
    "masked_sum", "masked_var", "masked_whiten", "register_adv_est", "register_policy_loss", "scores_to_token_level",
    "token_level_to_scores",
]
