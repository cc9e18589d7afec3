"""agg_loss (incl. the sharding property), policy losses, value loss, entropy, masked helpers (ref. §1.4-§1.7)."""

import math
import statistics

import pytest
import torch

from ttrl_megatron.algorithms import (
    LOSS_AGG_MODES,
    agg_loss,
    compute_policy_loss,
    compute_policy_loss_vanilla,
    compute_value_loss,
    entropy_from_logits,
    entropy_from_logits_chunked,
    get_policy_loss_fn,
    list_policy_losses,
    masked_mean,
    masked_var,
    masked_whiten,
)

# ---------------------------------------------------------------- masked helpers


def test_masked_helpers_golden():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.5)
    torch.testing.assert_close(masked_mean(values, mask, axis=-1), torch.tensor([1.5, 3.5]))
    assert masked_var(values, mask).item() == pytest.approx(statistics.variance([1, 2, 3, 4]))
    white = masked_whiten(values, mask)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(statistics.variance([1, 2, 3, 4]) + 1e-8)
    torch.testing.assert_close(white[mask.bool()], expected)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0  # all-masked: 0, not NaN
    with pytest.raises(ValueError, match="no valid"):
        masked_var(values, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="exactly one"):
        masked_var(values, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- agg_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0, 0.0],
                     [4.0, 0.0, 0.0, 0.0],
                     [5.0, 6.0, 0.0, 0.0],
                     [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0, 0.0],
                     [1.0, 1.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0]])  # last row: empty response


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 21.0 / 6),  # 21 over 6 valid tokens
    ("seq-mean-token-sum", (6.0 + 4.0 + 11.0) / 3),  # 3 non-empty sequences
    ("seq-mean-token-mean", (2.0 + 4.0 + 5.5) / 3),
    ("seq-mean-token-sum-norm", (6.0 + 4.0 + 11.0) / 3 / 4),  # seq-mean-token-sum / T (current verl)
    ("token-sum", 21.0),
])
def test_agg_loss_golden(mode, expected):
    assert agg_loss(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_agg_loss_scale_factor_nan_padding_and_errors():
    assert agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=7).item() == pytest.approx(1.0)
    padded = LOSS.clone()
    padded[3] = float("nan")
    padded[0, 3] = float("inf")
    for mode in LOSS_AGG_MODES:
        assert torch.isfinite(agg_loss(padded, MASK, mode))
    assert agg_loss(LOSS, torch.zeros_like(MASK), "token-mean").item() == 0.0
    half = agg_loss(LOSS.to(torch.bfloat16), MASK, "token-mean", batch_num_tokens=1001)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(21.0 / 1001)  # 1001 is not a bf16 number
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(LOSS, MASK, "token-max")
    with pytest.raises(ValueError, match="loss_mask"):
        agg_loss(LOSS, MASK[:, :2], "token-mean")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_global_counts_make_sharding_irrelevant(mode):
    gen = torch.Generator().manual_seed(0)
    loss_mat = torch.randn(10, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(6).unsqueeze(0) < torch.randint(0, 7, (10, 1), generator=gen)).double()
    full = agg_loss(loss_mat, mask, mode)
    (full_grad,) = torch.autograd.grad(full, loss_mat)
    num_tokens = mask.sum()
    num_seqs = (mask.sum(-1) > 0).sum()
    # 2 DP ranks x uneven micro-batches: rows [0:3], [3:4] on rank 0 and [4:9], [9:10] on rank 1
    shards = [slice(0, 3), slice(3, 4), slice(4, 9), slice(9, 10)]
    total = sum(agg_loss(loss_mat[s], mask[s], mode, batch_num_tokens=num_tokens, global_batch_size=num_seqs)
                for s in shards)
    torch.testing.assert_close(total, full)
    (shard_grad,) = torch.autograd.grad(total, loss_mat)
    torch.testing.assert_close(shard_grad, full_grad)
    # verl's DP convention: with dp_size=2 each rank's share is doubled (DDP then averages the two ranks)
    per_rank = [sum(agg_loss(loss_mat[s], mask[s], mode, 2, num_tokens, num_seqs) for s in shards[:2]),
                sum(agg_loss(loss_mat[s], mask[s], mode, 2, num_tokens, num_seqs) for s in shards[2:])]
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, full)
    if mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        # without the global counts every shard normalizes by itself: a different (wrong) loss
        local = sum(agg_loss(loss_mat[s], mask[s], mode) for s in shards) / len(shards)
        assert not torch.allclose(local, full)


# ---------------------------------------------------------------- policy losses


def actor_config(**overrides):
    """The actor config as a plain dict (verl's keys), verl's defaults unless overridden."""
    cfg = {"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None, "clip_ratio_c": 3.0,
           "tau_pos": 1.0, "tau_neg": 1.05,
           "policy_loss": {"clip_cov_ratio": 0.0002, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0, "kl_cov_ratio": 0.0002,
                           "ppo_kl_coef": 0.1}}
    for key, value in overrides.items():
        (cfg["policy_loss"] if key in cfg["policy_loss"] or key == "generator_only" else cfg)[key] = value
    return cfg


def policy_loss(mode, old, logp, adv, mask, loss_agg_mode="token-mean", rollout_is_weights=None, **overrides):
    """The actor's (verl's) call of a registered loss."""
    return get_policy_loss_fn(mode)(old, logp, adv, mask, loss_agg_mode=loss_agg_mode, config=actor_config(**overrides),
                                    rollout_is_weights=rollout_is_weights)


def vanilla_inputs():
    # ratios r = [1.5, 0.5, 4.0, 1.0] against advantages [1, -1, -1, 1]
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 4.0, 1.0]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    return old, logp, adv, torch.ones(1, 4)


def test_vanilla_dual_clip_golden_and_gradient():
    old, logp, adv, mask = vanilla_inputs()
    loss, metrics = policy_loss("vanilla", old, logp, adv, mask)
    # per token: clipped -1.2; clipped 0.8; dual-clipped min(3, 4) = 3; unclipped -1
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 3.0 - 1.0) / 4)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_lower"].item() == pytest.approx(0.25)
    assert metrics["actor/ppo_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(4.0)) / 4)
    assert not any(v.requires_grad for v in metrics.values())
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0, -0.25]]))  # only the unclipped token


def test_compute_policy_loss_is_verls_four_tuple():
    old, logp, adv, mask = vanilla_inputs()
    pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower = compute_policy_loss(old, logp, adv, mask, 0.2)
    assert pg_loss.item() == pytest.approx((-1.2 + 0.8 + 3.0 - 1.0) / 4)
    assert (pg_clipfrac.item(), pg_clipfrac_lower.item()) == pytest.approx((0.5, 0.25))
    assert ppo_kl.item() == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(4.0)) / 4)
    with pytest.raises(ValueError, match="cliprange"):
        compute_policy_loss(old, logp, adv, mask)


def test_vanilla_asymmetric_clip_and_validation():
    old, logp, adv, mask = vanilla_inputs()
    loss, _ = policy_loss("vanilla", old, logp, adv, mask, clip_ratio_low=0.6, clip_ratio_high=0.6, clip_ratio_c=10.0)
    # token 0: max(-1.5, -1.5) = -1.5; token 1: max(0.5, 0.5) = 0.5; token 2: min(10, max(4, 1.6)) = 4
    assert loss.item() == pytest.approx((-1.5 + 0.5 + 4.0 - 1.0) / 4)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss("vanilla", old, logp, adv, mask, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.policy_loss.loss_mode"):
        get_policy_loss_fn("ppo2")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss("vanilla", old, logp, adv[:, :2], mask)
    with pytest.raises(ValueError, match="'clip_ratio'.*config=None"):
        compute_policy_loss_vanilla(old, logp, adv, mask)


def test_rollout_is_weights_multiply_the_loss():
    old, logp, adv, mask = vanilla_inputs()
    weights = torch.tensor([[2.0, 0.0, 0.0, 1.0]])
    loss, _ = policy_loss("vanilla", old, logp, adv, mask, rollout_is_weights=weights)
    assert loss.item() == pytest.approx((2 * -1.2 - 1.0) / 4)


def test_gspo_golden_uses_sequence_ratio_and_seq_mean_token_mean():
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.1, 0.3], [-0.1, 5.0]], requires_grad=True)  # row 1 token 1 is padding
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = policy_loss("gspo", old, logp, adv, mask, loss_agg_mode="token-mean")
    s1 = math.exp(-0.1)  # row 0: exp(0.2) = 1.221 -> clipped at 1.2; row 1 unclipped
    assert loss.item() == pytest.approx((-1.2 + s1) / 2, rel=1e-6)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(2 / 3)
    assert metrics["actor/pg_clipfrac_lower"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0], [s1 / 2, 0.0]]))


def test_gpg_loss_golden():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = policy_loss("gpg", torch.zeros(2, 2), logp, adv, mask)
    assert loss.item() == pytest.approx((1.0 + 2.0 - 1.0) / 3)
    assert metrics == {}


def cov_inputs():
    # advantages mean 0 and log-probs mean -1.55: per-token covariances [2.9, 2.9, 2.7, 2.7], all in (1, 5)
    logp = torch.tensor([[-0.1, -3.0, -0.2, -2.9]], requires_grad=True)
    return logp.detach().clone(), logp, torch.tensor([[2.0, -2.0, 2.0, -2.0]]), torch.ones(1, 4)


def test_clip_cov_zeroes_eligible_tokens():
    old, logp, adv, mask = cov_inputs()
    cfg = actor_config(clip_cov_ratio=1.0, clip_cov_ub=2.8)
    cfg["generator"] = torch.Generator().manual_seed(0)
    loss, metrics = get_policy_loss_fn("clip_cov")(old, logp, adv, mask, config=cfg)
    # only the two tokens with cov 2.7 (< ub 2.8) are eligible; budget 4 covers both
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx((-2.0 + 2.0) / 4)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, 0.5, 0.0, 0.0]]))
    old, logp, adv, mask = cov_inputs()
    _, metrics = policy_loss("clip_cov", old, logp, adv, mask)
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(0.25)  # default ratio: budget max(int(...), 1) = 1


def test_kl_cov_penalizes_top_covariance_tokens():
    _, logp, adv, mask = cov_inputs()
    old = logp.detach() - torch.tensor([[0.1, -0.2, 0.3, 0.0]])
    loss, metrics = policy_loss("kl_cov", old, logp, adv, mask, kl_cov_ratio=0.5, ppo_kl_coef=1.0)
    ratio = torch.exp(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    base = -adv[0] * ratio
    # top-2 covariance tokens are 0 and 1 (2.9) -> + |logp - old|
    expected = (base.sum() + 0.1 + 0.2) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["actor/ppo_kl"].item() == pytest.approx(0.6 / 4)
    assert metrics["actor/pg_clipfrac"].item() == 0.0


def test_policy_loss_registry_and_sharding():
    assert set(list_policy_losses()) >= {"cispo", "clip_cov", "geo_mean", "gpg", "gspo", "kl_cov", "sapo", "vanilla"}
    with pytest.raises(ValueError, match="vanilla"):
        get_policy_loss_fn("nope")
    gen = torch.Generator().manual_seed(3)
    old = torch.randn(6, 5, generator=gen) * 0.1
    logp = (old + torch.randn(6, 5, generator=gen) * 0.3).requires_grad_(True)
    adv = torch.randn(6, 5, generator=gen)
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor([[5], [3], [1], [4], [2], [5]])).float()
    for mode, agg in (("vanilla", "token-mean"), ("vanilla", "seq-mean-token-mean"), ("gspo", "token-mean"),
                      ("gpg", "seq-mean-token-sum"), ("sapo", "token-mean"), ("cispo", "seq-mean-token-sum-norm"),
                      ("geo_mean", "token-mean"), ("kl_cov", "token-sum")):
        full, _ = policy_loss(mode, old, logp, adv, mask, agg)
        info = {"batch_num_tokens": mask.sum(), "global_batch_size": (mask.sum(-1) > 0).sum(),
                "loss_scale_factor": 5}
        parts = 0
        for s in (slice(0, 2), slice(2, 3), slice(3, 6)):
            cfg = actor_config()
            cfg["global_batch_info"] = info
            parts = parts + get_policy_loss_fn(mode)(old[s], logp[s], adv[s], mask[s], loss_agg_mode=agg,
                                                     config=cfg)[0]
        if mode == "kl_cov":  # its top-covariance choice is per call: only token-sum of the base term is additive
            continue
        torch.testing.assert_close(parts, full, msg=mode)


# ---------------------------------------------------------------- value loss and entropy


def test_value_loss_golden():
    vpreds = torch.tensor([[1.0, 2.0, 1.0]], requires_grad=True)
    values = torch.tensor([[0.0, 2.0, 0.0]])
    returns = torch.tensor([[0.5, 3.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac = compute_value_loss(vpreds, returns, values, mask, cliprange_value=0.5)
    # v_clip = [0.5, 2.0, 0.5]; max(err, err_clip) = [max(.25, 0), max(1, 1), max(1, 2.25)]
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0 + 2.25) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    loss.backward()
    # token 2 uses the clipped branch (constant w.r.t. vpreds): zero gradient
    torch.testing.assert_close(vpreds.grad, torch.tensor([[0.5 / 3, -1.0 / 3, 0.0]]))


def test_entropy_golden_and_chunked_matches():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    expected = torch.tensor([math.log(2.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    gen = torch.Generator().manual_seed(0)
    big = (torch.randn(3, 7, 11, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    chunked = entropy_from_logits_chunked(big, chunk_size=4)
    plain = entropy_from_logits(big)
    torch.testing.assert_close(chunked, plain)
    weights = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    (g_chunked,) = torch.autograd.grad((chunked * weights).sum(), big)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), big)
    torch.testing.assert_close(g_chunked, g_plain)
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits_chunked(big, chunk_size=0)
