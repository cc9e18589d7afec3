"""A small, bounded evaluator of constant LaTeX arithmetic (``\\frac``, ``\\sqrt``, ``^``, ``\\pi``, ``!``, + - * /).

Why: most answer pairs that are not plain numbers are still constants (``\\frac{\\sqrt{3}}{2}``, ``3\\sqrt{2}``,
``2^{10}``). Evaluating both sides to floats in-process lets the grader reject unequal pairs without sympy or a worker
process, and flags inputs whose exact value is astronomically large (``9^{9^{9}}``, ``(10^9)!``) before they reach
sympy, where they would run until killed. The evaluator never computes anything big: powers and factorials are
checked against float range first, and the input length is bounded by the caller.

Result: a float, ``NOT_NUMERIC`` (variables, functions, no real value), ``TOO_BIG`` (overflow, huge factorial) or, when
letters are allowed, ``MALFORMED`` (only known arithmetic tokens, yet no valid expression: ``^^^``, ``2x+``).
Pure Python: standard library only.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

__all__ = ["MALFORMED", "NOT_NUMERIC", "TOO_BIG", "evaluate"]

NOT_NUMERIC = "not_numeric"
TOO_BIG = "too_big"
MALFORMED = "malformed"

_TOKEN_RE = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[A-Za-z]+|.)")
_MUL_CMDS = {"\\cdot", "\\times", "*"}
_ATOM_START = {"(", "{", "\\frac", "\\sqrt", "\\pi", "\\binom"}


class _NotNumeric(Exception):
    pass


class _Undefined(_NotNumeric):
    """A well-formed expression without a real value here (1/0, sqrt(-1), 2.5!)."""


class _TooBig(Exception):
    pass


class _Parser:
    """Recursive descent over tokens; every method returns a float or raises one of the two exceptions."""

    def __init__(self, text: str, variables: bool, point: int = 0):
        self.toks = [t for t in _TOKEN_RE.findall(text) if t.strip()]
        self.i = 0
        self.variables = variables
        self.values = _VAR_POINTS[point % len(_VAR_POINTS)]
        # a token outside the arithmetic this parser knows (\\sin, x_1, |x|, =, ...): failure is then not "malformed"
        self.unknown = any(not _known(t, variables) for t in self.toks)

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _NotNumeric
        self.i += 1
        return tok

    def parse(self) -> float:
        value = self.expr()
        if self.peek() is not None:
            raise _NotNumeric
        return value

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return _finite(value)

    def term(self) -> float:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in _MUL_CMDS:
                self.take()
                value *= self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                den = self.unary()
                if den == 0:
                    raise _Undefined
                value /= den
            elif tok is not None and (tok in _ATOM_START or tok[0].isdigit() or tok[0] == "." or _is_var(tok)):
                value *= self.power()  # implicit multiplication: 3\sqrt{2}, 2\pi
            else:
                return _finite(value)

    def unary(self) -> float:
        if self.peek() in ("-", "+"):
            sign = -1.0 if self.take() == "-" else 1.0
            return sign * self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        while self.peek() == "!":
            self.take()
            base = _factorial(base)
        if self.peek() == "^":
            self.take()
            exponent = self.group_or_char()
            return _pow(base, exponent)
        return base

    def group_or_char(self) -> float:
        tok = self.peek()
        if tok == "{":
            return self.atom()
        if tok is not None and tok[0].isdigit():
            # `2^10` in LaTeX means 2^1 followed by 0; only the first digit is the exponent.
            self.take()
            if len(tok) > 1:
                self.toks.insert(self.i, tok[1:])
            return float(tok[0])
        if tok in ("-", "+"):
            return self.unary()
        return self.atom()

    def atom(self) -> float:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        if tok in ("(", "{", "["):
            closing = {"(": ")", "{": "}", "[": "]"}[tok]
            value = self.expr()
            self.take(closing)
            return value
        if tok == "\\frac":
            num, den = self.atom(), self.atom()
            if den == 0:
                raise _Undefined
            return _finite(num / den)
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.group_or_char()
            if radicand < 0 or index <= 0:
                raise _Undefined
            return _pow(radicand, 1.0 / index)
        if tok == "\\binom":
            n, k = self.atom(), self.atom()
            if n != int(n) or k != int(k) or n < 0 or k < 0 or n > 10_000:
                raise _TooBig if n > 10_000 else _Undefined
            return _finite(float(math.comb(int(n), int(k))))
        if tok == "\\pi":
            return math.pi
        if self.variables and _is_var(tok):
            return self.values[tok]
        raise _NotNumeric


# Fixed, "generic" values for single-letter variables: two different polynomials/rational functions agree at such a
# point only by accident, and then the symbolic grader still decides (a float match is never a final True).
# `e`, `i` (and `E`, `I`) are left out: they are usually constants (e^{i\\pi} = -1), so they stay symbolic.
# Several points (``evaluate(..., point=k)``) let a caller test that two equations are multiples of each other.
_LETTERS = "abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ"
_VAR_POINTS = [{c: 0.5 + ((ord(c) * 0.6180339887498949 * (k + 1) + 0.37 * k) % 1.0) * 1.37 for c in _LETTERS}
               for k in range(4)]
_VAR_VALUES = _VAR_POINTS[0]
_KNOWN_CMDS = {"\\frac", "\\sqrt", "\\pi", "\\binom", "\\div", "\\cdot", "\\times"}


def _is_var(tok: str) -> bool:
    return tok in _VAR_VALUES


def _known(tok: str, variables: bool) -> bool:
    return (tok[0].isdigit() or tok[0] == "." or tok in "+-*/^!()[]{}" or tok in _KNOWN_CMDS
            or (variables and _is_var(tok)))


def _finite(x: float) -> float:
    if math.isnan(x):
        raise _Undefined
    if math.isinf(x):
        raise _TooBig
    return x


def _pow(base: float, exponent: float) -> float:
    try:
        return _finite(math.pow(base, exponent))
    except OverflowError:
        raise _TooBig from None
    except (ValueError, ZeroDivisionError):  # complex (negative base, fractional exponent) or 0^-1
        raise _Undefined from None


def _factorial(x: float) -> float:
    if x != int(x) or x < 0:
        raise _Undefined
    if x > 170:  # 171! overflows a float; sympy would compute it exactly, slowly for big x
        raise _TooBig
    return float(math.factorial(int(x)))


@lru_cache(maxsize=1 << 16)
def evaluate(text: str, variables: bool = False, point: int = 0) -> float | str:
    """Value of a normalized LaTeX expression, or ``NOT_NUMERIC`` / ``TOO_BIG``. Never raises.

    With ``variables=True`` single ASCII letters take fixed generic values (``_VAR_VALUES``), so ``2x+3`` and ``3+2x``
    evaluate equal and ``2x+3`` and ``2x+4`` do not: a cheap screen before symbolic grading. ``point`` (0-3) picks
    another set of generic values."""
    if len(text) > 1000:
        return NOT_NUMERIC
    parser = _Parser(text, variables, point)
    try:
        return parser.parse()
    except _TooBig:
        return TOO_BIG
    except _Undefined:
        return NOT_NUMERIC
    except _NotNumeric:
        # Every token was known arithmetic (letters included) and it still did not parse: the input is malformed
        # (`^^^`, `2x+`, `{}`), not something a symbolic grader could make sense of.
        return MALFORMED if variables and not parser.unknown else NOT_NUMERIC
    except (ValueError, ZeroDivisionError, RecursionError, OverflowError):
        return NOT_NUMERIC
