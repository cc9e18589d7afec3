"""KL estimators, straight-through variants, controllers and apply_kl_penalty (reference §1.1-§1.2)."""

import math
from types import SimpleNamespace

import pytest
import torch

from ttrl_megatron.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    get_kl_controller,
    kl_penalty,
)

LOGP = torch.tensor([[-1.0, -0.5, -3.0]])
REF = torch.tensor([[-2.0, -0.5, -1.0]])


@pytest.mark.parametrize("name,expected", [
    ("kl", [1.0, 0.0, -2.0]), ("k1", [1.0, 0.0, -2.0]),
    ("abs", [1.0, 0.0, 2.0]),
    ("mse", [0.5, 0.0, 2.0]), ("k2", [0.5, 0.0, 2.0]),
    # k3 = exp(d) - d - 1 with d = ref - logp: d = -1, 0, 2
    ("low_var_kl", [math.exp(-1) + 1 - 1, 0.0, math.exp(2) - 2 - 1]),
    ("k3", [math.exp(-1), 0.0, math.exp(2) - 3]),
])
def test_kl_estimators_golden(name, expected):
    torch.testing.assert_close(kl_penalty(LOGP, REF, name), torch.tensor([expected]))


def test_k3_is_clamped():
    # d = ref - logp = 30 -> clamped to 20 -> exp(20) - 21 -> clamped to 10
    out = kl_penalty(torch.tensor([-31.0]), torch.tensor([-1.0]), "k3")
    assert out.item() == 10.0


@pytest.mark.parametrize("name,base", [("k1+", "k1"), ("k3+", "k3")])
def test_straight_through_value_and_gradient(name, base):
    logp = LOGP.clone().requires_grad_(True)
    value = kl_penalty(logp, REF, name)
    torch.testing.assert_close(value.detach(), kl_penalty(LOGP, REF, base))
    value.sum().backward()
    # gradient of k2 = 0.5 (logp - ref)^2 w.r.t. logp is (logp - ref)
    torch.testing.assert_close(logp.grad, LOGP - REF)
    logp_k2 = LOGP.clone().requires_grad_(True)
    kl_penalty(logp_k2, REF, "k2").sum().backward()
    torch.testing.assert_close(logp.grad, logp_k2.grad)


def test_full_and_unknown_names_raise():
    with pytest.raises(NotImplementedError, match="full"):
        kl_penalty(LOGP, REF, "full")
    with pytest.raises(ValueError, match="low_var_kl") as err:
        kl_penalty(LOGP, REF, "k4")
    assert "k3+" in str(err.value) and "k4" in str(err.value)


def test_fixed_controller_and_state():
    ctrl = FixedKLController(0.01)
    ctrl.update(5.0, n_steps=100)
    assert ctrl.value == 0.01
    other = FixedKLController(0.5)
    other.load_state_dict(ctrl.state_dict())
    assert other.value == 0.01


def test_adaptive_controller_golden_and_state():
    ctrl = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.1, horizon=100)
    ctrl.update(current_kl=0.2, n_steps=10)  # e = clip(2 - 1) = 0.2 -> x (1 + 0.2 * 10/100)
    assert ctrl.value == pytest.approx(0.1 * 1.02)
    ctrl.update(current_kl=0.11, n_steps=10)  # e = 0.1 -> x 1.01
    assert ctrl.value == pytest.approx(0.1 * 1.02 * 1.01)
    ctrl.update(current_kl=0.0, n_steps=50)  # e = clip(-1) = -0.2 -> x 0.9
    expected = 0.1 * 1.02 * 1.01 * 0.9
    assert ctrl.value == pytest.approx(expected)
    restored = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.1, horizon=100)
    restored.load_state_dict(ctrl.state_dict())
    assert restored.value == pytest.approx(expected)
    with pytest.raises(ValueError, match="adaptive"):
        FixedKLController(0.1).load_state_dict(ctrl.state_dict())


def test_get_kl_controller():
    assert isinstance(get_kl_controller("fixed", kl_coef=0.001), FixedKLController)
    cfg = SimpleNamespace(type="adaptive", kl_coef=0.2, horizon=10000, target_kl=0.1)
    ctrl = get_kl_controller(cfg)
    assert isinstance(ctrl, AdaptiveKLController) and ctrl.value == 0.2 and ctrl.horizon == 10000
    with pytest.raises(ValueError, match="horizon"):
        get_kl_controller("adaptive", kl_coef=0.1, horizon=0, target_kl=0.1)
    with pytest.raises(ValueError, match="kl_ctrl.type"):
        get_kl_controller("cosine", kl_coef=0.1)


def test_apply_kl_penalty_golden_and_controller_update():
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    old = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -2.5, -0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    inputs = [t.clone() for t in (scores, old, ref, mask)]
    ctrl = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.1, horizon=100)
    rewards, metrics = apply_kl_penalty(scores, old, ref, mask, ctrl, kl_penalty="kl")
    # k1 = old - ref, masked: row0 [0.5, 0, -0.5], row1 [-1, 0.5, 0]
    expected = scores - 0.1 * torch.tensor([[0.5, 0.0, -0.5], [-1.0, 0.5, 0.0]])
    torch.testing.assert_close(rewards, expected)
    # per-row masked means: 0/3 and -0.5/2 -> batch mean -0.125
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(-0.125)
    assert metrics["actor/reward_kl_penalty_coeff"] == 0.1
    assert ctrl.value == pytest.approx(0.1 * (1 - 0.2 * 2 / 100))  # e clipped to -0.2, n_steps = 2 rows
    for before, after in zip(inputs, (scores, old, ref, mask)):
        assert torch.equal(before, after)


def test_apply_kl_penalty_ignores_non_finite_padding():
    mask = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[-1.0, float("-inf")]])
    ref = torch.tensor([[-1.5, float("nan")]])
    rewards, metrics = apply_kl_penalty(torch.tensor([[1.0, 0.0]]), old, ref, mask, FixedKLController(0.1))
    torch.testing.assert_close(rewards, torch.tensor([[1.0 - 0.05, 0.0]]))
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(0.5)
