"""GPU checks of ttrl_megatron.algorithms (marked gpu: skipped without CUDA).

- clip_cov (#13 item 8): its random token choice is drawn on the GPU with a CUDA generator, as the actor creates it
  (the old host draw with a device generator raised at the first clip_cov step); same seed, same tokens.
- every policy loss and every estimator runs on CUDA tensors with verl's calls and equals its CPU result.
"""

import numpy as np
import pytest
import torch

import ttrl_megatron.algorithms as A
from ttrl_megatron.protocol import DataProto

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


def actor_config(generator=None):
    return A.ActorLossConfig(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=0.28, clip_ratio_c=3.0,
                             loss_agg_mode="token-mean", loss_scale_factor=None, tau_pos=1.0, tau_neg=1.05,
                             policy_loss=A.PolicyLossSettings(loss_mode="clip_cov", clip_cov_ratio=0.2,
                                                              clip_cov_lb=-10.0, clip_cov_ub=10.0,
                                                              kl_cov_ratio=0.2, ppo_kl_coef=0.1),
                             generator=generator)


def loss_inputs(device):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(16, 32, generator=gen)
    logp = old + 0.05 * torch.randn(16, 32, generator=gen)
    adv = torch.randn(16, 32, generator=gen)
    mask = (torch.arange(32)[None] < torch.randint(1, 33, (16, 1), generator=gen)).float()
    return [t.to(device) for t in (old, logp, adv, mask)]


def test_clip_cov_draws_on_the_gpu_with_a_cuda_generator():
    old, logp, adv, mask = loss_inputs(CUDA)
    picks = []
    for _ in range(2):
        lp = logp.clone().requires_grad_(True)
        gen = torch.Generator(device=CUDA).manual_seed(42)  # as MegatronActor.update_policy creates it
        loss, _ = A.get_policy_loss_fn("clip_cov")(old, lp, adv, mask, loss_agg_mode="token-mean",
                                                  config=actor_config(gen))
        loss.backward()
        picks.append((lp.grad == 0) & (mask != 0))
    assert picks[0].any() and torch.equal(picks[0], picks[1])
    with pytest.raises(ValueError, match="generator lives on cpu"):
        A.get_policy_loss_fn("clip_cov")(old, logp, adv, mask, config=actor_config(torch.Generator()))


@pytest.mark.parametrize("name", ["vanilla", "gspo", "sapo", "gpg", "kl_cov", "geo_mean", "cispo"])
def test_policy_losses_on_cuda_equal_cpu(name):
    results = []
    for device in ("cpu", CUDA):
        old, logp, adv, mask = loss_inputs(device)
        loss, metrics = A.get_policy_loss_fn(name)(old, logp, adv, mask, loss_agg_mode="token-mean",
                                                   config=actor_config(), rollout_is_weights=torch.ones_like(adv))
        assert loss.device.type == torch.device(device).type
        results.append((loss.item(), {k: float(v) for k, v in metrics.items()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5, abs=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5, abs=1e-6)


def test_estimators_on_cuda_equal_cpu():
    gen = torch.Generator().manual_seed(1)
    mask = (torch.arange(12)[None] < torch.randint(1, 13, (24, 1), generator=gen)).float()
    scores = A.scores_to_token_level((torch.rand(24, generator=gen) > 0.5).float(), mask)
    probs = torch.softmax(torch.randn(24, 12, 9, generator=gen), -1)
    tensors = {"token_level_rewards": scores, "token_level_scores": scores, "response_mask": mask,
               "values": torch.randn(24, 12, generator=gen), "old_log_probs": torch.log(probs[..., 0]),
               "sum_pi_squared": probs.square().sum(-1)}
    uid = np.repeat(np.array([f"p{i}" for i in range(6)], dtype=object), 4)
    config = {"gamma": 0.9, "lam": 0.95, "norm_adv_by_std_in_grpo": True}
    for name in sorted(set(A.list_adv_estimators()) - {"remax"}):
        out = []
        for device in ("cpu", CUDA):
            batch = DataProto.from_dict({k: v.to(device) for k, v in tensors.items()}, {"uid": uid})
            A.compute_advantage(batch, name, gamma=0.9, lam=0.95, config=config)
            assert batch.batch["advantages"].device.type == torch.device(device).type, name
            out.append(batch.batch["advantages"].cpu())
        torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-6, msg=name)
