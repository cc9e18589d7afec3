"""extract_answer: last box wins, nested braces, brace-less and \\fbox forms, malformed and huge inputs."""

import time

import pytest

from ttrl_megatron.ttrl import extract_answer

CASES = [
    (r"so the answer is \boxed{5}.", "5"),
    (r"\boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{3}}{\left(2\right)}}", r"\frac{\sqrt{3}}{\left(2\right)}"),
    (r"$\boxed{ (1, 2) }$", "(1, 2)"),
    (r"\boxed 5", "5"),
    (r"final: \boxed 42.", "42"),
    (r"\fbox{7}", "7"),
    (r"\boxed{3} and later \fbox{4}", "4"),
    (r"\boxed{\boxed{9}}", "9"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{\text{(B)}}", r"\text{(B)}"),
    ("no box here", None),
    ("", None),
    (None, None),
    (r"\boxed{}", None),
    (r"\boxed{   }", None),
    (r"truncated \boxed{1 + {2", None),
    (r"\boxed{2} then truncated \boxed{3", "2"),
    (r"\boxedfoo{3}", None),
    (r"\boxed{a}\boxed{b}\boxed{c}", "c"),
    ("\\boxed{x\n+1}", "x\n+1"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_extract_cases(text, expected):
    assert extract_answer(text) == expected


def test_deeply_nested_braces_are_linear_time():
    text = r"\boxed{" + "{" * 25_000 + "x" + "}" * 25_000 + "}"
    t0 = time.perf_counter()
    ans = extract_answer(text)
    assert time.perf_counter() - t0 < 1.0
    assert ans == "{" * 25_000 + "x" + "}" * 25_000
    unbalanced = r"\boxed{" + "{" * 50_000
    t0 = time.perf_counter()
    assert extract_answer(unbalanced) is None
    assert time.perf_counter() - t0 < 1.0


def test_many_boxes_are_fast():
    text = r"\boxed{1} " * 20_000 + r"\boxed{last}"
    t0 = time.perf_counter()
    assert extract_answer(text) == "last"
    assert time.perf_counter() - t0 < 1.0
