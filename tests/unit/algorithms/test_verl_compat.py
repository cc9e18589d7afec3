"""verl drop-in (#19): every verl-named function called the way verl's own code calls it -- positional and keyword,
with verl's config objects (OmegaConf DictConfig from verl's YAML keys), ours (typed sections, ActorLossConfig) and
plain dicts -- and the results checked against hand-computed values.

The call expressions mirror verl's call sites (verl/trainer/ppo/ray_trainer.py compute_advantage/apply_kl_penalty,
verl/workers/utils/losses.py ppo_loss, verl/trainer/ppo/core_algos.py) and the TTRL fork's (grpo_nsr).
"""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import ttrl_megatron.algorithms as A
from ttrl_megatron.config import ActorConfig, AlgorithmConfig
from ttrl_megatron.protocol import DataProto

# 4 rows: prompt "a" = rows 0, 1 (scores 1 and 0), prompt "b" = rows 2, 3 (0.5 and 0.5: a uniform group)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
SCORES = A.scores_to_token_level(torch.tensor([1.0, 0.0, 0.5, 0.5]), MASK)
UID = np.array(["a", "a", "b", "b"], dtype=object)
EPS = 1e-6


def rows(adv):
    return (adv.sum(-1) / MASK.sum(-1)).tolist()


def verl_algorithm_yaml(**overrides):
    """verl's algorithm section as its trainer holds it: an OmegaConf DictConfig."""
    cfg = {"gamma": 1.0, "lam": 1.0, "adv_estimator": "grpo", "norm_adv_by_std_in_grpo": True,
           "use_kl_in_reward": False, "kl_penalty": "kl", "use_pf_ppo": False,
           "kl_ctrl": {"type": "fixed", "kl_coef": 0.001, "horizon": 10000, "target_kl": 0.1}}
    cfg.update(overrides)
    return OmegaConf.create(cfg)


ALGO_CONFIGS = {
    "verl DictConfig": lambda **kw: verl_algorithm_yaml(**kw),
    "ours (AlgorithmConfig)": lambda **kw: AlgorithmConfig(**kw),
    "plain dict": lambda **kw: {"gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": True, **kw},
}


# ---------------------------------------------------------------- the positional calls that used to bind wrongly


def test_agg_loss_fourth_positional_is_dp_size():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, 1.0, 1.0]])
    # verl: agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size, batch_num_tokens, global_batch_size, scale)
    assert A.agg_loss(loss, MASK, "token-mean", 2, 20).item() == pytest.approx(2 * (6 + 9 + 7 + 3) / 20)
    assert A.agg_loss(loss, MASK, "seq-mean-token-sum", 2, None, 8).item() == pytest.approx(2 * 25 / 8)
    assert A.agg_loss(loss, MASK, "seq-mean-token-sum-norm", 1, None, None, 5).item() == pytest.approx(25 / 4 / 5)
    assert A.agg_loss(loss_mat=loss, loss_mask=MASK, loss_agg_mode="token-mean").item() == pytest.approx(25 / 9)
    with pytest.raises(ValueError, match="batch_num_tokens"):
        A.agg_loss(loss, MASK, "token-mean", 2)  # verl refuses dp_size > 1 without the global count
    with pytest.raises(TypeError, match="loss_scale_factor"):
        A.agg_loss(loss, MASK, "seq-mean-token-sum-norm", 512.0)  # a stale positional scale factor


def test_grpo_nsr_fourth_positional_is_epsilon():
    # the fork's compute_grpo_nsr_outcome_advantage(rewards, mask, index, epsilon): group a std = 1/sqrt(2)
    adv, ret = A.compute_grpo_nsr_outcome_advantage(SCORES, MASK, UID, 0.5)
    a = 0.5 / (1 / math.sqrt(2) + 0.5)
    assert ret is adv and rows(adv) == pytest.approx([0.1 * a, -a, 0.0, 0.0], rel=1e-6)  # fork fallbacks 0.1 / 1.0


def test_gpg_fourth_positional_is_epsilon_fifth_f_norm():
    adv, _ = A.compute_gpg_outcome_advantage(SCORES, MASK, UID, 1e-6, 2.0)
    alpha = 4 / 3  # 4 rows, 3 with a non-zero score
    assert rows(adv) == pytest.approx([alpha * 0.5 / 2, -alpha * 0.5 / 2, 0.0, 0.0], rel=1e-6)


# ---------------------------------------------------------------- estimators, as verl's compute_advantage calls them


def expected_rows(name):
    a_std = 1 / math.sqrt(2)
    return {
        "grpo": [0.5 / (a_std + EPS), -0.5 / (a_std + EPS), 0.0, 0.0],
        "grpo_vectorized": [0.5 / (a_std + EPS), -0.5 / (a_std + EPS), 0.0, 0.0],
        "rloo": [1.0, -1.0, 0.0, 0.0],
        "rloo_vectorized": [1.0, -1.0, 0.0, 0.0],
        "opo": [1.0 - 0.6, -0.6, 0.0, 0.0],  # length-weighted baseline (3 * 1 + 2 * 0) / 5
        "gpg": [4 / 3 * 0.5, -4 / 3 * 0.5, 0.0, 0.0],
        "grpo_passk": [1.0 / (a_std + EPS), 0.0, 0.0, 0.0],  # the best row of a; b ties
    }[name]


@pytest.mark.parametrize("kind", sorted(ALGO_CONFIGS))
@pytest.mark.parametrize("name", ["grpo_vectorized", "rloo", "rloo_vectorized", "opo", "gpg", "grpo_passk"])
def test_generic_estimator_call_with_each_config_kind(name, kind):
    fn = A.get_adv_estimator_fn(name)
    # verl: adv_kwargs = {token_level_rewards, response_mask, config}; + index (uid); fn(**adv_kwargs)
    adv, ret = fn(**{"token_level_rewards": SCORES, "response_mask": MASK, "config": ALGO_CONFIGS[kind](),
                     "index": UID})
    assert rows(adv) == pytest.approx(expected_rows(name), rel=1e-6, abs=1e-7)
    assert ret is adv


def test_gae_grpo_and_reinforce_calls():
    values = torch.tensor([[0.5, 0.2, 0.1]] * 4) * MASK
    adv, ret = A.compute_gae_advantage_return(token_level_rewards=SCORES, values=values, response_mask=MASK,
                                              gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret[0], torch.tensor([1.0, 1.0, 1.0]))  # returns = rewards-to-go (gamma = lam = 1)
    adv, _ = A.compute_grpo_outcome_advantage(token_level_rewards=SCORES, response_mask=MASK, index=UID,
                                              norm_adv_by_std_in_grpo=False)
    assert rows(adv) == pytest.approx([0.5, -0.5, 0.0, 0.0])
    for kind, make in ALGO_CONFIGS.items():
        adv, ret = A.compute_reinforce_plus_plus_outcome_advantage(SCORES, MASK, make(gamma=0.5))
        torch.testing.assert_close(ret[0], torch.tensor([0.25, 0.5, 1.0]), msg=kind)  # config.gamma is read
    base = torch.tensor([0.4, 0.0, 0.5, 0.0])
    adv, ret = A.compute_remax_outcome_advantage(SCORES, base, MASK, config=verl_algorithm_yaml())
    assert adv[0].tolist() == pytest.approx([0.6] * 3)


def test_grpo_nsr_reads_the_forks_config_sections():
    for cfg in (verl_algorithm_yaml(grpo_nsr={"positive_weight": 0.5, "negative_weight": 2.0}),
                AlgorithmConfig(grpo_nsr={"positive_weight": 0.5, "negative_weight": 2.0}),
                {"grpo_dual_adv": {"positive_weight": 0.5, "negative_weight": 2.0}}):  # the fork's fallback key
        adv, _ = A.compute_grpo_nsr_outcome_advantage(token_level_rewards=SCORES, response_mask=MASK, index=UID,
                                                      norm_adv_by_std_in_grpo=False, token_level_scores=SCORES,
                                                      config=cfg)
        assert rows(adv) == pytest.approx([0.5 * 0.5, 2.0 * -0.5, 0.0, 0.0])


def otb_batch():
    t = {"token_level_rewards": SCORES.clone(), "token_level_scores": SCORES.clone(), "response_mask": MASK.clone(),
         "old_log_probs": torch.full((4, 3), math.log(0.5)), "sum_pi_squared": torch.full((4, 3), 0.5),
         "values": torch.zeros(4, 3), "reward_baselines": torch.zeros(4)}
    return DataProto.from_dict(t, {"uid": UID})


def test_verls_compute_advantage_call_on_our_batch():
    # verl: compute_advantage(batch, adv_estimator=..., gamma=..., lam=..., num_repeat=..., norm_adv_by_std_in_grpo=...,
    #                         config=self.config.algorithm)
    for name, want in (("grpo", expected_rows("grpo")), ("rloo", expected_rows("rloo")),
                       (A.AdvantageEstimator.OPO, expected_rows("opo"))):
        data = A.compute_advantage(otb_batch(), adv_estimator=name, gamma=1.0, lam=1.0, num_repeat=2,
                                   norm_adv_by_std_in_grpo=True, config=verl_algorithm_yaml())
        assert rows(data.batch["advantages"]) == pytest.approx(want, rel=1e-6, abs=1e-7)
    # OTB: w = 1 - 2 * 0.5 + 0.5 = 0.5 on every token; group a: W = [.5, 1, 1.5] and [.5, 1]; G = 1 and 0
    data = A.compute_advantage(otb_batch(), "optimal_token_baseline", config=verl_algorithm_yaml())
    torch.testing.assert_close(data.batch["advantages"][0], torch.tensor([0.5, 0.5, 1.0]))  # zero tail at t = 2
    torch.testing.assert_close(data.batch["advantages"][1], torch.tensor([-0.5, -0.5, 0.0]))


def test_adv_estimator_enum_and_registration_like_verl():
    assert A.AdvantageEstimator.GRPO == "grpo" and A.AdvantageEstimator("rloo_vectorized").value == "rloo_vectorized"
    assert A.get_adv_estimator_fn(A.AdvantageEstimator.GAE) is A.compute_gae_advantage_return

    # a recipe's estimator, written exactly with verl's signature
    @A.register_adv_est("compat_mean_baseline")
    def compute_mean_baseline(token_level_rewards, response_mask, index=None, epsilon=1e-6, config=None, **kwargs):
        s = token_level_rewards.sum(-1)
        adv = (s - s.mean()).unsqueeze(-1) * response_mask * config.get("gamma", 1.0)
        return adv, adv

    A.check_adv_estimator_call("compat_mean_baseline")
    data = A.compute_advantage(otb_batch(), "compat_mean_baseline", config=verl_algorithm_yaml(gamma=2.0))
    assert rows(data.batch["advantages"]) == pytest.approx([1.0, -1.0, 0.0, 0.0])

    @A.register_adv_est("compat_old_style")
    def old_style(token_level_rewards, response_mask, index, positive_weight):  # no config, no **kwargs
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="algorithm.adv_estimator=compat_old_style.*config"):
        A.check_adv_estimator_call("compat_old_style")


# ---------------------------------------------------------------- policy losses, as verl's actor calls them


def verl_actor_yaml(loss_mode="vanilla"):
    """verl's actor section (actor.yaml keys) as an OmegaConf DictConfig, with global_batch_info as ppo_loss fills."""
    return OmegaConf.create({
        "clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
        "loss_agg_mode": "token-mean", "loss_scale_factor": None, "tau_pos": 1.0, "tau_neg": 1.05,
        "policy_loss": {"loss_mode": loss_mode, "clip_cov_ratio": 0.0002, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0,
                        "kl_cov_ratio": 0.0002, "ppo_kl_coef": 0.1},
        "global_batch_info": {"dp_size": 1, "batch_num_tokens": 4, "global_batch_size": 1, "loss_scale_factor": None},
    })


def actor_configs():
    ours = A.ActorLossConfig(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0,
                             loss_agg_mode="token-mean", loss_scale_factor=None, tau_pos=1.0, tau_neg=1.05,
                             policy_loss=A.PolicyLossSettings(loss_mode="vanilla", clip_cov_ratio=0.0002,
                                                              clip_cov_lb=1.0, clip_cov_ub=5.0, kl_cov_ratio=0.0002,
                                                              ppo_kl_coef=0.1),
                             global_batch_info={"dp_size": 1, "batch_num_tokens": 4, "global_batch_size": 1})
    return {"verl DictConfig": verl_actor_yaml(), "ours (ActorLossConfig)": ours,
            "ours (typed ActorConfig section)": ActorConfig()}


@pytest.mark.parametrize("kind", sorted(actor_configs()))
def test_vanilla_with_verls_actor_call(kind):
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 4.0, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    # verl: policy_loss_fn(old_log_prob=, log_prob=, advantages=, response_mask=, loss_agg_mode=, config=,
    #                      rollout_is_weights=)
    pg_loss, pg_metrics = A.get_policy_loss_fn("vanilla")(
        old_log_prob=old, log_prob=logp, advantages=adv, response_mask=torch.ones(1, 4), loss_agg_mode="token-mean",
        config=actor_configs()[kind], rollout_is_weights=torch.tensor([[2.0, 1.0, 1.0, 1.0]]))
    assert pg_loss.item() == pytest.approx((2 * -1.2 + 0.8 + 3.0 - 1.0) / 4)
    assert float(pg_metrics["actor/pg_clipfrac"]) == pytest.approx(0.5)
    assert float(pg_metrics["actor/pg_clipfrac_lower"]) == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["vanilla", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo"])
def test_every_loss_takes_the_actor_call_positional_and_keyword(name):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=gen)
    logp = old + 0.1 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = (torch.arange(5)[None] < torch.tensor([[5], [3], [4]])).float()
    fn = A.get_policy_loss_fn(name)
    cfg = verl_actor_yaml(name)
    cfg.global_batch_info = {}
    A.check_policy_loss_call(name)
    by_kw, m_kw = fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode="token-mean",
                     config=cfg, rollout_is_weights=None)
    by_pos, m_pos = fn(old, logp, adv, mask, "token-mean", cfg, None)
    torch.testing.assert_close(by_kw, by_pos)
    assert set(m_kw) == set(m_pos) and all(float(m_kw[k]) == float(m_pos[k]) for k in m_kw)


def test_compute_policy_loss_verls_positional_form():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 4.0, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    # verl: compute_policy_loss(old, logp, adv, mask, cliprange, cliprange_low, cliprange_high, clip_ratio_c, mode)
    pg_loss, clipfrac, ppo_kl, lower = A.compute_policy_loss(old, logp, adv, torch.ones(1, 4), 0.2, 0.6, 0.6, 10.0,
                                                             "token-mean")
    assert pg_loss.item() == pytest.approx((-1.5 + 0.5 + 4.0 - 1.0) / 4)
    assert ppo_kl.item() == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(4.0)) / 4)
    assert clipfrac.item() == 0.0 and lower.item() == 0.0


def test_a_recipes_policy_loss_registers_and_is_checked():
    @A.register_policy_loss("compat_recipe_loss")
    def recipe_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                    rollout_is_weights=None):
        pg_losses = -advantages * torch.exp(log_prob - old_log_prob) * config.clip_ratio
        pg_loss = A.agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                             **config.global_batch_info)
        return pg_loss, {"actor/recipe_metric": 1.0}

    A.check_policy_loss_call("compat_recipe_loss")
    loss, metrics = A.get_policy_loss_fn("compat_recipe_loss")(torch.zeros(1, 4), torch.zeros(1, 4),
                                                               torch.ones(1, 4), torch.ones(1, 4),
                                                               loss_agg_mode="token-mean", config=verl_actor_yaml(),
                                                               rollout_is_weights=None)
    assert loss.item() == pytest.approx(-0.2) and metrics == {"actor/recipe_metric": 1.0}

    @A.register_policy_loss("compat_params_style")
    def params_style(old_log_prob, log_prob, advantages, response_mask, params):  # our old convention
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="loss_mode=compat_params_style"):
        A.check_policy_loss_call("compat_params_style")


# ---------------------------------------------------------------- value loss, KL, controllers, helpers


def test_value_loss_verls_positional_form():
    vpreds = torch.tensor([[1.0, 2.0, 1.0]])
    values = torch.tensor([[0.0, 2.0, 0.0]])
    returns = torch.tensor([[0.5, 3.0, 2.0]])
    # verl: compute_value_loss(vpreds, returns, values, response_mask, cliprange_value, loss_agg_mode, dp_size,
    #                          batch_num_tokens, global_batch_size, loss_scale_factor)
    loss, clipfrac = A.compute_value_loss(vpreds, returns, values, torch.ones(1, 3), 0.5, "token-mean", 2, 6)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0 + 2.25) / 6 * 2)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_kl_names_controllers_and_apply_kl_penalty_on_a_batch():
    logp, ref = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -1.0]])
    # '+' names: the value of the base estimator (k3 = exp(d) - d - 1, d = ref - logp = [-1, 2])
    k3 = torch.tensor([[math.exp(-1), math.exp(2) - 3]])
    torch.testing.assert_close(A.kl_penalty(logp, ref, kl_penalty="low_var_kl+"), k3)
    torch.testing.assert_close(A.kl_penalty_forward(logp, ref, "k3"), k3)
    torch.testing.assert_close(A.compute_rewards(torch.ones(1, 2), logp, ref, 0.5), torch.tensor([[0.5, 2.0]]))
    ctrl = A.get_kl_controller(verl_algorithm_yaml(kl_ctrl={"type": "adaptive", "kl_coef": 0.1, "horizon": 10,
                                                            "target_kl": 1.0}).kl_ctrl)
    assert isinstance(ctrl, A.AdaptiveKLController)
    t = {"token_level_scores": torch.tensor([[0.0, 1.0]]), "old_log_probs": logp, "ref_log_prob": ref,
         "response_mask": torch.ones(1, 2)}
    batch = DataProto.from_dict(t)
    # verl: batch, kl_metrics = apply_kl_penalty(batch, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=...)
    out, metrics = A.apply_kl_penalty(batch, kl_ctrl=ctrl, kl_penalty="kl")
    assert out is batch
    torch.testing.assert_close(batch.batch["token_level_rewards"], torch.tensor([[0.0 - 0.1, 1.0 + 0.2]]))
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(-0.5)
    assert metrics["actor/reward_kl_penalty_coeff"] == pytest.approx(0.1)
    assert ctrl.value == pytest.approx(0.1 * (1 - 0.2 * 1 / 10))  # error clipped to -0.2, n_steps = 1 row


def test_verl_torch_functional_helpers_and_entropy_loss():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert A.masked_mean(values, mask).item() == pytest.approx(1.5)
    assert A.masked_sum(values, mask).item() == pytest.approx(3.0)
    assert A.masked_var(values, mask).item() == pytest.approx(0.5)
    logits = torch.zeros(1, 3, 4)
    assert A.compute_entropy_loss(logits, mask).item() == pytest.approx(math.log(4))
