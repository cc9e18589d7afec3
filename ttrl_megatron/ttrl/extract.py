"""Answer extraction: the content of the last ``\\boxed{...}`` (or ``\\boxed X`` / ``\\fbox{...}``) in a response.

Follows the MATH convention (Hendrycks et al. 2021, ``last_boxed_only_string``) that TTRL uses (algorithms-semantics
§2.3) with two fixes: upstream returns None for ``\\fbox{...}`` and for the brace-less form ``\\boxed 5`` although it
finds them; both are answers here. Nested boxes (``\\boxed{\\boxed{5}}``) give the innermost content. One linear scan
per call, so a 50,000-character response with deep braces costs well under a millisecond.

``boxed_contents`` lists every box with the text before it, for answers that span several boxes (``answers.py``).
Pure Python plus numpy (for the scan of very long boxes).
"""

from __future__ import annotations

import re

__all__ = ["EXTRACTIONS", "box_content", "boxed_contents", "boxed_spans", "check_extraction", "extract_answer", "last_boxed_span"]

EXTRACTIONS = ("boxed", "any")  # ttrl.answer_extraction: last box (several boxes = a list) | box, else the conclusion

# `\boxed` or `\fbox`, not followed by a letter (so `\boxedfoo` is another macro).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The brace-less form `\boxed 5`: the answer runs to the next `$`, newline or end of a sentence-ish token.
_BARE_RE = re.compile(r"[ \t]*([^\s$]+)")


_SHORT_SCAN = 512  # chars scanned in Python before the rest of a long box is scanned vectorized


def _match_brace(text: str, open_pos: int) -> int:
    """Index of the `}` closing the `{` at ``open_pos``, or -1 when it never closes. Escaped braces `\\{` `\\}` count
    as ordinary characters, like in LaTeX. Short boxes are scanned in Python; a long one (a 50,000-character
    adversarial nest) is finished with one numpy cumulative sum, so the cost stays ~linear in C."""
    depth = 0
    i, n = open_pos, min(len(text), open_pos + _SHORT_SCAN)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character (`\{`, `\}`, `\\`)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    if i >= len(text):
        return -1
    return _match_brace_long(text, i, depth)


def _match_brace_long(text: str, start: int, depth: int) -> int:
    """Continue ``_match_brace`` from ``start`` (not inside an escape) at nesting ``depth`` > 0."""
    import numpy as np

    rest = text[start:]
    if "\\" in rest:  # blank out escapes, keeping every index: `\\` first, so `\\{` stays a real brace
        rest = rest.replace("\\\\", "  ").replace("\\{", "  ").replace("\\}", "  ")
    codes = np.frombuffer(rest.encode("utf-32-le"), dtype=np.uint32)
    level = depth + np.cumsum((codes == 123).astype(np.int64) - (codes == 125).astype(np.int64))
    hits = np.flatnonzero(level == 0)
    return start + int(hits[0]) if hits.size else -1


def boxed_spans(text: str) -> list[tuple[int, int, int, int, bool]]:
    """Every top-level box of ``text`` in order: ``(macro_start, content_start, content_end, end, braced)``.

    ``end`` is just past the closing brace (or the bare token). A box nested in another box is part of its parent's
    content (``extract_answer`` unwraps it). An unclosed ``\\boxed{`` is skipped (a truncated response, not an answer).
    One linear scan.
    """
    spans: list[tuple[int, int, int, int, bool]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return spans
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_brace(text, j)
            if close < 0:
                pos = m.end()
                continue
            spans.append((m.start(), j + 1, close, close + 1, True))
            pos = close + 1
            continue
        bare = _BARE_RE.match(text, m.end())
        if bare is not None and m.end() < len(text) and text[m.end()] in " \t":
            spans.append((m.start(), bare.start(1), bare.end(1), bare.end(1), False))
            pos = bare.end(1)
        else:
            pos = m.end()


def last_boxed_span(text: str) -> tuple[int, int, bool] | None:
    """(start, end, braced) of the content of the last top-level box in ``text``; None when there is none."""
    spans = boxed_spans(text)
    if not spans:
        return None
    _, start, end, _, braced = spans[-1]
    return start, end, braced


def box_content(text: str, span: tuple[int, int, int, int, bool]) -> str | None:
    """Stripped content of one box: trailing punctuation of the brace-less form dropped, nested boxes unwrapped."""
    _, start, end, _, braced = span
    ans = text[start:end].strip()
    if not braced:  # brace-less form
        ans = ans.rstrip(".,;:")
    # `\boxed{\boxed{5}}` -> 5: unwrap while the whole content is itself one box.
    for _ in range(8 if "\\boxed" in ans or "\\fbox" in ans else 0):
        inner = last_boxed_span(ans)
        if inner is None or not inner[2] or not _BOX_RE.fullmatch(ans[:inner[0] - 1].strip()) or ans[inner[1] + 1:].strip():
            break
        ans = ans[inner[0]:inner[1]].strip()
    return ans or None


def extract_answer(text: str | None, extraction: str = "boxed") -> str | None:
    """The stripped content of the last ``\\boxed{...}`` / ``\\boxed X`` / ``\\fbox{...}`` in ``text``.

    ``extraction="any"``: when there is no box, the final answer of the conclusion instead (``unboxed.py``).
    Returns None when there is no answer or the box is empty. Trailing sentence punctuation of the brace-less form
    (``\\boxed 5.``) is dropped. Never raises for any ``str`` input.
    """
    check_extraction(extraction)
    if not text:
        return None
    if "\\boxed" in text or "\\fbox" in text:
        spans = boxed_spans(text)
        if spans:
            return box_content(text, spans[-1])
    if extraction == "any":
        from .unboxed import unboxed_answer

        return unboxed_answer(text)
    return None


def boxed_contents(text: str | None) -> list[tuple[str | None, str]]:
    """Every top-level box of ``text`` as ``(content, text between the previous box and it)``; content None for an
    empty box; the first box's gap is "" (only gaps between boxes matter)."""
    if not text or ("\\boxed" not in text and "\\fbox" not in text):
        return []
    spans = boxed_spans(text)
    if len(spans) == 1:
        return [(box_content(text, spans[0]), "")]
    out, prev_end = [], None
    for span in spans:
        out.append((box_content(text, span), text[prev_end:span[0]] if prev_end is not None else ""))
        prev_end = span[3]
    return out


def check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"answer extraction must be one of {EXTRACTIONS} (ttrl.answer_extraction), got {extraction!r}")
