"""Validation graded in per-rank shares (trainer/validation.py ``combine_shares``): the combined means equal one
process grading every prompt, for uneven shares and two data sources (one absent from a share)."""

import pytest

from ttrl_megatron.trainer.assemble import split_evenly
from ttrl_megatron.trainer.validation import combine_shares
from ttrl_megatron.ttrl import compute_validation_metrics

RESPONSES = [["\\boxed{3}", "\\boxed{3}", "\\boxed{4}", "x"], ["\\boxed{7}", "\\boxed{1}", "\\boxed{1}", "\\boxed{7}"],
             ["\\boxed{2}"] * 4, ["a", "b", "\\boxed{5}", "\\boxed{6}"], ["\\boxed{9}", "\\boxed{8}", "\\boxed{8}", "c"]]
TRUTHS = ["3", "7", "2", "6", "9"]
SOURCES = ["gsm/main", "gsm/main", "math", "math", "gsm/main"]  # a '/' in a source name must not confuse the split


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shares_combine_to_the_whole(world):
    whole = compute_validation_metrics(RESPONSES, TRUTHS, SOURCES)
    parts = []
    for start, end in split_evenly(len(TRUTHS), world):
        share = SOURCES[start:end]
        local = compute_validation_metrics(RESPONSES[start:end], TRUTHS[start:end], share) if end > start else {}
        parts.append((local, {s: share.count(s) for s in dict.fromkeys(share)}))
    combined = combine_shares(parts)
    assert set(combined) == set(whole)
    for key, value in whole.items():
        assert combined[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    if world == 1:
        assert combined == whole
    assert whole["val-core/math/acc/mean@4"] == pytest.approx((1.0 + 0.25) / 2)
