"""The policy losses sapo, geo_mean (GMPO) and cispo against each paper's definition, on hand-computed cases
(values, gradients and metrics), called the way verl's actor calls them."""

import math

import pytest
import torch

from ttrl_megatron.algorithms import get_policy_loss_fn


def call(mode, old, logp, adv, mask, loss_agg_mode="token-mean", rollout_is_weights=None, **config):
    cfg = {"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None, "tau_pos": 1.0, "tau_neg": 1.05,
           **config}
    return get_policy_loss_fn(mode)(old, logp, adv, mask, loss_agg_mode=loss_agg_mode, config=cfg,
                                    rollout_is_weights=rollout_is_weights)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- SAPO (arXiv 2511.20347)


def test_sapo_soft_gate_values_and_gradients():
    ratios, advs = [1.0, 1.5, 0.5, 1.2], [1.0, 1.0, -1.0, -2.0]
    logp = torch.log(torch.tensor([ratios])).requires_grad_(True)
    loss, metrics = call("sapo", torch.zeros(1, 4), logp, torch.tensor([advs]), torch.ones(1, 4), tau_neg=2.0)
    # f(r; tau) = sigmoid(tau (r - 1)) * 4 / tau, tau = 1 for A > 0 and 2 for A < 0; loss_t = -f A
    taus = [1.0, 1.0, 2.0, 2.0]
    per_token = [-sigmoid(t * (r - 1)) * 4 / t * a for r, a, t in zip(ratios, advs, taus)]
    assert per_token[0] == pytest.approx(-2.0)  # at r = 1 the gate is 2 for tau = 1
    assert loss.item() == pytest.approx(sum(per_token) / 4, rel=1e-6)  # one row: seq-mean-token-mean = mean
    assert metrics["actor/pg_clipfrac"].item() == 0.0 and metrics["actor/pg_clipfrac_lower"].item() == 0.0
    loss.backward()
    # d loss_t / d logp_t = -A * 4 sigma (1 - sigma) * r: at r = 1 exactly the on-policy gradient -A
    grads = []
    for r, a, t in zip(ratios, advs, taus):
        s = sigmoid(t * (r - 1))
        grads.append(-a * 4 * s * (1 - s) * r / 4)
    torch.testing.assert_close(logp.grad, torch.tensor([grads]))
    assert logp.grad[0, 0].item() == pytest.approx(-0.25)


def test_sapo_always_aggregates_seq_mean_token_mean():
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.0], [0.5, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.ones(2, 3)
    a, _ = call("sapo", torch.zeros(2, 3), logp, adv, mask, loss_agg_mode="token-mean")
    b, _ = call("sapo", torch.zeros(2, 3), logp, adv, mask, loss_agg_mode="seq-mean-token-sum")
    row0 = -4 * sigmoid(0.5)  # both tokens r = 1.5
    row1 = -4 * sigmoid(-0.5)
    assert a.item() == pytest.approx((row0 + row1) / 2, rel=1e-6) and b.item() == a.item()
    with pytest.raises(ValueError, match="tau_pos"):
        call("sapo", torch.zeros(2, 3), logp, adv, mask, tau_pos=0.0)
    with pytest.raises(ValueError, match="'tau_neg'"):
        get_policy_loss_fn("sapo")(torch.zeros(2, 3), logp, adv, mask, config={"tau_pos": 1.0})


# ---------------------------------------------------------------- GMPO (arXiv 2507.20673)


def test_geo_mean_geometric_ratio_token_clip_values_gradients_metrics():
    log_ratio = torch.tensor([[0.1, 0.5, -0.1], [-0.5, 0.3, 9.0]])  # row 1 token 2 is padding
    logp = log_ratio.clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, metrics = call("geo_mean", torch.zeros(2, 3), logp, adv, mask)
    # A > 0: each log-ratio capped from above at eps = 0.2 -> [0.1, 0.2, -0.1]; rho_0 = exp(0.2 / 3)
    # A < 0: capped from below at -0.2 -> [-0.2, 0.3];                      rho_1 = exp(0.1 / 2)
    rho0, rho1 = math.exp(0.2 / 3), math.exp(0.1 / 2)
    assert loss.item() == pytest.approx((-1.0 * rho0 + 1.0 * rho1) / 2, rel=1e-6)
    # clipped tokens: row 0 token 1 (A > 0); row 1 tokens 0 and 1 (A < 0); 5 valid tokens
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(1 / 5)
    assert metrics["actor/pg_clipfrac_lower"].item() == pytest.approx(2 / 5)
    loss.backward()
    # gradient only through the unclipped log-ratios: d(-rho0)/dl = -rho0 / 3; d(rho1)/dl = rho1 / 2; then / 2 rows
    expected = torch.tensor([[-rho0 / 6, 0.0, -rho0 / 6], [0.0, rho1 / 4, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_geo_mean_rollout_weights_enter_as_their_geometric_mean():
    logp = torch.zeros(1, 2)
    adv = torch.ones(1, 2)
    loss, _ = call("geo_mean", torch.zeros(1, 2), logp, adv, torch.ones(1, 2),
                   rollout_is_weights=torch.tensor([[4.0, 1.0]]))
    assert loss.item() == pytest.approx(-2.0, rel=1e-6)  # sqrt(4 * 1) = 2


# ---------------------------------------------------------------- CISPO (arXiv 2506.13585)


def test_cispo_clips_the_weight_not_the_gradient():
    ratios = [1.5, 0.5, 1.0]
    logp = torch.log(torch.tensor([ratios])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, metrics = call("cispo", torch.zeros(1, 3), logp, adv, torch.ones(1, 3))
    # loss_t = -sg(clip(r, 0.8, 1.2)) A logp: weights [1.2, 0.8, 1.0]
    expected = (-1.2 * 1 * math.log(1.5) - 0.8 * -1 * math.log(0.5) - 1.0 * 2 * 0.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    # every token keeps a gradient (PPO would zero the two clipped ones): -w A / 3
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.2 / 3, 0.8 / 3, -2.0 / 3]]))
    asym, _ = call("cispo", torch.zeros(1, 3), logp.detach(), adv, torch.ones(1, 3), clip_ratio_low=1.0,
                   clip_ratio_high=0.3)
    # no lower bound on the weight (eps_low = 1, as MiniMax-M1 runs it): weights [1.3, 0.5, 1.0]
    assert asym.item() == pytest.approx((-1.3 * math.log(1.5) + 0.5 * math.log(0.5)) / 3, rel=1e-6)
