"""Grading fidelity: the case table of grading_cases.py (every kind the issue lists, with negatives) graded through the
public entry points, with both extractions, from the main thread and from worker threads."""

import threading
from collections import Counter

import pytest

from ttrl_megatron.ttrl import EXTRACTIONS, fast_grade, score_response, score_responses
from ttrl_megatron.ttrl.answers import answer_for_label

from .grading_cases import CASES, KINDS, expected_for, has_box

REQUIRED_KINDS = {"multibox", "thousands", "lists", "labelled", "json", "relations", "equations", "matrices",
                  "decimals", "unboxed"}


def test_table_covers_every_kind_with_positives_and_negatives():
    assert REQUIRED_KINDS <= set(KINDS)
    counts = Counter((c.kind, c.expected) for c in CASES)
    for kind in KINDS:
        assert counts[(kind, True)] >= 3, kind
        assert counts[(kind, False)] >= 2, kind
    assert {c.kind for c in CASES} == set(KINDS)
    assert all(KINDS[k].strip() for k in KINDS)  # every kind says where it comes from in practice
    assert len(CASES) >= 120


@pytest.mark.parametrize("extraction", EXTRACTIONS)
def test_case_table(pool, extraction):
    answers, verdicts = score_responses([c.response for c in CASES], [c.label for c in CASES], pool, 20.0,
                                        extraction)
    wrong = [(c.kind, c.response[-50:], c.label, expected_for(c, extraction), a)
             for c, a, v in zip(CASES, answers, verdicts) if v != expected_for(c, extraction)]
    assert not wrong, f"{len(wrong)} of {len(CASES)} wrong with extraction={extraction}: {wrong}"


def test_boxed_extraction_never_reads_prose():
    for c in CASES:
        if not has_box(c.response):
            assert answer_for_label(c.response, c.label, "boxed") is None, c


def test_fast_path_settles_most_cases_and_never_contradicts_the_table():
    decided = 0
    for c in CASES:
        answer = answer_for_label(c.response, c.label, "any")
        verdict = fast_grade(answer, c.label) if answer is not None else False
        if verdict is not None:
            decided += 1
            assert verdict == c.expected, c
    assert decided >= 0.8 * len(CASES)


def test_score_response_from_threads_matches_the_table():
    """The single-pair entry point (shared default pool, hard deadline) from several non-main threads at once."""
    sample = [c for c in CASES if c.kind in ("equations", "multibox", "unboxed")][::3]  # symbolic and fast pairs
    results: dict[int, bool] = {}

    def job(i, case):
        results[i] = score_response(case.response, case.label, "any", timeout_s=60.0)

    threads = [threading.Thread(target=job, args=(i, c)) for i, c in enumerate(sample)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(results) == len(sample)
    assert [results[i] for i in range(len(sample))] == [c.expected for c in sample]


def test_score_response_rejects_an_unknown_extraction():
    with pytest.raises(ValueError, match="ttrl.answer_extraction"):
        score_response(r"\boxed{1}", "1", extraction="last")
