"""Answer extraction: the content of the last ``\\boxed{...}`` (or ``\\boxed X`` / ``\\fbox{...}``) in a response.

Follows the MATH convention (Hendrycks et al. 2021, ``last_boxed_only_string``) that TTRL uses (algorithms-semantics
§2.3) with two fixes: upstream returns None for ``\\fbox{...}`` and for the brace-less form ``\\boxed 5`` although it
finds them; both are answers here. Nested boxes (``\\boxed{\\boxed{5}}``) give the innermost content. One linear scan
per call, so a 50,000-character response with deep braces costs microseconds.

Pure Python: imports nothing outside the standard library.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "last_boxed_span"]

# `\boxed` or `\fbox`, not followed by a letter (so `\boxedfoo` is another macro).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The brace-less form `\boxed 5`: the answer runs to the next `$`, newline or end of a sentence-ish token.
_BARE_RE = re.compile(r"[ \t]*([^\s$]+)")


def _match_brace(text: str, open_pos: int) -> int:
    """Index of the `}` closing the `{` at ``open_pos``, or -1 when it never closes. Escaped braces `\\{` `\\}` count
    as ordinary characters, like in LaTeX."""
    depth = 0
    i, n = open_pos, len(text)
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
    return -1


def last_boxed_span(text: str) -> tuple[int, int, bool] | None:
    """(start, end, braced) of the content of the last top-level box in ``text``; None when there is none.

    "Last" means the box whose macro starts last among boxes that are not inside another box; a box nested in it is
    unwrapped by ``extract_answer``. An unclosed ``\\boxed{`` is skipped (it is a truncated response, not an answer).
    """
    best: tuple[int, int, bool] | None = None
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return best
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_brace(text, j)
            if close < 0:
                pos = m.end()
                continue
            best = (j + 1, close, True)
            pos = close + 1
            continue
        bare = _BARE_RE.match(text, m.end())
        if bare is not None and m.end() < len(text) and text[m.end()] in " \t":
            best = (bare.start(1), bare.end(1), False)
            pos = bare.end(1)
        else:
            pos = m.end()


def extract_answer(text: str | None) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` / ``\\boxed X`` / ``\\fbox{...}`` in ``text``.

    Returns None when there is no box or the box is empty. Trailing sentence punctuation of the brace-less form
    (``\\boxed 5.``) is dropped. Never raises for any ``str`` input.
    """
    if not text or "\\boxed" not in text and "\\fbox" not in text:
        return None
    span = last_boxed_span(text)
    if span is None:
        return None
    ans = text[span[0]:span[1]].strip()
    if not span[2]:  # brace-less form
        ans = ans.rstrip(".,;:")
    # `\boxed{\boxed{5}}` -> 5: unwrap while the whole content is itself one box.
    for _ in range(8):
        inner = last_boxed_span(ans)
        if inner is None or not inner[2] or not _BOX_RE.fullmatch(ans[:inner[0] - 1].strip()) or ans[inner[1] + 1:].strip():
            break
        ans = ans[inner[0]:inner[1]].strip()
    return ans or None
