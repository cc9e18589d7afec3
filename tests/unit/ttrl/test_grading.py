"""Grading: the equivalence table, the in-process fast path, and hostile inputs from non-main threads."""

import threading
import time

import pytest

from ttrl_megatron.ttrl import fast_grade, grade_answer, normalize_answer
from ttrl_megatron.ttrl.forms import answer_form

from .answer_table import ALL_PAIRS

ADVERSARIAL = [
    "2^{2^{2^{2^{2^{2}}}}}",
    "((10^{9})!)!",
    "{" * 25_000 + "1" + "}" * 25_000,
    "9^{9^{9}}",
    r"\sin(10^{9^{9}})",
    "(x+1)^{10000}",
    r"\prod_{k=1}^{10^{7}} k",
    r"\frac{1}{",
    r"\sqrt{{{{",
    r"}}}\left(\right",
    "1" * 5000,
    r"\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{\frac{1}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}}{2}",
    "\x00\x01\ufffd",
    "^^^^^^^^",
]
# Pass the cheap guards but hang sympy / math-verify: only the worker kill at the deadline stops them.
HANGING = [r"\Gamma(10^{9})", r"\cos(x)^{1000} + \sin(x)^{999}"]


def test_table_is_large_enough():
    assert len(ALL_PAIRS) >= 150
    assert sum(e for *_, e in ALL_PAIRS) >= 60 and sum(not e for *_, e in ALL_PAIRS) >= 40


def test_equivalence_table(pool):
    verdicts = pool.grade_pairs([(g, t) for g, t, _ in ALL_PAIRS])
    wrong = [(g, t, e) for (g, t, e), v in zip(ALL_PAIRS, verdicts) if v != e]
    assert not wrong, f"{len(wrong)} of {len(ALL_PAIRS)} wrong: {wrong}"


def test_fast_path_decides_most_pairs_in_process():
    decided = [fast_grade(g, t) for g, t, _ in ALL_PAIRS]
    assert sum(v is not None for v in decided) >= 0.75 * len(ALL_PAIRS)
    for (g, t, e), v in zip(ALL_PAIRS, decided):
        assert v is None or v == e, (g, t)


def test_normalization_examples():
    assert normalize_answer(r"\$1,000.50").text == "1000.50"
    assert normalize_answer(r"x = \dfrac12").text == r"\frac{1}{2}"
    assert normalize_answer(r"25\%") == (r"25", True)
    assert normalize_answer(r"5 \text{ cm}^2").text == "5"
    assert normalize_answer(r"\text{(C)}").text == "C"


def test_structure_rules():
    one, two = ("s", "1"), ("s", "2")
    assert answer_form("(1,2)") == ("seq", "()", (one, two), "")
    assert answer_form("[1,2)") == ("seq", "[)", (one, two), "")
    assert answer_form(r"\{1,2\}") == ("seq", "set", (one, two), "")
    assert answer_form("1,2") == ("seq", "list", (one, two), "")
    assert answer_form("(1)+(2)") == ("s", "(1)+(2)")
    assert answer_form("f(1,2)") == ("s", "f(1,2)")  # commas inside a function call do not make a list


def test_none_and_non_string_inputs():
    assert grade_answer(None, "1") is False
    assert grade_answer("1", None) is False
    assert grade_answer(3, "3") is True


def _run_in_thread(fn):
    box = {}

    def target():
        t0 = time.monotonic()
        box["value"] = fn()
        box["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(30)
    assert not th.is_alive(), "grader call did not return"
    return box["value"], box["elapsed"]


@pytest.mark.parametrize("hostile", ADVERSARIAL, ids=lambda s: repr(s[:24]))
def test_adversarial_inputs_return_fast_from_a_thread(hostile):
    for given, truth in ((hostile, "5"), ("5", hostile), (hostile, hostile + "0")):
        value, elapsed = _run_in_thread(lambda: grade_answer(given, truth, timeout_s=1.0))
        assert value is False
        assert elapsed < 1.0 + 0.5  # the guards answer these in-process: no worker is even needed
    value, _ = _run_in_thread(lambda: grade_answer(hostile, hostile, timeout_s=1.0))
    assert value is True  # identical strings are equal without evaluating anything


def test_hanging_inputs_are_killed_at_the_deadline_from_threads(pool):
    results = {}

    def job(i, hostile):
        t0 = time.monotonic()
        verdict = pool.grade_pairs([(hostile, "7")], timeout_s=1.0)[0]
        results[i] = (verdict, time.monotonic() - t0)

    before = pool.stats["timeouts"]
    threads = [threading.Thread(target=job, args=(i, h)) for i, h in enumerate(HANGING)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(results) == [0, 1]
    for verdict, elapsed in results.values():
        assert verdict is False
        assert elapsed < 1.0 + 3.0  # deadline plus kill and poll overhead on a loaded 2-core machine
    assert pool.stats["timeouts"] - before == 2
    # the pool replaced the killed workers and still grades correctly
    assert pool.grade_pairs([(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")]) == [True]


def test_bounded_evaluator():
    from ttrl_megatron.ttrl.numeric import MALFORMED, NOT_NUMERIC, TOO_BIG, evaluate

    assert evaluate(r"\frac{\sqrt{3}}{2}") == pytest.approx(3 ** 0.5 / 2)
    assert evaluate(r"3\sqrt{2}+2^{10}-5!") == pytest.approx(3 * 2 ** 0.5 + 1024 - 120)
    assert evaluate(r"\sqrt[3]{27}\cdot\binom{5}{2}") == pytest.approx(30)
    assert evaluate("2x+3") == NOT_NUMERIC and isinstance(evaluate("2x+3", True), float)
    assert evaluate("2x+3", True) == pytest.approx(evaluate("3+x\\cdot2", True))
    assert evaluate(r"e^{i\pi}", True) == NOT_NUMERIC  # e and i stay symbolic constants
    for huge in ("9^{9^{9}}", "(10^{9})!", r"\binom{100000}{3}", "10^{400}"):
        assert evaluate(huge) == TOO_BIG, huge
    for junk in ("^^^", "2x+", "{}", "(", "2)("):
        assert evaluate(junk, True) == MALFORMED, junk
    for undefined in ("1/0", r"\sqrt{-1}", "2.5!"):
        assert evaluate(undefined) == NOT_NUMERIC, undefined


HOSTILE_RESPONSES = [
    "Therefore $" + "{" * 25_000 + "1" + "}" * 25_000 + "$.",
    "The answer is $9^{9^{9}}$.",
    r"So $\boxed{((10^{9})!)!}$ and $\boxed{2^{2^{2^{2^{2}}}}}$.",
    "so $x=1$. " * 5000,
    r"\boxed{" + ",".join(["1"] * 5000) + "}",
    r"Thus $x \geq 9^{9^{9}}$ or $x < (10^9)!$.",
]


@pytest.mark.parametrize("hostile", HOSTILE_RESPONSES, ids=lambda s: repr(s[:24]))
def test_score_response_on_hostile_responses_returns_fast_from_a_thread(hostile):
    from ttrl_megatron.ttrl import score_response

    for extraction in ("boxed", "any"):
        for label in ("5", "1, 2", r"x \geq 5"):
            value, elapsed = _run_in_thread(lambda: score_response(hostile, label, extraction, timeout_s=1.0))
            assert value is False
            assert elapsed < 1.0 + 3.0  # in-process guards, or the worker deadline plus kill/poll overhead
