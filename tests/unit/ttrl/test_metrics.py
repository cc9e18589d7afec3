"""TTRL training metrics and validation metrics against hand-computed values."""

import math

import numpy as np
import pytest

from ttrl_megatron.ttrl import (MajorityRewardManager, RuleRewardManager, apply_ttrl_gt, compute_ttrl_metrics,
                                compute_validation_metrics, pass_at_k, ttrl_metrics_from_rows)

from .test_pseudo_label_rewards import ANSWERS, TRUTHS, make_batch

# Prompt 0: label 0.5 == truth 1/2; majority scores [0,1,1,0,1,0] == truth scores -> reward_acc 1, rewards 1/2, 1/2.
# Prompt 1: label 8 != truth 7; majority [0,1,1,0,0,1] vs truth [1,0,0,1,0,0] agree only on row 4 -> 1/6;
#           majority reward 1/2, truth reward 1/3. Both prompts: ratio 3/6, some truth reward 1 -> pass 1.
EXPECTED = {"label_accuracy": 0.5, "reward_accuracy": (1 + 1 / 6) / 2, "majority_ratio": 0.5,
            "majority_voting_reward": 0.5, "ground_truth_reward": (0.5 + 1 / 3) / 2, "pass@6": 1.0}


def test_ttrl_metrics_hand_computed(pool):
    out = apply_ttrl_gt(make_batch(ANSWERS, TRUTHS), 6, 6, grader=pool)
    maj = MajorityRewardManager(pool)(out).scores
    gt = RuleRewardManager(pool)(out).scores
    assert compute_ttrl_metrics(out, maj, gt, grader=pool) == pytest.approx(EXPECTED)
    # a reordered batch (balance_batch) gives the same numbers: rows are grouped by uid, not position
    perm = np.random.default_rng(0).permutation(len(out))
    shuffled = out[perm]
    assert compute_ttrl_metrics(shuffled, maj[perm], gt[perm], grader=pool) == pytest.approx(EXPECTED)


def test_ttrl_metrics_from_rows_edge_cases(pool):
    m = ttrl_metrics_from_rows(["a", "a", "b", "b"], ["1", "1", None, None], ["1", "1", "2", "2"],
                               [0.5, 0.5, 0.0, 0.0], [1, 0, 0, 0], [1, 1, 0, 0], grader=pool)
    assert m == pytest.approx({"label_accuracy": 0.5, "reward_accuracy": (0.5 + 1) / 2, "majority_ratio": 0.25,
                               "majority_voting_reward": 0.25, "ground_truth_reward": 0.5, "pass@2": 0.5})
    with pytest.raises(ValueError, match="several majority labels"):
        ttrl_metrics_from_rows(["a", "a"], ["1", "2"], ["1", "1"], [1, 1], [1, 1], [1, 1], grader=pool)
    with pytest.raises(ValueError, match="different rollout counts"):
        ttrl_metrics_from_rows(["a", "b", "b"], ["1"] * 3, ["1"] * 3, [1] * 3, [1] * 3, [1] * 3, grader=pool)
    out = apply_ttrl_gt(make_batch(ANSWERS, TRUTHS), 6, 6, grader=pool)
    with pytest.raises(ValueError, match="12 rows but 3 majority scores"):
        compute_ttrl_metrics(out, [1, 1, 1], [1] * 12)


def test_pass_at_k_matches_the_combinatorial_formula():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    for bad in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)):
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def b(x):
    return f"\\boxed{{{x}}}"


def test_validation_metrics_hand_computed(pool):
    # A: acc [1,0,0,1]; maj@1 "1" ok, maj@2 tie -> first ("1") ok, maj@4 tie 2-2 -> first ("1") ok
    # B: acc [0,1,1,0]; maj@1 "3" wrong, maj@2 tie -> "3" wrong, maj@4 "5" (2 votes of 4) ok
    responses = [[b(1), b(2), b(2), b("1.0")], [b(3), b(5), b("x=5"), "no answer"]]
    m = compute_validation_metrics(responses, ["1", "5"], ["math", "math"], grader=pool)
    assert m == pytest.approx({
        "val-core/math/acc/mean@4": 0.5, "val-core/math/acc/maj@4": 1.0, "val-core/math/acc/pass@4": 1.0,
        "val-aux/math/acc/maj@1": 0.5, "val-aux/math/acc/maj@2": 0.5,
        "val-aux/math/acc/pass@1": 0.5, "val-aux/math/acc/pass@2": 5 / 6})
    two = compute_validation_metrics([[b(1)], [b(2)]], ["1", "3"], ["a", "b"], grader=pool)
    assert two == {"val-core/a/acc/mean@1": 1.0, "val-core/a/acc/maj@1": 1.0, "val-core/a/acc/pass@1": 1.0,
                   "val-core/b/acc/mean@1": 0.0, "val-core/b/acc/maj@1": 0.0, "val-core/b/acc/pass@1": 0.0}
