"""Valid names for every enumerated config value, and the role predicates derived from the config.

Stdlib only at import time. Estimator and policy-loss names come from the registries in `ttrl_megatron.algorithms`
(imported lazily, so loading a config never imports torch unless validate() runs); the local tuples are the fallback
for checkouts where those registries are missing.
"""

# TODO(config): drop these fallbacks once ttrl_megatron.algorithms always provides list_adv_estimators/list_policy_losses.
_FALLBACK_ADV_ESTIMATORS = ("gae", "grpo", "grpo_nsr", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline",
                            "remax", "opo", "gpg", "grpo_passk", "psr_nsr")
_FALLBACK_POLICY_LOSSES = ("vanilla", "gspo", "clip_cov", "kl_cov", "gpg")

_KL_BASE = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
KL_ESTIMATORS = _KL_BASE + tuple(f"{name}+" for name in _KL_BASE)  # "+": straight-through (k2's gradient)
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_CTRL_TYPES = ("fixed", "adaptive")
LOAD_FORMATS = ("auto", "hf", "nemo2", "mbridge", "megatron_lm")
OPTIMIZERS = ("adam", "sgd")
WARMUP_STYLES = ("constant", "linear", "cosine")
DTYPES = ("bfloat16", "float16", "float32")
ROLLOUT_ENGINES = ("vllm",)
STRATEGIES = ("megatron",)
REWARD_MANAGERS = ("majority", "rule", "custom")
SAMPLE_SELECTIONS = ("first", "random")
ANSWER_EXTRACTIONS = ("boxed", "any")  # = ttrl_megatron.ttrl.EXTRACTIONS (a unit test checks they agree)
LOGGERS = ("console", "jsonl", "tensorboard", "wandb")
DEVICES = ("cuda", "cpu")
RESUME_MODES = ("auto", "disable", "resume_path")
TRUNCATIONS = ("error", "left", "right")
PROMPT_TEMPLATES = ("auto", "chat", "plain")
ON_MISMATCH = ("raise", "warn")
CHECKPOINT_CONTENTS = ("model", "optimizer", "extra", "hf_model")
# Estimators that compare the rollouts of one prompt with each other: they need >= 2 rollouts per prompt.
GROUP_ESTIMATORS = ("grpo", "grpo_vectorized", "grpo_nsr", "rloo", "rloo_vectorized", "opo", "gpg", "grpo_passk",
                    "reinforce_plus_plus_baseline")
# Estimators that need sum_v pi_v^2 per token from the actor (actor_rollout_ref.actor.calculate_sum_pi_squared).
SUM_PI_SQUARED_ESTIMATORS = ("optimal_token_baseline", "tir_optimal_token_baseline")


def adv_estimator_names() -> tuple[str, ...]:
    """Registered advantage estimators (the algorithms registry when importable, else the fallback tuple)."""
    try:
        from ttrl_megatron.algorithms import list_adv_estimators
    except ImportError:
        return _FALLBACK_ADV_ESTIMATORS
    return tuple(list_adv_estimators())


def policy_loss_names() -> tuple[str, ...]:
    """Registered policy losses (the algorithms registry when importable, else the fallback tuple)."""
    try:
        from ttrl_megatron.algorithms import list_policy_losses
    except ImportError:
        return _FALLBACK_POLICY_LOSSES
    return tuple(list_policy_losses())


def need_critic(cfg) -> bool:
    """Whether a critic (value model) is built: `critic.enable`, which defaults to `adv_estimator == gae`."""
    return bool(cfg.critic.enable)


def need_reference_policy(cfg) -> bool:
    """Whether the frozen reference model is built: only a KL term (in the reward or in the loss) needs it."""
    return bool(cfg.algorithm.use_kl_in_reward or cfg.actor_rollout_ref.actor.use_kl_loss)
