"""Public grading entry points: ``grade_answer`` (two answers), ``score_response`` (a response against a label) and
the batch forms the reward managers, voting and metrics use (``grade_many``, ``score_responses``).

Each runs the in-process fast path (``grading.fast_grade``) and sends only undecided pairs to a ``GradingPool`` (the
shared ``pool.default_pool()`` unless a grader is given), whose workers are killed at the deadline: no call can hang
or raise into the training step, from any thread. This module sits above ``grading`` and ``pool`` (which imports
``grading``), so neither of those imports the other back.
Imports no torch.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

from .answers import answer_for_label
from .extract import check_extraction
from .grading import fast_grade
from .pool import default_pool

__all__ = ["Grader", "grade_answer", "grade_many", "score_response", "score_responses"]

log = logging.getLogger(__name__)


class Grader(Protocol):
    """Anything that grades (given, truth) pairs in bulk, like ``GradingPool``."""

    def grade_pairs(self, pairs: Sequence[tuple[str, str]], timeout_s: float | None = None) -> list[bool]: ...


def grade_many(pairs: Sequence[tuple[str, str]], grader: Grader | None = None,
               timeout_s: float | None = None) -> list[bool]:
    """Grade (given, truth) pairs: in-process fast verdicts first; only undecided pairs reach ``grader`` (default: the
    shared ``pool.default_pool()``, started only if needed)."""
    out: list[bool | None] = [fast_grade(g, t) for g, t in pairs]
    undecided = [i for i, v in enumerate(out) if v is None]
    if undecided:
        verdicts = (grader or default_pool()).grade_pairs([pairs[i] for i in undecided], timeout_s=timeout_s)
        for i, v in zip(undecided, verdicts):
            out[i] = v
    return [bool(v) for v in out]


def grade_answer(given: str | None, ground_truth: str | None, timeout_s: float = 5.0) -> bool:
    """True when ``given`` is mathematically equivalent to ``ground_truth``.

    Safe from any thread of any process: the fast path runs here; undecided pairs go to the shared default
    ``GradingPool``. The call returns within ``timeout_s`` (waiting for a busy worker included; the worker is killed if
    it is still grading) plus the one-time start of a worker (~1 s, not counted). Timeouts, errors and None inputs
    give False; never raises.
    """
    if given is None or ground_truth is None:
        return False
    try:
        verdict = fast_grade(given, ground_truth)
        if verdict is not None:
            return verdict
        return default_pool().grade_pairs([(str(given), str(ground_truth))], timeout_s=timeout_s,
                                          total_timeout_s=timeout_s)[0]
    except Exception as exc:  # the grader must never take the training step down
        log.warning("grade_answer(%.60r, %.60r) failed, counted as not equal: %s", given, ground_truth, exc)
        return False


def score_response(response: str, ground_truth: str, extraction: str = "boxed", timeout_s: float = 5.0) -> bool:
    """Is ``response``'s final answer equivalent to ``ground_truth``?

    ``extraction``: ``"boxed"`` (the last box; several boxes are the answer when the label holds several values) or
    ``"any"`` (the same, else the conclusion's answer when there is no box); see ``answers.py``. Same guarantees as
    ``grade_answer`` (bounded time, any thread, never raises for str inputs; a bad ``extraction`` raises ValueError).
    """
    check_extraction(extraction)
    try:
        answer = answer_for_label(response, ground_truth, extraction)
    except Exception as exc:
        log.warning("score_response: extraction failed on %.60r, scored 0: %s", response, exc)
        return False
    return grade_answer(answer, ground_truth, timeout_s)


def score_responses(responses: Sequence[str | None], truths: Sequence[str | None], grader: Grader | None = None,
                    timeout_s: float | None = None, extraction: str = "boxed"
                    ) -> tuple[list[str | None], list[bool]]:
    """Batch ``score_response``: (answer graded per response, verdict per response); no answer or label -> False."""
    check_extraction(extraction)
    if len(responses) != len(truths):
        raise ValueError(f"score_responses: {len(responses)} responses but {len(truths)} labels")
    answers = [answer_for_label(r, None if t is None else str(t), extraction) if isinstance(r, str) else None
               for r, t in zip(responses, truths)]
    rows = [i for i, (a, t) in enumerate(zip(answers, truths)) if a is not None and t is not None]
    verdicts = [False] * len(answers)
    for i, ok in zip(rows, grade_many([(answers[i], str(truths[i])) for i in rows], grader, timeout_s)):
        verdicts[i] = ok
    return answers, verdicts
