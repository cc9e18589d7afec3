"""Which string of a response is its answer: for voting (no label), and against a given label.

``boxed`` (the seed's rule, ``extract.extract_answer``): the last top-level box, extended to answers that span
several boxes. Where that comes from: chat models box each solution (``\\boxed{1} and \\boxed{-2}``), each unknown
(``x = \\boxed{3}, y = \\boxed{4}``) or each part (``\\boxed{6} papers and \\boxed{8} bins``).
- ``response_answer`` (voting): the boxes of the FINAL RUN joined as a list ``a, b`` when there are several, else
  the last box. A run is a sequence of boxes separated only by short connecting text (``,``, ``and``, ``or``, math
  delimiters, a label like ``y =``, a unit word) with no sentence end and no reasoning word ("we get", "so",
  "therefore"...) between them, so "An intermediate value is $\\boxed{3}$. ... the final answer is $\\boxed{5}$"
  still answers ``5``. Identical boxes of a run count once.
- ``answer_for_label`` (rewards, metrics): against a scalar label, the last box (the seed's rule); against a label
  with several values (``forms.is_list_valued``: a list, set, tuple or ``\\pm`` pair of n values), the last box
  when it is itself a list, else the final run when it has several boxes, else the last n distinct boxes when the
  response has that many ("The number of papers is $\\boxed{6}$. The number of bins is $\\boxed{8}$.").
``any``: the same when the response has a box; otherwise ``unboxed.unboxed_answer`` (the conclusion's answer).

Pure Python: standard library only.
"""

from __future__ import annotations

import re

from .extract import boxed_contents, check_extraction
from .forms import is_list_valued
from .normalize import normalize_answer
from .unboxed import unboxed_answer

__all__ = ["answer_for_label", "response_answer"]

_MAX_JOIN_GAP = 60  # characters of connecting text allowed between two boxes of one run
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n\s*\n")
_REASONING_RE = re.compile(r"\b(?:we|get|gives?|is|are|was|were|then|so|thus|therefore|hence|since|because|which|"
                           r"where|implies|yields?|obtain|find|have|has|becomes?|equals|substitut\w*|using|from|"
                           r"if|when|let|but|check|verify|note|step)\b", re.I)


def _joinable(gap: str) -> bool:
    return len(gap) <= _MAX_JOIN_GAP and not _SENTENCE_END_RE.search(gap) and not _REASONING_RE.search(gap)


def _dedupe(contents: list[str]) -> list[str]:
    """Distinct by normalized form, keeping the LAST occurrence's position (later boxes restate the answer)."""
    seen: dict = {}
    for c in contents:
        key = normalize_answer(c)
        seen.pop(key, None)
        seen[key] = c
    return list(seen.values())


def _final_run(boxes: list[tuple[str | None, str]]) -> list[str]:
    run = [boxes[-1][0]]
    for i in range(len(boxes) - 1, 0, -1):
        if boxes[i - 1][0] is None or not _joinable(boxes[i][1]):
            break
        run.insert(0, boxes[i - 1][0])
    return _dedupe(run)


def response_answer(text: str | None, extraction: str = "boxed") -> str | None:
    """The answer a response votes for (see the module docstring); None when it has none."""
    check_extraction(extraction)
    if not isinstance(text, str) or not text:
        return None
    boxes = boxed_contents(text)
    if boxes:
        if boxes[-1][0] is None:
            return None  # the final box is empty: no answer, as in the seed (no fallback to the prose)
        run = _final_run(boxes)
        return ", ".join(run) if len(run) > 1 else run[0]
    return unboxed_answer(text) if extraction == "any" else None


def answer_for_label(text: str | None, label: str | None, extraction: str = "boxed") -> str | None:
    """The answer of a response to grade against ``label`` (see the module docstring); None when it has none."""
    check_extraction(extraction)
    if not isinstance(text, str) or not text:
        return None
    boxes = boxed_contents(text)
    if not boxes or boxes[-1][0] is None:
        return response_answer(text, extraction)
    last = boxes[-1][0]
    if len(boxes) == 1 or label is None:
        return last
    truth = normalize_answer(str(label)).text
    if not is_list_valued(truth):
        return last
    if is_list_valued(normalize_answer(last).text):
        return last
    run = _final_run(boxes)
    if len(run) > 1:
        return ", ".join(run)
    distinct = _dedupe([c for c, _ in boxes if c is not None])
    n = len(_items(truth))
    if 1 < n <= len(distinct):
        return ", ".join(distinct[-n:])
    return last


def _items(truth: str) -> tuple:
    from .forms import answer_form

    f = answer_form(truth)
    if f[0] == "named":
        f = f[2]
    return f[2] if f[0] == "seq" else (f,)
