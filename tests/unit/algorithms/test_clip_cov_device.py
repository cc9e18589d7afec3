"""#13 item 8: clip_cov draws its random token choice on the device of the log-probs, with a generator on that device.

CPU proxies for the GPU bug (a host draw with a cuda generator crashes at the first clip_cov step): the whole loss runs
on the ``meta`` device (any host tensor or host-only op in the draw would fail there; the old draw used
``torch.nonzero`` and ``randperm(device="cpu")``), a generator on another device is refused with one clear error, and
the draw is the seeded generator's: the same seed zeroes the same tokens (as every tensor-parallel rank must)."""

import pytest
import torch

from ttrl_megatron.algorithms import ActorLossConfig, PolicyLossSettings, get_policy_loss_fn
from ttrl_megatron.algorithms.policy_losses import random_subset


def config(generator=None, ratio=0.5, lb=-10.0, ub=10.0):
    return ActorLossConfig(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0,
                           loss_agg_mode="token-mean", loss_scale_factor=None, tau_pos=1.0, tau_neg=1.05,
                           policy_loss=PolicyLossSettings(loss_mode="clip_cov", clip_cov_ratio=ratio, clip_cov_lb=lb,
                                                          clip_cov_ub=ub, kl_cov_ratio=2e-4, ppo_kl_coef=0.1),
                           generator=generator)


def inputs(device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 8, generator=gen)
    logp = (old + 0.01 * torch.randn(4, 8, generator=gen)).requires_grad_(True)  # ratios ~1: nothing PPO-clipped
    adv = torch.randn(4, 8, generator=gen)
    mask = (torch.arange(8).unsqueeze(0) < torch.tensor([[8], [5], [3], [6]])).float()
    return [t.to(device) for t in (old, logp, adv, mask)]


def test_clip_cov_runs_entirely_on_the_meta_device():
    old, logp, adv, mask = inputs("meta")
    loss, metrics = get_policy_loss_fn("clip_cov")(old, logp, adv, mask, loss_agg_mode="token-mean",
                                                   config=config())
    assert loss.device.type == "meta" and all(v.device.type == "meta" for v in metrics.values())


def test_a_generator_on_another_device_is_refused():
    old, logp, adv, mask = inputs("meta")
    with pytest.raises(ValueError, match="device of the log-probs \\(meta\\).*generator lives on cpu"):
        get_policy_loss_fn("clip_cov")(old, logp, adv, mask, config=config(torch.Generator().manual_seed(0)))


def zeroed(seed):
    old, logp, adv, mask = inputs()
    cfg = config(torch.Generator(device=logp.device).manual_seed(seed))
    loss, metrics = get_policy_loss_fn("clip_cov")(old, logp, adv, mask, config=cfg)
    loss.backward()
    return (logp.grad == 0) & (mask != 0), metrics["actor/pg_clipfrac"].item()


def test_the_draw_is_the_seeded_generators():
    first, frac = zeroed(7)
    again, _ = zeroed(7)
    assert torch.equal(first, again)  # same seed, same tokens: tensor-parallel ranks agree
    assert int(first.sum()) == int(0.5 * 22) and frac == pytest.approx(11 / 22)  # 22 valid tokens, ratio 0.5
    assert any(not torch.equal(first, zeroed(s)[0]) for s in (8, 9, 10))


def test_random_subset_is_uniform_and_capped():
    eligible = torch.tensor([True, False, True, True, False, True])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(2000):
        pick = random_subset(eligible, torch.tensor(1.0, dtype=torch.float64), gen)
        assert int(pick.sum()) == 1 and not (pick & ~eligible).any()
        counts += pick.float()
    assert torch.all((counts[eligible] / 2000 - 0.25).abs() < 0.04)
    everything = random_subset(eligible, torch.tensor(9.0, dtype=torch.float64), gen)
    assert torch.equal(everything, eligible)  # a budget above the candidates takes them all, nothing else
