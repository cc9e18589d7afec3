"""Which string is a response's answer: runs of boxes (voting), boxes against a list label, and the unboxed ("any")
conclusion; bounded time on hostile responses."""

import time

import pytest

from ttrl_megatron.ttrl import EXTRACTIONS, answer_for_label, extract_answer, response_answer
from ttrl_megatron.ttrl.unboxed import math_segments, unboxed_answer

VOTE_CASES = [  # (response, answer it votes for)
    (r"so \boxed{5}.", "5"),
    (r"$\boxed{1}$ and $\boxed{-2}$", "1, -2"),
    (r"\boxed{6} papers and \boxed{8} bins", "6, 8"),
    (r"$x = \boxed{3}$, $y = \boxed{4}$", "3, 4"),
    (r"\boxed{1}\boxed{2}", "1, 2"),
    (r"$\boxed{2}$ (that is, $\boxed{2}$)", "2"),  # a restated box counts once
    ("An intermediate value is $\\boxed{3}$. Then the answer is $\\boxed{5}$.", "5"),  # a sentence apart
    (r"Since $\boxed{a=2}$, we get $\boxed{7}$", "7"),  # a reasoning word apart
    (r"So $m = \boxed{3}$ and $n = \boxed{7}$, giving $m+n = \boxed{10}$.", "10"),  # AIME-style: a computed result
    (r"So $m = \boxed{3}$ and $n = \boxed{7}$, and $m+n = \boxed{10}$.", "10"),  # an operation before the box
    ("$\\boxed{1}$\n\nso finally $\\boxed{2}$", "2"),
    (r"\boxed{1} then \boxed{}", None),  # the final box is empty: no answer (the seed's rule)
    ("no box here", None),
    (None, None),
    (r"\boxed{1} " * 100 + r"\boxed{2}", "2"),  # a degenerate run of 101 boxes: the last box alone
]


@pytest.mark.parametrize("text,expected", VOTE_CASES, ids=lambda x: repr(x)[:30])
def test_response_answer(text, expected):
    assert response_answer(text) == expected


LABEL_CASES = [  # (response, label, answer graded against that label)
    (r"$\boxed{1}$ and $\boxed{2}$", "2", "2"),  # a scalar label: the last box, as the seed
    (r"$\boxed{1}$ and $\boxed{2}$", "1, 2", "1, 2"),
    ("Papers: $\\boxed{6}$.\n\nBins: $\\boxed{8}$.", "6, 8", "6, 8"),  # separate sentences: the last n boxes
    ("Papers: $\\boxed{6}$.\n\nBins: $\\boxed{8}$.", "(6, 8, 1)", "8"),  # fewer boxes than values
    (r"first \boxed{3} ... finally \boxed{1, 2}", "1, 2", "1, 2"),  # the last box is itself a list
    (r"\boxed{1} and \boxed{-1}", r"\pm 1", "1, -1"),
    (r"\boxed{7}", "1, 7", "7"),
]


@pytest.mark.parametrize("text,label,expected", LABEL_CASES, ids=lambda x: repr(x)[:30])
def test_answer_for_label(text, label, expected):
    assert answer_for_label(text, label) == expected


UNBOXED = [  # (response, the answer extraction="any" finds)
    ("The answer is 42.", "42"),
    ("Adding them up gives 18 + 24 = 42.\nThe answer is 42.", "42"),
    ("She pays 12 dollars.\n#### 12", "12"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("**Final Answer**\n\\[\n\\frac{7}{3}\n\\]", "\\frac{7}{3}"),
    ("Answer $9$", "9"),
    ("**Answer:** $x = 4$", "x = 4"),
    ("Therefore $x \\geq 5$.", "x \\geq 5"),
    ("Thus $x = 1$ or $x = 2$.", "x = 1, x = 2"),
    ("So the area is $\\frac{1}{2} \\cdot 6 \\cdot 4 = 12$.", "12"),
    ("Hence the probability is $\\frac{1}{12} \\approx 0.083$.", "\\frac{1}{12}"),
    ("Therefore, for $n = 5$, the value is $25$.", "25"),
    ("Thus the minimum is $-\\frac14$, attained at $x = \\frac12$.", "-\\frac14"),
    ("Therefore, there are 15 ways.", "15"),
    ("The answer is (B).", "(B)"),
    ("It costs $5 and $10 in total, so 15.", "15"),  # prices are not math
    ("There are $\\binom{5}{2} = 10$ ways.", "10"),
    ("I could not finish the computation.", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", UNBOXED, ids=lambda x: repr(x)[:30])
def test_unboxed_answer(text, expected):
    assert unboxed_answer(text) == expected
    assert extract_answer(text, "any") == expected
    assert extract_answer(text, "boxed") is None  # the seed's extraction never reads prose


def test_any_prefers_a_box_and_keeps_box_semantics():
    text = r"The answer is 41. Actually $\boxed{42}$."
    for extraction in EXTRACTIONS:
        assert response_answer(text, extraction) == "42"
    assert response_answer(r"Therefore 3. \boxed{}", "any") is None  # an empty final box is no answer


def test_math_segments_follow_pandoc_dollar_rules():
    segs = [s[2] for s in math_segments(r"cost $5 and $10; $x+1$ and \(y\) and $$z$$ and \[w\] and \$3")]
    assert segs == ["x+1", "y", "z", "w"]


def test_bad_extraction_name_raises():
    for fn in (lambda: response_answer("x", "last"), lambda: answer_for_label("x", "1", "last"),
               lambda: extract_answer("x", "last")):
        with pytest.raises(ValueError, match="answer_extraction"):
            fn()


HOSTILE = [
    "so $1$. " * 6000,  # many anchors and segments
    "the answer is " * 4000,
    "$" * 50_000,
    "Therefore " + "{" * 25_000 + "}" * 25_000,
    "\\boxed{1} and " * 5000 + "\\boxed{2}",
    "\\(" * 20_000,
    "answer: " + "x = " * 10_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda s: repr(s[:20]))
def test_hostile_responses_are_fast(text):
    t0 = time.perf_counter()
    for extraction in EXTRACTIONS:
        response_answer(text, extraction)
        answer_for_label(text, "1, 2", extraction)
    assert time.perf_counter() - t0 < 2.0
