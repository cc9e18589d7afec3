"""Which string of a response is its answer: for voting (no label), and against a given label.

``boxed`` (the seed's rule, ``extract.extract_answer``): the last top-level box, extended to answers that span
several boxes. Where that comes from: chat models box each solution (``\\boxed{1} and \\boxed{-2}``), each unknown
(``x = \\boxed{3}, y = \\boxed{4}``) or each part (``\\boxed{6} papers and \\boxed{8} bins``).
- ``response_answer`` (voting): the boxes of the FINAL RUN joined as a list ``a, b`` when there are several, else
  the last box. A run is a sequence of boxes separated only by short connecting text (``,``, ``and``, ``or``, math
  delimiters, a label like ``y =``, a unit word) with no sentence end, no reasoning word ("we get", "so", "giving",
  "therefore"...) and no operation (``m + n = \\boxed{10}`` is a result) between them, so "An intermediate value is $\\boxed{3}$. ... the final answer is $\\boxed{5}$"
  still answers ``5``. Identical boxes of a run count once.
- ``answer_for_label`` (rewards, metrics): against a scalar label, the last box (the seed's rule); against a label
  with several values (``forms.is_list_valued``: a list, set, tuple or ``\\pm`` pair of n values), the last box
  when it is itself a list, else the final run when it has several boxes, else the last n distinct boxes when the
  response has that many ("The number of papers is $\\boxed{6}$. The number of bins is $\\boxed{8}$.").
``any``: the same when the response has a box; otherwise ``unboxed.unboxed_answer`` (the conclusion's answer).

Pure Python: standard library only.
"""

from __future__ import annotations

import logging
import re

from .extract import box_content, boxed_spans, check_extraction, extract_answer
from .forms import answer_form, is_list_valued
from .normalize import normalize_answer
from .unboxed import unboxed_answer

__all__ = ["answer_for_label", "response_answer"]

log = logging.getLogger(__name__)

_MAX_JOIN_GAP = 60  # characters of connecting text allowed between two boxes of one run
_MAX_RUN = 32  # a "run" of more boxes than this is degenerate output: the last box alone is the answer
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n\s*\n")
_REASONING_RE = re.compile(r"\b(?:we|get|giv\w*|is|are|was|were|then|so|thus|therefore|hence|since|because|which|"
                           r"where|impl\w*|yield\w*|obtain|find|have|has|becom\w*|equals?|substitut\w*|using|from|"
                           r"if|when|let|but|check|verify|note|step|total|sum|answer|final|result)\b", re.I)
# an operation in the text before a box means the box is a computed result (`m + n = \boxed{10}`), not a list item
_OPERATION_RE = re.compile(r"[+*/^]|\\(?:cdot|times|frac|div)(?![A-Za-z])")


def _joinable(gap: str) -> bool:
    return (len(gap) <= _MAX_JOIN_GAP and not _SENTENCE_END_RE.search(gap) and not _REASONING_RE.search(gap)
            and not _OPERATION_RE.search(gap))


def _dedupe(contents: list[str]) -> list[str]:
    """Distinct by normalized form, keeping the LAST occurrence's position (later boxes restate the answer)."""
    seen: dict = {}
    for c in contents:
        key = normalize_answer(c)
        seen.pop(key, None)
        seen[key] = c
    return list(seen.values())


def _final_run(text: str, spans: list) -> list[str]:
    """Contents of the last box and of the boxes joined to it (read backwards, so earlier boxes cost nothing)."""
    run = [box_content(text, spans[-1])]
    for i in range(len(spans) - 1, 0, -1):
        if spans[i][0] - spans[i - 1][3] > _MAX_JOIN_GAP or not _joinable(text[spans[i - 1][3]:spans[i][0]]):
            break
        content = box_content(text, spans[i - 1])
        if content is None:
            break
        run.insert(0, content)
        if len(run) > _MAX_RUN:
            return run[-1:]
    return _dedupe(run) if len(run) > 1 else run


def response_answer(text: str | None, extraction: str = "boxed") -> str | None:
    """The answer a response votes for (see the module docstring); None when it has none. Never raises for a valid
    ``extraction`` (an unexpected error means "no answer", logged)."""
    if extraction != "boxed":
        check_extraction(extraction)
    if not isinstance(text, str) or not text:
        return None
    try:
        return _response_answer(text, extraction)
    except Exception as exc:
        log.warning("answer extraction failed on %.80r, counted as no answer: %r", text, exc)
        return None


def _response_answer(text: str, extraction: str) -> str | None:
    if "\\boxed" not in text and "\\fbox" not in text:
        return unboxed_answer(text) if extraction == "any" else None
    spans = boxed_spans(text)
    if not spans:
        return unboxed_answer(text) if extraction == "any" else None
    if len(spans) == 1 or box_content(text, spans[-1]) is None:
        return box_content(text, spans[-1])  # an empty final box: no answer, as in the seed (no prose fallback)
    run = _final_run(text, spans)
    return ", ".join(run) if len(run) > 1 else run[0]


def answer_for_label(text: str | None, label: str | None, extraction: str = "boxed") -> str | None:
    """The answer of a response to grade against ``label`` (see the module docstring); None when it has none. Never
    raises for a valid ``extraction`` (an unexpected error means "no answer", logged)."""
    check_extraction(extraction)
    if not isinstance(text, str) or not text:
        return None
    try:
        return _answer_for_label(text, label, extraction)
    except Exception as exc:
        log.warning("answer extraction failed on %.80r, counted as no answer: %r", text, exc)
        return None


def _answer_for_label(text: str, label: str | None, extraction: str) -> str | None:
    if text.count("\\boxed") + text.count("\\fbox") <= 1:
        return extract_answer(text, extraction)
    spans = boxed_spans(text)
    last = box_content(text, spans[-1]) if spans else None
    if last is None or len(spans) == 1 or label is None:
        return response_answer(text, extraction) if not spans else last
    truth = normalize_answer(str(label)).text
    if not is_list_valued(truth) or is_list_valued(normalize_answer(last).text):
        return last
    run = _final_run(text, spans)
    if len(run) > 1:
        return ", ".join(run)
    distinct = _dedupe([c for c in (box_content(text, sp) for sp in spans[-4 * _MAX_RUN:]) if c is not None])
    n = len(_items(truth))
    if 1 < n <= len(distinct):
        return ", ".join(distinct[-n:])
    return last


def _items(truth: str) -> tuple:
    f = answer_form(truth)
    if f[0] == "named":
        f = f[2]
    return f[2] if f[0] == "seq" else (f,)
