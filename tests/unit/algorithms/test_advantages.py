"""Advantage estimators: hand-computed golden values, edge cases, registry and calling convention (reference §1.4,
§3.2, §3.4)."""

import enum
import math
import statistics

import numpy as np
import pytest
import torch

from ttrl_megatron.algorithms import (
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
    compute_rloo_vectorized_outcome_advantage,
    get_adv_estimator_fn,
    list_adv_estimators,
    register_adv_est,
    scores_to_token_level,
)
from ttrl_megatron.protocol import DataProto

EPS = 1e-6
SQRT3 = math.sqrt(3.0)


def outcome_batch(scores, lengths, T=4):
    """[B, T] rewards with each score on the last valid token of a right-padded response of the given length."""
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    return scores_to_token_level(torch.tensor(scores, dtype=torch.float32), mask), mask


# Rows: group "a" = 3 rows scores [1, 0, 1]; group "b" uniform [1, 1]; group "c" singleton 0.7.
SCORES = [1.0, 0.0, 1.0, 1.0, 1.0, 0.7]
LENGTHS = [2, 4, 1, 3, 3, 2]
INDEX = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
# grpo group a: mean 2/3, unbiased std sqrt(1/3) -> (1/3) / (sqrt(1/3) + eps) and (-2/3) / (sqrt(1/3) + eps)
STD_A = 1 / SQRT3
GRPO_ROWS = [(1 / 3) / (STD_A + EPS), (-2 / 3) / (STD_A + EPS), (1 / 3) / (STD_A + EPS), 0.0, 0.0, 0.7 / (1 + EPS)]


def row_values(adv, mask):
    """Recover the per-row scalar of a broadcast advantage (rows must have >= 1 valid token)."""
    assert torch.equal(adv * mask, adv)  # zero outside the mask
    return (adv.sum(-1) / mask.sum(-1)).tolist()


def test_grpo_golden_singleton_uniform():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    adv, ret = compute_grpo_outcome_advantage(rewards, mask, INDEX)
    assert ret is adv
    assert row_values(adv, mask) == pytest.approx(GRPO_ROWS, abs=1e-6)
    # eps is added to the std (not the variance), visible at float32 precision
    assert adv[0, 0].item() == pytest.approx(GRPO_ROWS[0], rel=2e-7)
    assert adv[0, 0].item() != pytest.approx(1 / SQRT3, rel=2e-7)
    assert torch.all(adv[3:5] == 0)  # uniform group: exactly 0


def test_grpo_mean_only_baseline():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, INDEX, norm_adv_by_std_in_grpo=False)
    assert row_values(adv, mask) == pytest.approx([1 / 3, -2 / 3, 1 / 3, 0.0, 0.0, 0.7], abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_group_is_exactly_zero_for_inexact_floats(dtype):
    # sum of seven 0.1s divided by 7 is not exactly 0.1 (float64: off by 1.4e-17, float32 stats: 7e-9, which
    # divided by std + eps would give ~0.007); the uniform rule must still give exactly 0.
    _, mask = outcome_batch([0.0] * 7, [2] * 7)
    rewards = scores_to_token_level(torch.full((7,), 0.1, dtype=dtype), mask)
    assert (rewards.sum(-1).sum() / 7).item() != rewards.sum(-1)[0].item() or dtype == torch.float32
    for fn in (compute_grpo_outcome_advantage, compute_rloo_outcome_advantage, compute_opo_outcome_advantage):
        adv, _ = fn(rewards, mask, np.zeros(7, dtype=np.int64))
        assert torch.count_nonzero(adv) == 0, fn.__name__


@pytest.mark.parametrize("index", [
    np.array(["a", "a", "a", "b", "b", "c"]),  # unicode dtype
    ["a", "a", "a", "b", "b", "c"],  # list
    np.array([7, 7, 7, -1, -1, 3]),  # ints
    np.array([7, 7, 7, -1, -1, 3], dtype=object),
    torch.tensor([2, 2, 2, 0, 0, 1]),
])
def test_index_types_agree(index):
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    expected, _ = compute_grpo_outcome_advantage(rewards, mask, INDEX)
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    assert torch.equal(adv, expected)


class CollidingId:
    """Distinct ids that all share one hash: forces factorize_index off its hash path onto the exact fallback."""

    def __init__(self, key):
        self.key = key

    def __hash__(self):
        return 1

    def __eq__(self, other):
        return self.key == other.key

    def __lt__(self, other):
        return self.key < other.key


def test_hash_collisions_fall_back_to_exact_grouping():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    expected, _ = compute_grpo_outcome_advantage(rewards, mask, INDEX)
    colliding = np.array([CollidingId(k) for k in INDEX], dtype=object)
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, colliding)
    assert torch.equal(adv, expected)


def test_bad_index_and_shapes_raise():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    with pytest.raises(ValueError, match="index"):
        compute_grpo_outcome_advantage(rewards, mask, INDEX[:5])
    with pytest.raises(ValueError, match="response_mask"):
        compute_grpo_outcome_advantage(rewards, mask[:, :3], INDEX)
    with pytest.raises(ValueError, match="index"):
        compute_grpo_outcome_advantage(rewards, mask, torch.zeros(6))


def test_empty_and_all_masked_rows():
    # Row 1 is an empty response: its score sits in the last column (verl convention) and still counts for the
    # group statistics; its advantage row is all zero because it has no valid token.
    rewards, mask = outcome_batch([1.0, 0.0, 1.0], [2, 0, 3])
    assert rewards[1, -1] == 0.0 and mask[1].sum() == 0
    rewards[1, -1] = 0.5
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, np.zeros(3, dtype=np.int64))
    assert torch.all(adv[1] == 0)
    # group [1, 0.5, 1]: mean 5/6, std sqrt(1/12)
    assert adv[0, 0].item() == pytest.approx((1 / 6) / math.sqrt(1 / 12), rel=1e-5)


def nsr_config(positive_weight=0.1, negative_weight=1.0, correctness_threshold=0.5, section="grpo_nsr"):
    return {section: {"positive_weight": positive_weight, "negative_weight": negative_weight,
                      "correctness_threshold": correctness_threshold}}


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_nsr_with_unit_weights_equals_grpo_bitwise(norm):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(64, 16, generator=gen)
    mask = (torch.rand(64, 16, generator=gen) > 0.3).float()
    index = torch.randint(0, 9, (64,), generator=gen)
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    nsr, _ = compute_grpo_nsr_outcome_advantage(rewards, mask, index, token_level_scores=rewards,
                                                norm_adv_by_std_in_grpo=norm, config=nsr_config(1.0, 1.0))
    assert torch.equal(grpo, nsr)


def test_grpo_nsr_golden_weights():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    adv, ret = compute_grpo_nsr_outcome_advantage(rewards, mask, INDEX)  # defaults 0.1 / 1.0 / 0.5
    assert ret is adv
    expected = [0.1 * GRPO_ROWS[0], GRPO_ROWS[1], 0.1 * GRPO_ROWS[2], 0.0, 0.0, 0.1 * 0.7 / (1 + EPS)]
    assert row_values(adv, mask) == pytest.approx(expected, abs=1e-6)


def test_grpo_nsr_mean_only_gives_weighted_accuracy_gaps():
    # 0/1 rewards, group accuracy p = 3/4: mean-only gives +w_pos (1 - p) and -w_neg p.
    rewards, mask = outcome_batch([1.0, 1.0, 1.0, 0.0], [4] * 4)
    adv, _ = compute_grpo_nsr_outcome_advantage(rewards, mask, np.zeros(4, dtype=np.int64),
                                                norm_adv_by_std_in_grpo=False, config=nsr_config(0.2, 0.5))
    assert row_values(adv, mask) == pytest.approx([0.2 * 0.25] * 3 + [-0.5 * 0.75], abs=1e-7)


def test_grpo_nsr_kl_shaped_rewards_do_not_change_correctness():
    scores, mask = outcome_batch([1.0, 0.0], [4, 4])
    kl = torch.full((2, 4), 0.2) * mask  # total 0.8: the correct row's shaped reward drops to 0.2 < threshold
    rewards = scores - kl
    index = np.array([0, 0])
    adv, _ = compute_grpo_nsr_outcome_advantage(rewards, mask, index, token_level_scores=scores,
                                                config=nsr_config(0.1, 1.0))
    # shaped sums [0.2, -0.8]: grpo values +-1/sqrt(2) (std of two values = |diff|/sqrt(2))
    a = 1.0 / (math.sqrt(2.0) + EPS)
    assert row_values(adv, mask) == pytest.approx([0.1 * a, -a], rel=1e-5)
    # judged on the shaped rewards instead, the correct row would be "incorrect" and keep weight 1
    adv_wrong, _ = compute_grpo_nsr_outcome_advantage(rewards, mask, index, config=nsr_config(0.1))
    assert row_values(adv_wrong, mask) == pytest.approx([a, -a], rel=1e-5)


def test_grpo_nsr_metrics_and_validation():
    scores, mask = outcome_batch([1.0, 0.0, 1.0, 0.4], [2, 4, 1, 3])
    metrics = compute_grpo_nsr_metrics(mask, scores, correctness_threshold=0.5, positive_weight=0.1,
                                       negative_weight=1.0)
    assert metrics == {
        "training/grpo_nsr_pos_ratio": 0.5,
        "training/grpo_nsr_pos_token_ratio": pytest.approx(3 / 10),
        "training/grpo_nsr_pos_weight": 0.1,
        "training/grpo_nsr_neg_weight": 1.0,
    }
    empty = compute_grpo_nsr_metrics(torch.zeros(2, 3), torch.zeros(2, 3), correctness_threshold=0.5,
                                     positive_weight=0.1, negative_weight=1.0)
    assert empty["training/grpo_nsr_pos_token_ratio"] == 0.0
    with pytest.raises(ValueError, match="algorithm.grpo_nsr.positive_weight"):
        compute_grpo_nsr_outcome_advantage(scores, mask, np.zeros(4), config=nsr_config(-0.1))


def test_rloo_golden():
    rewards, mask = outcome_batch(SCORES, LENGTHS)
    adv, ret = compute_rloo_outcome_advantage(rewards, mask, INDEX)
    assert ret is adv
    # group a: 3/2 (s - 2/3) = s - mean of the other two; singleton keeps its score
    assert row_values(adv, mask) == pytest.approx([0.5, -1.0, 0.5, 0.0, 0.0, 0.7], abs=1e-6)
    # verl's vectorized RLOO: the same, except that the singleton gets 0
    vec, _ = compute_rloo_vectorized_outcome_advantage(rewards, mask, INDEX)
    assert row_values(vec, mask) == pytest.approx([0.5, -1.0, 0.5, 0.0, 0.0, 0.0], abs=1e-6)


def test_opo_golden():
    rewards, mask = outcome_batch([1.0, 0.0, 0.5, 0.3], [1, 3, 2, 2])
    adv, _ = compute_opo_outcome_advantage(rewards, mask, np.array(["g", "g", "s", "u"]))
    # group g: b = (1*1 + 3*0) / 4 = 0.25; "s" and "u" singletons keep their score
    assert row_values(adv, mask) == pytest.approx([0.75, -0.25, 0.5, 0.3], abs=1e-6)


def test_gpg_golden():
    rewards, mask = outcome_batch([1.0, 0.0, 1.0, 0.5], [2, 2, 2, 2])
    adv, _ = compute_gpg_outcome_advantage(rewards, mask, np.array([0, 0, 0, 1]))
    alpha = 4 / 3  # 4 rows, 3 non-zero scores
    assert row_values(adv, mask) == pytest.approx([alpha / 3, -alpha * 2 / 3, alpha / 3, alpha * 0.5], abs=1e-6)


def test_grpo_passk_golden_ties_and_singletons():
    rewards, mask = outcome_batch([0.2, 0.9, 0.5, 1.0, 1.0, 0.0], [2] * 6)
    index = np.array([0, 0, 0, 1, 1, 1])
    adv, _ = compute_grpo_passk_outcome_advantage(rewards, mask, index)
    std = statistics.stdev([0.2, 0.9, 0.5])
    expected = [0.0, 0.4 / (std + EPS), 0.0, 0.0, 0.0, 0.0]  # group 1 ties at the top -> 0
    assert row_values(adv, mask) == pytest.approx(expected, abs=1e-6)
    plain, _ = compute_grpo_passk_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    assert row_values(plain, mask)[1] == pytest.approx(0.4, abs=1e-6)
    # as verl: a given config decides the normalization, not the argument
    by_config, _ = compute_grpo_passk_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=True,
                                                        config={"norm_adv_by_std_in_grpo": False})
    assert torch.equal(by_config, plain)
    with pytest.raises(ValueError, match="at least 2"):
        compute_grpo_passk_outcome_advantage(rewards, mask, np.array([0, 0, 0, 1, 1, 2]))


def test_reinforce_plus_plus_baseline_golden():
    rewards, mask = outcome_batch([1.0, 0.0, 0.5], [2, 1, 3])
    adv, ret = compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, np.array([0, 0, 1]))
    assert ret is adv
    # centered: +0.5 (2 tokens), -0.5 (1 token), 0.5 (singleton, 3 tokens) -> whiten over the 6 valid tokens
    tokens = [0.5, 0.5, -0.5, 0.5, 0.5, 0.5]
    mean, std = statistics.mean(tokens), statistics.stdev(tokens)
    expected = torch.zeros(3, 4)
    for row, value, length in ((0, 0.5, 2), (1, -0.5, 1), (2, 0.5, 3)):
        expected[row, :length] = (value - mean) / math.sqrt(std**2 + 1e-8)
    torch.testing.assert_close(adv, expected)


def test_gae_golden_with_masked_hole():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    adv, ret = compute_gae_advantage_return(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    raw = [0.5, 0.8, 0.9]
    expected = [(r - statistics.mean(raw)) / math.sqrt(statistics.variance(raw) + 1e-8) for r in raw]
    torch.testing.assert_close(adv, torch.tensor([expected]))
    # middle token masked (e.g. a tool observation): it passes V_next and g_next through unchanged
    _, ret_hole = compute_gae_advantage_return(rewards, values, torch.tensor([[1.0, 0.0, 1.0]]), 1.0, 1.0)
    torch.testing.assert_close(ret_hole, torch.tensor([[0.5 + 0.5, 0.9 + 0.2, 0.9 + 0.1]]))
    _, ret_disc = compute_gae_advantage_return(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    g1 = -0.11 + 0.45 * 0.9
    g0 = -0.32 + 0.45 * g1
    torch.testing.assert_close(ret_disc, torch.tensor([[g0 + 0.5, g1 + 0.2, 0.9 + 0.1]]))


def test_reinforce_plus_plus_golden_masked_positions():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, ret = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, config={"gamma": 0.5})
    # row 0: the reward 5 on a padding position is dropped, and the padding's return is 0 (current verl)
    torch.testing.assert_close(ret, torch.tensor([[0.25, 0.5, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0]]))
    valid = [0.25, 0.5, 1.0, 1.0, 2.0, 0.0, 0.0]
    mean, var = statistics.mean(valid), statistics.variance(valid)
    expected = ((ret - mean) / math.sqrt(var + 1e-8)) * mask
    torch.testing.assert_close(adv, expected)
    # an observation span inside the response (masked) is skipped: the later reward still reaches token 0
    hole = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    _, ret_hole = compute_reinforce_plus_plus_outcome_advantage(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), hole,
                                                                config={"gamma": 0.5})
    torch.testing.assert_close(ret_hole, torch.tensor([[0.5, 0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="'gamma'"):
        compute_reinforce_plus_plus_outcome_advantage(rewards, mask)  # verl requires the config
    with pytest.raises(TypeError, match="gamma"):
        compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=0.5)  # not silently ignored


def test_remax_golden():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = compute_remax_outcome_advantage(rewards, torch.tensor([0.4]), mask)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.6, 0.6, 0.6, 0.0]]))


def test_psr_nsr_w_reinforce_golden():
    scores, mask = outcome_batch([1.0, 0.0, 0.0, 0.0], [2, 3, 1, 4])
    adv, ret = compute_psr_nsr_outcome_advantage(scores, mask)
    # no baseline: +0.1 on correct rows, -1 on incorrect rows, even in an all-wrong group
    expected = torch.tensor([0.1, -1.0, -1.0, -1.0]).unsqueeze(-1) * mask
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret.sum(-1), torch.tensor([2.0, 0.0, 0.0, 0.0]))  # G = 1 on each valid token
    # with KL in the reward, correctness still comes from the scores: lambda * G and (G - 1)
    rewards = scores - 0.1 * mask
    adv_kl, _ = compute_psr_nsr_outcome_advantage(rewards, mask, token_level_scores=scores,
                                                  config={"gamma": 1.0, **nsr_config(0.5, 2.0, section="psr_nsr")})
    torch.testing.assert_close(adv_kl[0, :2], 0.5 * torch.tensor([0.8, 0.9]))
    torch.testing.assert_close(adv_kl[1, :3], 2.0 * (torch.tensor([-0.3, -0.2, -0.1]) - 1.0))


def loop_reference(scores, index, kind):
    """Straightforward per-group reference for random cross-checks (float64)."""
    groups = {}
    for i, key in enumerate(index):
        groups.setdefault(key, []).append(i)
    out = [0.0] * len(scores)
    for rows in groups.values():
        vals = [scores[i] for i in rows]
        n = len(vals)
        mean = statistics.mean(vals) if n > 1 else 0.0
        std = statistics.stdev(vals) if n > 1 else 1.0
        for i in rows:
            if kind == "grpo":
                out[i] = (scores[i] - mean) / (std + EPS)
            elif kind == "rloo":
                out[i] = (scores[i] - mean) * n / (n - 1) if n > 1 else scores[i]
    return out


@pytest.mark.parametrize("kind,fn", [("grpo", compute_grpo_outcome_advantage),
                                     ("rloo", compute_rloo_outcome_advantage)])
def test_random_groups_match_loop_reference(kind, fn):
    gen = torch.Generator().manual_seed(1)
    n = 300
    rewards = torch.rand(n, 8, generator=gen, dtype=torch.float64)
    mask = torch.ones(n, 8, dtype=torch.float64)
    index = torch.randint(0, 80, (n,), generator=gen).numpy()  # random group sizes, singletons included
    adv, _ = fn(rewards, mask, index)
    expected = loop_reference(rewards.sum(-1).tolist(), index.tolist(), kind)
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=torch.float64))


def random_batch(with_baselines=False):
    """A DataProto as the trainer holds it: [8, 6] tensors and 4 prompt groups of 2 under non_tensor_batch uid."""
    gen = torch.Generator().manual_seed(2)
    mask = (torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (8, 1), generator=gen)).float()
    scores = scores_to_token_level((torch.rand(8, generator=gen) > 0.5).float(), mask)
    logits = torch.randn(8, 6, 5, generator=gen)
    probs = torch.softmax(logits, -1)
    t = {"token_level_rewards": scores - 0.01 * torch.rand(8, 6, generator=gen) * mask,
         "token_level_scores": scores, "response_mask": mask, "values": torch.randn(8, 6, generator=gen),
         "old_log_probs": torch.log(probs[..., 0]), "sum_pi_squared": probs.square().sum(-1)}
    if with_baselines:
        t["reward_baselines"] = torch.rand(8, generator=gen)
    return DataProto.from_dict(t, {"uid": np.repeat(np.array(["p", "q", "r", "s"], dtype=object), 2)})


ALGO = {"gamma": 0.9, "lam": 0.95, "norm_adv_by_std_in_grpo": True, "grpo_nsr": {}, "psr_nsr": {}}


def test_registry_lists_every_estimator_and_rejects_unknown():
    assert set(list_adv_estimators()) >= {  # other tests register more
        "gae", "grpo", "grpo_vectorized", "grpo_nsr", "rloo", "rloo_vectorized", "reinforce_plus_plus",
        "reinforce_plus_plus_baseline", "remax", "opo", "gpg", "grpo_passk", "psr_nsr", "optimal_token_baseline",
        "tir_optimal_token_baseline"}
    with pytest.raises(ValueError, match="grpo_nsr") as err:
        get_adv_estimator_fn("nope")
    assert "algorithm.adv_estimator" in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        register_adv_est("grpo")(lambda **kw: None)

    class Est(enum.Enum):
        GRPO = "grpo"

    assert get_adv_estimator_fn(Est.GRPO) is get_adv_estimator_fn("grpo")
    assert get_adv_estimator_fn("grpo_vectorized") is compute_grpo_outcome_advantage


BUILTIN_ESTIMATORS = ["gae", "gpg", "grpo", "grpo_nsr", "grpo_passk", "grpo_vectorized", "opo", "optimal_token_baseline",
                      "psr_nsr", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "rloo",
                      "rloo_vectorized", "tir_optimal_token_baseline"]


@pytest.mark.parametrize("name", BUILTIN_ESTIMATORS)
def test_compute_advantage_runs_every_estimator_without_mutating_inputs(name):
    batch = random_batch(with_baselines=name == "remax")
    before = {k: v.clone() for k, v in batch.batch.items()}
    out = compute_advantage(batch, name, gamma=0.9, lam=0.95, num_repeat=2, config=ALGO)
    assert out is batch
    adv, ret = batch.batch["advantages"], batch.batch["returns"]
    assert adv.shape == ret.shape == before["token_level_rewards"].shape
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert torch.count_nonzero(adv * (1 - before["response_mask"])) == 0 or name == "gae"  # gae is not re-masked
    for key, value in before.items():
        assert torch.equal(batch.batch[key], value), key


def test_compute_advantage_derives_the_response_mask_and_refuses_missing_inputs():
    batch = random_batch()
    mask = batch.batch.pop("response_mask")
    batch.batch["responses"] = torch.ones(8, 6, dtype=torch.long)
    batch.batch["attention_mask"] = torch.cat([torch.ones(8, 3), mask], dim=1)
    compute_advantage(batch, "grpo")
    assert torch.equal(batch.batch["response_mask"], mask)
    del batch.batch["sum_pi_squared"]
    with pytest.raises(ValueError, match="calculate_sum_pi_squared"):
        compute_advantage(batch, "optimal_token_baseline", config=ALGO)


def test_out_buffer_is_reused():
    batch = random_batch()
    t = batch.batch
    expected, _ = compute_grpo_outcome_advantage(t["token_level_rewards"], t["response_mask"], batch.obj("uid"))
    buf = torch.full_like(expected, float("nan"))
    got, _ = compute_grpo_outcome_advantage(t["token_level_rewards"], t["response_mask"], batch.obj("uid"), out=buf)
    assert got is buf and torch.equal(buf, expected)
    with pytest.raises(ValueError, match="out must"):
        compute_grpo_outcome_advantage(t["token_level_rewards"], t["response_mask"], batch.obj("uid"),
                                       out=torch.empty(3, 3))
    rewards = t["token_level_rewards"].clone()
    with pytest.raises(ValueError, match="share memory"):
        compute_grpo_outcome_advantage(rewards, t["response_mask"], batch.obj("uid"), out=rewards)


def test_unknown_keywords_raise_instead_of_being_dropped():
    t = random_batch().batch
    with pytest.raises(TypeError, match="positive_weight"):
        compute_grpo_nsr_outcome_advantage(t["token_level_rewards"], t["response_mask"], np.zeros(8),
                                           positive_weight=0.5)
    with pytest.raises(TypeError, match="gamma"):
        compute_psr_nsr_outcome_advantage(t["token_level_rewards"], t["response_mask"], gamma=0.5)


def test_fork_fallback_weights_equal_the_config_defaults():
    from ttrl_megatron.algorithms.adv_common import NSR_FALLBACKS
    from ttrl_megatron.config.sections import GrpoNsrConfig, PsrNsrConfig

    for section in (GrpoNsrConfig(), PsrNsrConfig()):
        assert {k: getattr(section, k) for k in NSR_FALLBACKS} == NSR_FALLBACKS
