"""The final answer of a response that has no ``\\boxed{}``: the opt-in ``ttrl.answer_extraction=any`` fallback.

For datasets and prompts that do not ask for a box (GSM8K's ``#### 42``, Minerva's "Final Answer: The final answer is
$5$. I hope it is correct.", chat models that end with "Therefore $x \\geq 5$." or "**Answer:** 9"). Strong graders
(math-verify's regex priorities, the Qwen2.5-Math / DeepSeek-Math evaluation parsers) look for, in this order:

1. "final answer" followed (within the sentence) by a value;
2. the word "answer" followed by ``is`` / ``:`` / ``=`` / ``**`` or directly by math (``Answer $9$``);
3. GSM8K's ``#### value``;
4. a conclusion word (therefore, thus, hence, so, consequently, in conclusion, in total) whose sentence holds a value
   (the first math after the sentence's last "is" / "are" / "equals" / ":", else its last math);
5. the last math expression of the final paragraph, else a number at the very end of the response.

Within a level the rightmost anchor that yields a value wins. A value is the first math expression after the anchor
(together with the ones joined to it by ``,`` / ``and`` / ``or``: "$x = 1$ or $x = 2$" is a list), or, for conclusion
sentences, the last such group of the sentence; without math, the plain text after the anchor's last ``is`` / ``:`` /
``=`` up to the end of the sentence (a number or short expression with at most two unit words, or one short token:
``B``, ``Yes``; from a longer phrase, "there are 15 ways", its first number). Then a computation
chain keeps its result (``3 \\times 3 = 9`` -> ``9``, ``a = b = 5`` -> ``5``) and an approximation is dropped
(``\\frac{1}{12} \\approx 0.083`` -> ``\\frac{1}{12}``).

Every step is a linear scan or a bounded regex; only the last ``MAX_TAIL`` characters are searched. Standard library only.
"""

from __future__ import annotations

import re

__all__ = ["MAX_TAIL", "math_segments", "unboxed_answer"]

MAX_TAIL = 6000  # the conclusion is at the end; a 50,000-character response is searched in its last 6,000 only
_MAX_INLINE = 400  # an inline `$...$` longer than this is not math (currency signs, stray dollars)
_MAX_ANCHORS = 25  # anchors tried per level (rightmost first): bounds the work on text full of "so" and "answer"

_FINAL_RE = re.compile(r"final\s+answer", re.I)
_ANSWER_RE = re.compile(r"\banswer\b(?:\*\*)?\s*(?:is\b|:|=)?(?:\*\*)?", re.I)
_HASHES_RE = re.compile(r"####")
_CONCLUSION_RE = re.compile(r"\b(?:therefore|thus|hence|so|consequently|in\s+conclusion|in\s+total|altogether)\b", re.I)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")
_LAST_SEP_RE = re.compile(r"(?:\bis\b|:|=)")
_CONNECTOR_RE = re.compile(r"^\s*(?:,|;|,?\s*(?:and|or)\b|\\quad|&)?\s*$", re.I)
_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?")
# a plain value: a number or short expression, optionally followed by up to two unit words ("12 apples", "(B)", "3/4")
_VALUE_RE = re.compile(r"^[-+$(]*[\w\\{}^/.,()+*-]*\d[\w\\{}^/.,()+*%-]*(?:\s+[A-Za-z]+\.?){0,2}$")
# words after which a conclusion states its value: "the minimum value is $-\frac14$, attained at $x=\frac12$"
_VERB_RE = re.compile(r"\b(?:is|are|equals?|be|was|were)\b|:", re.I)
_LETTER_CMD_RE = re.compile(r"\\[A-Za-z]+")


def math_segments(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every math span: ``$$..$$``, ``\\[..\\]``, ``\\(..\\)`` and ``$..$``.

    Inline dollars follow pandoc's rule (an opening ``$`` is followed by a non-space, a closing one is preceded by a
    non-space and not followed by a digit) and a ``$`` after a space ends the attempt (it opens the next span), so
    prices such as "$5 and $10" are not math; ``\\$`` is a dollar sign.
    """
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in "[(":
                close = text.find("\\" + ("]" if nxt == "[" else ")"), i + 2)
                if close >= 0:
                    out.append((i, close + 2, text[i + 2:close]))
                    i = close + 2
                    continue
            i += 2  # an escaped character (`\$`, `\\`) or a command
            continue
        if c == "$":
            if text.startswith("$$", i):
                close = text.find("$$", i + 2)
                if close >= 0:
                    out.append((i, close + 2, text[i + 2:close]))
                    i = close + 2
                    continue
                i += 2
                continue
            close = _inline_close(text, i)
            if close >= 0:
                out.append((i, close + 1, text[i + 1:close]))
                i = close + 1
                continue
        i += 1
    return out


def _inline_close(text: str, start: int) -> int:
    """Index of the ``$`` closing the inline math opened at ``start``, or -1."""
    if start + 1 >= len(text) or text[start + 1].isspace():
        return -1
    j = start + 1
    limit = min(len(text), start + 1 + _MAX_INLINE)
    while j < limit:
        k = text.find("$", j, limit)
        if k < 0:
            return -1
        if "\n\n" in text[start:k]:
            return -1
        if text[k - 1] == "\\":  # `\$` inside math is a dollar sign
            j = k + 1
            continue
        if text[k - 1].isspace():
            return -1  # ` $` opens the next span rather than closing this one: "$5 and $10" is prices, not math
        if not (k + 1 < len(text) and text[k + 1].isdigit()):
            return k
        j = k + 1
    return -1


def _sentence_end(text: str, pos: int) -> int:
    """Index where the sentence containing ``pos`` ends (outside math; decimal points do not end sentences)."""
    m = _SENTENCE_END_RE.search(text, pos)
    return m.start() if m else len(text)


def _groups(text: str, segs: list[tuple[int, int, str]]) -> list[list[tuple[int, int, str]]]:
    """Math segments joined by list connectors (``,`` ``and`` ``or``) into groups: "$1$, $2$ and $3$" is one group."""
    groups: list[list[tuple[int, int, str]]] = []
    for seg in segs:
        if groups and _CONNECTOR_RE.match(text[groups[-1][-1][1]:seg[0]]):
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return groups


def _join(group: list[tuple[int, int, str]]) -> str:
    """One value per math segment (each tidied on its own), joined as a list."""
    return ", ".join(v for v in (_tidy(s[2]) for s in group) if v)


def _plain_value(window: str) -> str | None:
    """The value in plain text: after the last ``is`` / ``:`` / ``=``, trimmed; None when it does not look like one.
    A value that is a phrase ("there are 15 ways", "might be 7, but ...") gives its first number."""
    cut = None
    for m in _LAST_SEP_RE.finditer(window):
        cut = m.end()
    value = (window[cut:] if cut is not None else window).strip().strip("*,").strip()
    value = value.rstrip(".,;:!").strip()
    if not value or len(value) > 80:
        return None
    if _VALUE_RE.match(value) or (len(value.split()) == 1 and len(value) <= 20):
        return value
    number = _NUMBER_RE.search(value)
    return number.group(0).rstrip(",") if number else None


def _after_anchor(text: str, pos: int, segs: list[tuple[int, int, str]], last_group: bool) -> str | None:
    """The value that follows an anchor ending at ``pos``, within its sentence (see the module docstring)."""
    # the sentence may contain math whose dots are not sentence ends: skip over math when looking for the end
    end = pos
    while True:
        stop = _sentence_end(text, end)
        inside = next((s for s in segs if s[0] <= stop < s[1]), None)
        if inside is None:
            break
        end = inside[1]
    in_sentence = [s for s in segs if pos <= s[0] < stop]
    if in_sentence:
        groups = _groups(text, in_sentence)
        if not last_group:
            return _join(groups[0]) or None
        verb = _last_verb(text, pos, stop, in_sentence)
        after = [g for g in groups if verb is not None and g[0][0] >= verb]
        return _join(after[0] if after else groups[-1]) or None
    value = _plain_value(text[pos:stop])
    return _tidy(value) if value else None


def _last_verb(text: str, pos: int, stop: int, segs: list[tuple[int, int, str]]) -> int | None:
    """End of the last "is" / "are" / "equals" / ":" of ``text[pos:stop]`` outside math, or None."""
    last = None
    for m in _VERB_RE.finditer(text, pos, stop):
        if not any(s[0] <= m.start() < s[1] for s in segs):
            last = m.end()
    return last


def _tidy(value: str) -> str | None:
    """Keep a computation's result and drop an approximation (see the module docstring)."""
    value = value.strip()
    approx = value.find("\\approx")
    if approx > 0:
        value = value[:approx].strip()
    parts = _top_level_split(value, "=")
    if len(parts) >= 3:
        value = parts[-1]
    elif len(parts) == 2 and parts[1].strip() and not re.search(r"[A-Za-z]", _LETTER_CMD_RE.sub("", parts[0])):
        value = parts[1]  # `3 \times 3 = 9`: a computation, not an equation
    value = value.strip().rstrip(".,;").strip()
    return value or None


def _top_level_split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets; ``<=``, ``>=``, ``!=`` and ``==`` are not splits."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0 and (i == 0 or text[i - 1] not in "<>!=") and text[i + 1:i + 2] != "=":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def unboxed_answer(text: str | None) -> str | None:
    """The final answer of a response without a box, or None (see the module docstring for the rules)."""
    if not text:
        return None
    text = text[-MAX_TAIL:]
    segs = math_segments(text)
    for anchor_re, last_group in ((_FINAL_RE, False), (_ANSWER_RE, False), (_HASHES_RE, False),
                                  (_CONCLUSION_RE, True)):
        for m in list(anchor_re.finditer(text))[::-1][:_MAX_ANCHORS]:
            if any(s[0] < m.start() < s[1] for s in segs):
                continue  # a word inside math (`\text{so}`) is no anchor
            value = _after_anchor(text, m.end(), segs, last_group)
            if value:
                return value
    return _last_resort(text, segs)


def _last_resort(text: str, segs: list[tuple[int, int, str]]) -> str | None:
    """The last math group of the final paragraph, else a number that ends the response."""
    body = text.rstrip()
    para_start = body.rfind("\n\n") + 1
    tail_segs = [s for s in segs if s[0] >= para_start]
    if tail_segs:
        return _join(_groups(text, tail_segs)[-1]) or None
    last_sentence = body[max(body.rfind("\n"), 0):]
    numbers = list(_NUMBER_RE.finditer(last_sentence))
    if numbers and not last_sentence[numbers[-1].end():].strip(" .!*)"):
        return numbers[-1].group(0).rstrip(",")
    return None
