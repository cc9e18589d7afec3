r"""String normalization of final answers, exact number parsing, and the "too dangerous to evaluate" guard.

Normalization follows the MATH grader's ``_strip_string`` (Hendrycks et al. 2021) in spirit, rewritten and extended
for what policies actually write (each rule below names where it comes from in practice):
- labels stored with JSON-escaped backslashes (``\\frac{1}{5}``, dataset conversions) are un-escaped;
- ``\dfrac``/``\tfrac`` -> ``\frac``, ``\frac12`` -> ``\frac{1}{2}``, ``\sqrt2`` -> ``\sqrt{2}``; ``\left``/``\right``,
  ``\displaystyle`` and spacing macros dropped; ``$``/``\$``, degrees and unicode operators (``−``, ``≤``, ``×``) mapped;
- thousands separators: ``1,000`` (GSM8K), ``1{,}000`` / ``11,\! 111,\! 100`` / ``1\,000`` (MATH solutions and models
  trained on them), ``1 000`` -> ``1000``; a ``{,}`` not followed by exactly three digits is a decimal comma. A comma
  followed by a SPACE and plain digits (``1, 000``) is a list, never a separator;
- list connectors ``;``, ``\quad``, ``and``, ``or``, ``\text{ and }`` -> ``,`` (answers with several solutions);
- relations: ``\ge``/``>=``/``\geqslant`` -> ``\geq``, ``\le``/``<=`` -> ``\leq``, ``\ne``/``!=``/``\not=`` -> ``\neq``;
- ``\text{}`` unwrapped and trailing units (``5 \text{ cm}``, ``18 dollars``) removed; a short left-hand side
  with a constant right-hand side (``x = 3``) removed (``y = 2x+3`` keeps it: ``forms.py`` decides, because it may be an
  equation of a line); a trailing percent recorded as a flag; ``(A)`` -> ``A``.
Whitespace is removed except one space between a command and a following letter (``\pi r`` must not become ``\pir``).
Every step is a linear-time regex or scan, so adversarial input cannot make it slow; strings longer than
``MAX_NORMALIZE_LEN`` are not normalized at all (they only ever match themselves).

Pure Python: standard library only.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from .extract import extract_answer

__all__ = ["MAX_NORMALIZE_LEN", "Normalized", "has_variable", "is_dangerous", "normalize_answer", "parse_number",
           "unescape_json"]

MAX_NORMALIZE_LEN = 2000
MAX_EVAL_LEN = 300  # longer answers are never evaluated (contest answers are short; long ones are degenerate)
MAX_BRACE_DEPTH = 12
MAX_EXPONENT = 10_000  # |exponent| above this is refused: exact powers that big are never contest answers
MAX_EXPONENT_DEPTH = 2  # 2^{2^{2}} is fine; a third level (2^{2^{2^{2}}}) is refused unless strings match


class Normalized(NamedTuple):
    text: str
    percent: bool  # the answer ended in a percent sign (removed from ``text``)


_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_DELETE = ("\\left", "\\right", "\\displaystyle", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big")
_SPACES_RE = re.compile(r"(?<!\\)\\[,;: ]|[~\n\t]")  # spacing macros; the `\ ` of a `\\ ` row break is not one
_UNICODE = (("−", "-"), ("–", "-"), ("×", "\\times "), ("·", "\\cdot "), ("≤", "\\leq "), ("≥", "\\geq "),
            ("≠", "\\neq "), ("∈", "\\in "), ("∪", "\\cup "), ("∞", "\\infty "), ("π", "\\pi "), ("÷", "\\div "))
# vectors in angle brackets (MATH precalculus) are tuples; the spellings of the empty set and of the reals agree
_NOTATION = (("\\langle", "("), ("\\rangle", ")"), ("\\varnothing", "\\emptyset"), ("\\{\\}", "\\emptyset"),
             ("\\mathbb{R}", "(-\\infty,\\infty)"), ("\\mathbb R", "(-\\infty,\\infty)"))
_JSON_ESCAPED_RE = re.compile(r"\\\\[A-Za-z{}]")
_SINGLE_CMD_RE = re.compile(r"(?<!\\)\\[A-Za-z{}]")
# Thousands separators that only typesetting produces: `,\!` `{,}` `\,` `,\,` between a digit and three digits.
_TEX_THOUSANDS_RE = re.compile(r"(?<=\d)(?:,\s*\\!|\{,\}|,?\\,|,?\\;)\s*(?=\d{3}(?!\d))")
_DECIMAL_COMMA_RE = re.compile(r"(?<=\d)\{,\}(?=\d)")
_RELATIONS = ((re.compile(r"\\geq?slant|\\geq?(?![A-Za-z])|>="), "\\geq "),
              (re.compile(r"\\leq?slant|\\leq?(?![A-Za-z])|<="), "\\leq "),
              (re.compile(r"\\neq?(?![A-Za-z])|\\not\s*=|!="), "\\neq "),
              (re.compile(r"\\gt(?![A-Za-z])"), ">"), (re.compile(r"\\lt(?![A-Za-z])"), "<"))
_RELATION_HINT_RE = re.compile(r"\\(?:[gl][et]|ne|not)|[<>!]=")
_TEXT_MACROS = r"text|textbf|textit|textrm|textnormal|textup|mathrm|mathbf|mathit|mathsf|boldsymbol|mbox|operatorname"
_TEXT_RE = re.compile(r"\\(?:" + _TEXT_MACROS + r")\s*\{([^{}]*)\}")
_TEXT_CONNECTOR_RE = re.compile(r"\\(?:" + _TEXT_MACROS + r")\s*\{\s*(and|or|,|;)\s*\}", re.I)
_QUAD_RE = re.compile(r"\\q?quad(?![A-Za-z])")
# `5 \quad \text{cm}`: a spacing macro before a unit is spacing, not a list separator
_QUAD_UNIT_RE = re.compile(r"\\q?quad(?![A-Za-z])\s*(?=\\(?:" + _TEXT_MACROS + r")\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$)")
_WORD_CONNECTOR_RE = re.compile(r"(?<=\S)\s+(?:and|or)\s+(?=\S)", re.I)
# A trailing unit wrapped in a text macro after something that ends like a value: `5 \text{ cm}`, `3\mbox{ m}^2`.
_TEXT_UNIT_RE = re.compile(r"^(.*?[\d}).])\s*\\(?:" + _TEXT_MACROS + r")\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?$")
# A trailing plain-word unit after a plain number: `18 dollars`, `3 square feet`, `4 cm^2`.
_WORD_UNIT_RE = re.compile(r"^([+-]?[\d.,]*\d)\s+([A-Za-z]+\.?(?:\s+[A-Za-z]+\.?){0,2})(?:\^\{?\d\}?)?$")
_NOT_UNITS = {"or", "and", "to", "of", "is", "plus", "minus", "times"}
_LHS_RE = re.compile(r"^\s*[A-Za-z](?:_\{?\w\}?|[A-Za-z0-9])?\s*=(?!=)\s*(.+)$")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACED_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_WS_RE = re.compile(r"(\\[A-Za-z]+)?\s+(?=([A-Za-z])?)")
_CMD_SPACE_LETTER_RE = re.compile(r"\\[A-Za-z]+\s+[A-Za-z]")
_ANY_WS_RE = re.compile(r"\s+")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d|\{[^{}]*\})\s*(\d|\{[^{}]*\})")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d+|[A-Za-z])")
_CHOICE_RE = re.compile(r"^\(([A-Ea-e])\)$")
_DEGREES = ("^{\\circ}", "^\\circ", "\\circ", "°", "\\degree")
_RELATION_CHARS = ("=", "<", ">", "\\leq", "\\geq", "\\neq", "\\in")
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")


def _strip_wrappers(s: str) -> str:
    changed = True
    while changed:
        changed = False
        s = s.strip()
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left): len(s) - len(right)]
                changed = True
    return s


def _brace(group: str) -> str:
    return group if group.startswith("{") else "{" + group + "}"


def unescape_json(s: str) -> str:
    """``\\\\frac{1}{5}`` -> ``\\frac{1}{5}`` when EVERY command of ``s`` carries a doubled backslash (a label that
    went through JSON escaping twice); a matrix's ``\\\\`` row break next to single-backslash commands is left alone."""
    if "\\\\" in s and _JSON_ESCAPED_RE.search(s) and not _SINGLE_CMD_RE.search(s):
        return s.replace("\\\\", "\\")
    return s


def has_variable(s: str) -> bool:
    """A letter outside LaTeX commands (``2x``, ``\\frac{a}{2}``; not ``\\frac{\\pi}{2}``)."""
    return any(c.isalpha() and c.isascii() for c in _COMMAND_RE.sub("", s))


def _squash_spaces(s: str) -> str:
    if not _CMD_SPACE_LETTER_RE.search(s):
        return _ANY_WS_RE.sub("", s)
    return _WS_RE.sub(lambda m: (m.group(1) + " ") if m.group(1) and m.group(2) else (m.group(1) or ""), s)


@lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> Normalized:
    """Canonical string form of an answer (no whitespace) plus its percent flag. Never raises for ``str`` input."""
    s = str(answer)
    if len(s) > MAX_NORMALIZE_LEN:
        return Normalized(s.strip(), False)
    s = unescape_json(s)
    if "\\boxed" in s or "\\fbox" in s:
        s = extract_answer(s) or s
    s = _strip_wrappers(s)
    if not s.isascii():
        for uni, tex in _UNICODE:
            if uni in s:
                s = s.replace(uni, tex)
    s = s.replace("\\left.", "").replace("\\right.", "")
    if "\\" in s:
        for tex, canon in _NOTATION:
            if tex in s:
                s = s.replace(tex, canon)
    for tok in _DELETE:
        s = s.replace(tok, "")
    macros = "\\" in s
    if "," in s or "\\;" in s:
        s = _TEX_THOUSANDS_RE.sub("", s)
    if "{,}" in s:
        s = _DECIMAL_COMMA_RE.sub(".", s)
    if macros:
        s = s.replace("\\!", "")
        if "and" in s or "or" in s or "AND" in s or "OR" in s or "{,}" in s or "{;}" in s:
            s = _TEXT_CONNECTOR_RE.sub(lambda m: " " + m.group(1) + " ", s)
        if "quad" in s:
            s = _QUAD_UNIT_RE.sub(" ", s)
            s = _QUAD_RE.sub(" ; ", s)
    s = _SPACES_RE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    for tok in _DEGREES:
        s = s.replace(tok, "")
    s = s.replace("\\$", "").replace("$", "").replace("{,}", "").replace("+\\infty", "\\infty")
    if _RELATION_HINT_RE.search(s):
        for pattern, repl in _RELATIONS:
            s = pattern.sub(lambda _m, r=repl: r, s)
    s = s.strip().rstrip(".").strip()
    percent = False
    for tok in ("\\%", "%", "\\text{%}", "\\text{ percent}", " percent"):
        if s.endswith(tok):
            s, percent = s[: -len(tok)].strip(), True
            break
    m = _TEXT_UNIT_RE.match(s)
    if m:
        s = m.group(1)
    for _ in range(4):  # unwrap nested \text{\textbf{..}} a few levels deep
        s2 = _TEXT_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.strip()
    m = _WORD_UNIT_RE.match(s)
    if m and not (set(m.group(2).lower().replace(".", "").split()) & _NOT_UNITS):
        s = m.group(1)
    s = _list_separators(s)
    m = _LHS_RE.match(s)
    if m and not has_variable(m.group(1)) and not any(r in m.group(1) for r in _RELATION_CHARS):
        s = m.group(1)  # `x = 3` -> 3; `y = 2x + 3` and `k = 45, n = 2` keep their names (see forms.py)
    s = s.strip()
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    elif _SPACED_THOUSANDS_RE.match(s):
        s = s.replace(" ", "")
    s = _squash_spaces(s)
    s = _FRAC_SHORT_RE.sub(lambda m: "\\frac" + _brace(m.group(1)) + _brace(m.group(2)), s)
    s = _SQRT_SHORT_RE.sub(lambda m: "\\sqrt{" + m.group(1) + "}", s)
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    m = _CHOICE_RE.match(s)
    if m:
        s = m.group(1).upper()
    return Normalized(s, percent)


def _list_separators(s: str) -> str:
    """``;`` and the words ``and`` / ``or`` between two items become ``,``; empty items (``1, ; 2``) disappear."""
    if ";" not in s and "and" not in s and "or" not in s and "AND" not in s and "OR" not in s:
        return s
    s = _WORD_CONNECTOR_RE.sub(",", s).replace(";", ",")
    s = re.sub(r",(?:\s*,)+", ",", s)
    return s.strip().strip(",").strip()


_INT_RE = re.compile(r"^[+-]?\d+$")
_DEC_RE = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d{1,3})?$")
_SCI_RE = re.compile(r"^[+-]?\d+[eE][+-]?\d{1,3}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?(?:\d+\.?\d*|\.\d+))\}\{([+-]?(?:\d+\.?\d*|\.\d+))\}$")
# `2\frac{1}{2}` (a proper fraction after a whole number) is the mixed number 5/2, as in GSM8K-style answers
_MIXED_RE = re.compile(r"^([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
# `0.\overline{3}`, `1.2\overline{45}`: repeating decimals (MATH number theory)
_REPEATING_RE = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d{1,20})\}$")


@lru_cache(maxsize=1 << 16)
def parse_number(text: str) -> Fraction | None:
    """Exact rational value of a normalized plain number (``-3``, ``0.25``, ``1e3``, ``3/4``, ``-\\frac{3}{4}``, the
    mixed number ``2\\frac{1}{2}``, the repeating decimal ``0.\\overline{3}``), else None."""
    if not text or len(text) > 200:
        return None
    try:
        if _INT_RE.match(text) or _DEC_RE.match(text) or _SCI_RE.match(text):
            return Fraction(text)
        m = _SLASH_RE.match(text)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        m = _FRAC_RE.match(text)
        if m:
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            if den == 0:
                return None
            return -num / den if m.group(1) == "-" else num / den
        m = _MIXED_RE.match(text)
        if m and 0 < int(m.group(3)) < int(m.group(4)):
            value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
            return -value if m.group(1) == "-" else value
        m = _REPEATING_RE.match(text)
        if m:
            sign, whole, fixed, rep = m.groups()
            value = Fraction(int(whole or 0)) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
            value += Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
            return -value if sign == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _max_depths(text: str) -> tuple[int, int]:
    """(max bracket depth, max exponent nesting depth) in one scan; depth -1 when brackets do not balance (all of
    ``([{`` count as openers so intervals like ``[1,2)`` balance). An exponent level opens at ``^{`` (closed by its
    brace) or at ``^`` followed by one token."""
    depth = max_depth = max_exp = 0
    exp_stack: list[int] = []  # brace depths at which an exponent group was opened
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "({[":
            depth += 1
            max_depth = max(max_depth, depth)
        elif c in ")}]":
            if exp_stack and exp_stack[-1] == depth:
                exp_stack.pop()
            depth -= 1
            if depth < 0:
                return -1, max_exp  # a closer without an opener: malformed
        elif c == "^":
            level = len(exp_stack) + 1
            max_exp = max(max_exp, level)
            if i + 1 < n and text[i + 1] == "{":
                depth += 1
                max_depth = max(max_depth, depth)
                exp_stack.append(depth)
                i += 2
                continue
        i += 1
    return (max_depth if depth == 0 else -1), max_exp


@lru_cache(maxsize=1 << 16)
def is_dangerous(text: str) -> bool:
    """True when ``text`` must not be evaluated symbolically: too long, malformed (unbalanced brackets), too deeply
    nested, exponent towers deeper than ``MAX_EXPONENT_DEPTH``, an exponent above ``MAX_EXPONENT``, or a factorial
    of anything but a small literal. Such answers are only ever equal to an identical string (after normalization).
    Values beyond float range are caught by the evaluator."""
    if len(text) > MAX_EVAL_LEN or any(c < " " or c == "\ufffd" for c in text):  # control chars: binary junk
        return True
    depth, exp_depth = _max_depths(text)
    if depth < 0 or depth > MAX_BRACE_DEPTH or exp_depth > MAX_EXPONENT_DEPTH:
        return True
    if "!" in text and re.search(r"(?<![\d])(?:\d{4,}|[^\d])!|\d{4,}!", text.replace("!=", "")):
        return True
    return _has_huge_exponent(text)


def _has_huge_exponent(text: str) -> bool:
    """An exponent group ``^{...}`` whose constant value exceeds ``MAX_EXPONENT`` in size (``\\sin(10^{9^{9}})``):
    sympy would build the exact integer. Caught even inside functions the float evaluator does not know."""
    from .extract import _match_brace
    from .numeric import TOO_BIG, evaluate

    start = text.find("^{")
    while start >= 0:
        close = _match_brace(text, start + 1)
        if close < 0:
            return False
        value = evaluate(text[start + 2:close])
        if value == TOO_BIG or (isinstance(value, float) and abs(value) > MAX_EXPONENT):
            return True
        start = text.find("^{", start + 2)
    return False
