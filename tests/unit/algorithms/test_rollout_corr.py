"""Rollout-mismatch correction (algorithms/rollout_corr.py) against hand-computed cases.

The batch: row 0 has token ratios rho = pi_old / pi_rollout = 0.5, 3, 1 (3 valid tokens), row 1 has 1.5, 1 and one
padding position, so log_ratio = log(rho)."""

import math

import pytest
import torch

from ttrl_megatron.algorithms.rollout_corr import (compute_rollout_correction, offpolicy_metrics, parse_is_threshold,
                                                   parse_rs, rejection_mask, rollout_is_weights)

RHO = torch.tensor([[0.5, 3.0, 1.0], [1.5, 1.0, 7.0]])  # 7.0 sits on padding: it must never matter
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LOG_RATIO = RHO.log()


def test_token_truncated_weights_and_metrics():
    w, m = rollout_is_weights(LOG_RATIO, MASK, "token", 2.0)
    assert torch.allclose(w, torch.tensor([[0.5, 2.0, 1.0], [1.5, 1.0, 0.0]]))  # min(rho, 2), 0 on padding
    assert m["rollout_is_mean"] == pytest.approx((0.5 + 2 + 1 + 1.5 + 1) / 5)
    assert m["rollout_is_max"] == pytest.approx(2.0) and m["rollout_is_min"] == pytest.approx(0.5)
    assert m["rollout_is_ratio_fraction_high"] == pytest.approx(1 / 5)  # only rho = 3 exceeds the cap
    assert m["rollout_is_ratio_fraction_low"] == 0.0  # nothing below 1/2 (0.5 itself is not below)
    mean = 6.0 / 5
    second = sum((v / mean) ** 2 for v in (0.5, 2, 1, 1.5, 1)) / 5
    assert m["rollout_is_eff_sample_size"] == pytest.approx(1 / second, rel=1e-5)
    assert m["rollout_is_seq_mean"] == pytest.approx(((3.5 / 3) + (2.5 / 2)) / 2)
    assert not w.requires_grad


def test_sequence_weights_are_the_capped_product_per_row():
    w, m = rollout_is_weights(LOG_RATIO, MASK, "sequence", 1.2)
    # row products: 0.5 * 3 * 1 = 1.5 and 1.5 * 1 = 1.5 (the padding 7.0 is not in the product); capped at 1.2
    assert torch.allclose(w, torch.tensor([[1.2, 1.2, 1.2], [1.2, 1.2, 0.0]]))
    assert m["rollout_is_max"] == pytest.approx(1.5) and m["rollout_is_min"] == pytest.approx(1.5)
    assert m["rollout_is_ratio_fraction_high"] == 1.0  # both rows above the cap


def test_icepop_zeroes_weights_outside_the_bounds():
    w, m = rollout_is_weights(LOG_RATIO, MASK, "token", "0.6_2.5")
    assert torch.allclose(w, torch.tensor([[0.0, 0.0, 1.0], [1.5, 1.0, 0.0]]))
    assert m["rollout_is_oob_ratio"] == pytest.approx(2 / 5)


def test_batch_normalize_divides_by_the_mean_weight():
    w, m = rollout_is_weights(LOG_RATIO, MASK, "token", 2.0, batch_normalize=True)
    assert m["rollout_is_batch_norm_factor"] == pytest.approx(1.2)
    assert torch.allclose(w, torch.tensor([[0.5, 2.0, 1.0], [1.5, 1.0, 0.0]]) / 1.2)


def test_rejection_token_k1_keeps_ratios_inside_the_bounds():
    mask, m = rejection_mask(LOG_RATIO, MASK, "token_k1", 2.0)  # one number u: keep rho in [1/u, u]
    assert mask.tolist() == [[1, 0, 1], [1, 1, 0]] and mask.dtype == MASK.dtype
    assert m["rollout_rs_token_k1_masked_fraction"] == pytest.approx(1 / 5)
    assert m["rollout_rs_seq_masked_fraction"] == pytest.approx(1 / 2)


def test_rejection_sequence_options_reject_whole_rows_and_combine():
    # seq_sum_k2 per row: (log .5)^2/2 + (log 3)^2/2 = 0.8437 and (log 1.5)^2/2 = 0.0822
    k2_row0 = 0.5 * (math.log(0.5) ** 2 + math.log(3) ** 2)
    mask, m = rejection_mask(LOG_RATIO, MASK, "seq_sum_k2", 0.5)
    assert mask.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert m["rollout_rs_seq_sum_k2_mean"] == pytest.approx((3 * k2_row0 + 2 * 0.5 * math.log(1.5) ** 2) / 5)
    # seq_max_k3: max over tokens of rho - 1 - log rho: row 0 has 3 - 1 - log 3 = 0.901, row 1 has 0.0945
    mask, _ = rejection_mask(LOG_RATIO, MASK, "seq_max_k3", 0.5)
    assert mask.tolist() == [[0, 0, 0], [1, 1, 0]]
    mask, _ = rejection_mask(LOG_RATIO, MASK, "seq_max_k3", 1.0)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    # two options, both must pass: token_k1 drops rho=3; seq_mean_k1 keeps -mean log rho in [log .85, log 1]:
    # row 0 has -(log .5 + log 3 + 0)/3 = -0.135 (kept), row 1 has -(log 1.5)/2 = -0.203 < log .85 = -0.163 (dropped)
    mask, m = rejection_mask(LOG_RATIO, MASK, "token_k1,seq_mean_k1", "2.0,0.85_1.0")
    assert mask.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert m["rollout_rs_masked_fraction"] == pytest.approx(3 / 5)


def test_offpolicy_metrics_by_hand():
    old = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    roll = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    m = offpolicy_metrics(old, roll, mask)
    log_ratio = [0.5, -1.0, 0.0]  # old - rollout on the 3 valid tokens
    assert m["kl"] == pytest.approx(-sum(log_ratio) / 3)
    assert m["k3_kl"] == pytest.approx(sum(math.exp(x) - x - 1 for x in log_ratio) / 3)
    assert m["chi2_token"] == pytest.approx(sum(math.exp(2 * x) for x in log_ratio) / 3 - 1)
    assert m["chi2_seq"] == pytest.approx((math.exp(2 * -0.5) + math.exp(0.0)) / 2 - 1)
    assert m["training_ppl"] == pytest.approx((math.exp(1.5) + math.exp(0.5)) / 2)
    assert m["rollout_ppl"] == pytest.approx((math.exp(1.25) + math.exp(0.5)) / 2)
    assert m["log_ppl_diff"] == pytest.approx(((-1.25 + 1.5) + 0.0) / 2)


def test_compute_rollout_correction_off_returns_the_inputs_untouched():
    old, roll = LOG_RATIO * 0 - 1.0, LOG_RATIO * 0 - 1.0 - LOG_RATIO
    weights, mask, metrics = compute_rollout_correction(old, roll, MASK)
    assert weights is None and mask is MASK
    assert set(metrics) == {f"rollout_corr/{k}" for k in ("kl", "k3_kl", "training_ppl", "rollout_ppl", "log_ppl_diff",
                                                          "log_ppl_abs_diff", "chi2_token", "chi2_seq")}
    weights, mask, metrics = compute_rollout_correction(old, roll, MASK, rollout_is="token", rollout_is_threshold=2.0,
                                                        rollout_rs="token_k1", rollout_rs_threshold=2.0)
    assert torch.allclose(weights, torch.tensor([[0.5, 2.0, 1.0], [1.5, 1.0, 0.0]]))
    assert mask.tolist() == [[1, 0, 1], [1, 1, 0]] and "rollout_corr/rollout_is_mean" in metrics


@pytest.mark.parametrize("spec, message", [(0, "rollout_is_threshold"), ("abc", "rollout_is_threshold"),
                                           ("2_1", "lower bound exceeds"), (True, "rollout_is_threshold")])
def test_bad_is_thresholds_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_is_threshold(spec)


def test_rs_parsing():
    assert parse_rs("token_k1, seq_sum_k3", "0.5_2,10") == {"token_k1": (0.5, 2.0), "seq_sum_k3": (None, 10.0)}
    assert parse_rs("seq_mean_k1", 4) == {"seq_mean_k1": (0.25, 4.0)}
    for options, thresholds, message in (("token_k4", 1.0, "unknown option"), ("token_k1", None, "must be set"),
                                         ("token_k2", "0.5_2", "single upper bound"),
                                         ("token_k1,token_k2", "1,2,3", "one per")):
        with pytest.raises(ValueError, match=message):
            parse_rs(options, thresholds)
