r"""Answer equivalence: the in-process fast grader and the symbolic grader that runs in worker processes.

Order of checks (algorithms-semantics §2.4 keeps "string match, then symbolic"; PLATFORM.md "math-verify 0.9.0"):
1. ``fast_grade`` (this process, pure Python, bounded time): normalized strings equal -> True; an answer that is too
   dangerous to evaluate (``normalize.is_dangerous``, or a value beyond float range) -> False; otherwise the answers'
   structures (``forms.py``: lists, tuples, intervals, labelled values, relations, matrices) are compared with the
   scalar rules below at the leaves. Scalars: two plain numbers -> exact rational comparison (``0.5`` = ``1/2`` =
   ``\frac12``; a trailing percent also matches the value / 100, so ``25\%`` = ``25`` = ``0.25``); a written decimal
   against a value it rounds (``0.0833333`` = ``\frac{1}{12}``, see ``decimal_rounds``); two constant expressions
   whose float values differ -> False. Anything else is undecided (None).
2. ``symbolic_grade`` (only inside a worker process, see ``pool.py``): the same structural comparison with a symbolic
   leaf: math-verify ``parse`` + ``verify`` on the boxed normalized strings, then a sympy fallback
   ``simplify(a - b) == 0`` via latex2sympy; relations by ``simplify`` of the ratio of their two sides. It can hang
   on hostile input, which is why it never runs in the caller's process: the pool kills a worker at the deadline.

The public entry points that combine both (``grade_answer``, ``score_response``) live in ``score.py``.
Imports no torch; math-verify/sympy are imported only inside worker processes.
"""

from __future__ import annotations

import logging
import math
import re
from fractions import Fraction
from functools import lru_cache

from .forms import answer_form, compare
from .normalize import is_dangerous, normalize_answer, parse_number
from .numeric import MALFORMED, NOT_NUMERIC, TOO_BIG, evaluate

__all__ = ["MIN_SIG_DIGITS", "ROUNDING_REL_TOL", "decimal_rounds", "fast_grade", "normalized_pair", "symbolic_grade"]

log = logging.getLogger(__name__)

_REL_TOL = 1e-9
ROUNDING_REL_TOL = 1e-4  # a rounded decimal must be this close (relative) to the exact value it stands for...
MIN_SIG_DIGITS = 4  # ...unless it is the correct rounding to at least this many significant digits
_DECIMAL_RE = re.compile(r"^[+-]?\d*\.(\d+)$")
_BASE_RE = re.compile(r"^(\d+)_\{?(\d+)\}?$")  # `1011_2`: a number written in base 2 (MATH number theory)


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=1e-12)


def _places(text: str) -> int | None:
    m = _DECIMAL_RE.match(text)
    return len(m.group(1)) if m else None


def decimal_rounds(places: int, written: float | Fraction, exact: float | Fraction, sig_digits: int = 0) -> bool:
    r"""Is ``written`` (a decimal with ``places`` digits after the point, ``sig_digits`` significant ones) a rounding
    of ``exact``?

    Yes when ``exact`` needs more than ``places + 2`` decimals (so ``1000.1`` never stands for ``1000``, nor ``12.5``
    for ``12.49``: both are exact decimals that differ) and either
    - it is the correct rounding to at least ``MIN_SIG_DIGITS`` significant digits (``0.1667`` for 1/6, ``33.33`` for
      100/3), or
    - it is within one unit of its last digit (rounded or truncated) and ``ROUNDING_REL_TOL`` relative (``2.6667``).
    So ``3.14`` / ``0.333`` / ``2.67`` (three digits) never stand for pi, 1/3, 8/3. Where it comes from: models turn
    ``\frac{1}{12}`` into ``0.0833333`` and ``\frac83`` into ``2.6667``; the Qwen2.5-Math / ToRA graders accept 1e-4
    relative, math-verify rounds to 6 places.
    """
    scale = 10 ** (places + 2)
    if isinstance(exact, Fraction):
        if (exact * scale).denominator == 1:
            return False
    else:
        t = exact * scale
        if abs(t - round(t)) <= max(1e-6, abs(t) * 4e-16):  # a float of a short decimal, up to float rounding
            return False
    err = abs(float(written) - float(exact))
    ulp = 10.0 ** -places
    if sig_digits >= MIN_SIG_DIGITS and err <= ulp * (0.5 + 1e-9):
        return True
    return err <= ulp * (1 + 1e-9) and err <= ROUNDING_REL_TOL * abs(float(exact))


def _sig_digits(text: str) -> int:
    digits = text.lstrip("+-").replace(".", "").lstrip("0")
    return len(digits)


def _rounding_match(x: str, vx, xp: bool, y: str, vy, yp: bool) -> bool:
    """One side a written decimal that rounds the other (of two decimals, the one with fewer digits is the rounded
    one); percent flags also try value / 100."""
    sides = ((_places(x), vx, xp, x), (_places(y), vy, yp, y))
    for i in (0, 1):
        (places, value, pct, text), (other_places, other, other_pct, _) = sides[i], sides[1 - i]
        if places is None or (other_places is not None and other_places < places):
            continue
        sig = _sig_digits(text)
        for written, digits in ((value, places),) + (((value / 100, places + 2),) if pct else ()):
            for exact in (other,) + ((other / 100,) if other_pct else ()):
                if decimal_rounds(digits, written, exact, sig):
                    return True
    return False


@lru_cache(maxsize=1 << 17)
def _scalar(x: str, xp: bool, y: str, yp: bool) -> bool | None:
    """Three-valued verdict on two normalized scalar answers with percent flags (see the module docstring)."""
    if x == y:
        return True
    if not x or not y:
        return False
    nx, ny = parse_number(x), parse_number(y)
    if nx is not None and ny is not None:
        if nx == ny or (xp and nx / 100 == ny) or (yp and ny / 100 == nx):
            return True
        return _rounding_match(x, nx, xp, y, ny, yp)
    if x.isalpha() and y.isalpha():  # words or letters: `Yes` = `yes`; `A` != `B`; `ab` vs `ba` is left to algebra
        if x.lower() == y.lower() and len(x) > 1:
            return True
        if len(x) == 1 and len(y) == 1:
            return False
    bx, by = _BASE_RE.match(x), _BASE_RE.match(y)
    if (bx or by) and (bx.group(1) if bx else x) == (by.group(1) if by else y):
        return True  # `1011_2` = `1011`
    fx, fy = evaluate(x), evaluate(y)
    if TOO_BIG in (fx, fy):
        return False
    if NOT_NUMERIC in (fx, fy):  # retry with letters bound to generic values: screens polynomials, 2x+3 vs 3+2x
        vx, vy = evaluate(x, True), evaluate(y, True)
        if TOO_BIG in (vx, vy) or MALFORMED in (vx, vy):  # (x+1)^{10000} would take sympy minutes; `^^^` is junk
            return False
        if isinstance(vx, float) and isinstance(vy, float):
            return None if _close(vx, vy) else False
    if isinstance(fx, float) and isinstance(fy, float):
        if _close(fx, fy):
            return None  # numerically equal closed forms: let the symbolic grader confirm
        xs = [fx] + ([fx / 100] if xp else [])
        ys = [fy] + ([fy / 100] if yp else [])
        if any(_close(u, v) for u in xs for v in ys):
            return True
        return _rounding_match(x, nx if nx is not None else fx, xp, y, ny if ny is not None else fy, yp)
    if (isinstance(fx, float) and y.isalpha()) or (isinstance(fy, float) and x.isalpha()):
        return False
    return None


def _fast_relation(op: str, lhs1: str, rhs1: str, lhs2: str, rhs2: str) -> bool | None:
    r"""Two relations ``lhs op rhs``: False when ``lhs - rhs`` of one is not a constant multiple of the other's at
    generic points (a positive multiple for ``<`` / ``\leq``); None when it is (the symbolic grader confirms)."""
    if (lhs1, rhs1) == (lhs2, rhs2):
        return True
    ratios = []
    for point in range(3):
        f1, f2 = (evaluate(f"({a})-({b})", True, point) for a, b in ((lhs1, rhs1), (lhs2, rhs2)))
        if TOO_BIG in (f1, f2) or MALFORMED in (f1, f2):
            return False
        if not (isinstance(f1, float) and isinstance(f2, float)):
            return None
        if f1 == 0 or f2 == 0:
            if (f1 == 0) != (f2 == 0):
                return False
            continue
        ratios.append(f1 / f2)
    if not ratios:
        return None
    if any(not math.isclose(r, ratios[0], rel_tol=1e-7) for r in ratios):
        return False
    if op in ("<", "\\leq") and ratios[0] < 0:
        return False
    return None


class _FastJudge:
    """Leaves of ``forms.compare`` decided in-process (None = undecided)."""

    @staticmethod
    def scalar(x: str, y: str) -> bool | None:
        return _scalar(x, False, y, False)

    @staticmethod
    def relation(op: str, lhs1: str, rhs1: str, lhs2: str, rhs2: str) -> bool | None:
        return _fast_relation(op, lhs1, rhs1, lhs2, rhs2)


FAST_JUDGE = _FastJudge()


@lru_cache(maxsize=1 << 17)
def _fast(x: str, xp: bool, y: str, yp: bool) -> bool | None:
    """Three-valued verdict on two normalized answers with percent flags (see the module docstring)."""
    if x == y:
        return True
    if not x or not y or is_dangerous(x) or is_dangerous(y):
        return False
    if parse_number(x) is not None and parse_number(y) is not None:
        return _scalar(x, xp, y, yp)  # the common case, no structure to read
    fx, fy = answer_form(x), answer_form(y)
    if fx[0] == "s" and fy[0] == "s":
        return _scalar(x, xp, y, yp)
    return compare(fx, fy, FAST_JUDGE)


def fast_grade(given: str, ground_truth: str) -> bool | None:
    """In-process verdict on two raw answers: True / False, or None when only the symbolic grader can tell.
    Never raises: an unexpected error leaves the pair to the worker, whose verdict on any error is "not equal"."""
    a, b = normalize_answer(str(given)), normalize_answer(str(ground_truth))
    try:
        return _fast(a.text, a.percent, b.text, b.percent)
    except Exception as exc:
        log.warning("fast grading of %.60r vs %.60r failed, left to the worker: %r", a.text, b.text, exc)
        return None


def normalized_pair(given: str, ground_truth: str) -> tuple[str, str]:
    """The (given, truth) strings that the symbolic grader receives; also the key of the pool's verdict cache."""
    return normalize_answer(str(given)).text, normalize_answer(str(ground_truth)).text


# --------------------------------------------------------------------------------------------- worker side only
_PARSE_CACHE: dict[str, list] = {}


def _parse(text: str) -> list:
    """math-verify parse of a normalized answer, boxed so the LaTeX extractor reads all of it (an unboxed
    ``3*sqrt(2)`` parses to ``3``, PLATFORM.md). Cached per worker."""
    hit = _PARSE_CACHE.get(text)
    if hit is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

        cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        hit = parse("\\boxed{" + text + "}", extraction_config=cfg, parsing_timeout=None)
        if len(_PARSE_CACHE) > 50_000:
            _PARSE_CACHE.clear()
        _PARSE_CACHE[text] = hit
    return hit


def _sympy_equal(x: str, y: str) -> bool:
    import sympy
    from latex2sympy2_extended import latex2sympy

    ex, ey = latex2sympy(x), latex2sympy(y)
    if isinstance(ex, sympy.Eq) and isinstance(ey, sympy.Eq):
        ex, ey = ex.rhs - ex.lhs, ey.rhs - ey.lhs
    if not (isinstance(ex, sympy.Expr) and isinstance(ey, sympy.Expr)):
        return False
    return bool(sympy.simplify(ex - ey) == 0)


# One pair per LaTeX construct that answers use. math-verify's ANTLR parser builds its prediction cache lazily per
# process (a cold parse of a new construct costs ~0.1-0.2 s, a warm one ~10 ms), so workers pay that once at start-up.
WARMUP_PAIRS = (
    (r"\frac{1}{2}", "0.5"), (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2"), (r"2\pi", r"\pi\cdot2"), ("x^2-1", "(x-1)(x+1)"),
    ("[1,3)", "(1,3]"), ("(2,-1)", "(-1,2)"), (r"\{1,2\}", "1,2"), (r"\text{B}", "B"), ("2^{10}", "1024"),
    (r"\sqrt[3]{27}", "3"), (r"\binom{5}{2}", "10"), ("5!", "120"), (r"-\infty", r"\infty"), (r"\sin^2x", "1"),
    ("y=2x+3", "2x+3"), (r"\frac{a}{b}", "a/b"), (r"1.5\times10^{3}", "1500"), (r"\log_2 8", "3"),
    ("2x+4y-3=0", r"y=-\frac{1}{2}x+\frac{3}{4}"),  # relations: latex2sympy + simplify of a ratio (forms.py)
)


def warm_up() -> None:
    """Import math-verify/sympy and fill the parser's caches (see ``WARMUP_PAIRS``). Worker start-up calls this."""
    for given, truth in WARMUP_PAIRS:
        symbolic_grade(given, truth)
    _PARSE_CACHE.clear()  # keep the parser's internal caches, not our verdict-level ones


def _symbolic_scalar(given_norm: str, truth_norm: str) -> bool:
    """math-verify, then sympy, on two normalized strings. Any exception means "not equal"."""
    try:
        from math_verify import verify

        gold, pred = _parse(truth_norm), _parse(given_norm)
        if gold and pred and verify(gold, pred, timeout_seconds=None):
            return True
    except Exception as exc:  # math-verify raises on odd input; that is a verdict, not a crash
        log.debug("math-verify failed on %r vs %r: %s", given_norm, truth_norm, exc)
    try:
        return _sympy_equal(given_norm, truth_norm)
    except Exception:
        return False


def _sympy_relation(op: str, lhs1: str, rhs1: str, lhs2: str, rhs2: str) -> bool:
    r"""``lhs1 - rhs1`` is a non-zero constant multiple of ``lhs2 - rhs2`` (positive for ``<`` / ``\leq``)."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    d1 = latex2sympy(lhs1) - latex2sympy(rhs1)
    d2 = latex2sympy(lhs2) - latex2sympy(rhs2)
    if sympy.simplify(d2) == 0:
        return bool(sympy.simplify(d1) == 0)
    ratio = sympy.simplify(d1 / d2)
    if ratio.free_symbols or ratio == 0:
        return False
    return bool(ratio.is_positive) if op in ("<", "\\leq") else bool(ratio.is_nonzero)


class _SymbolicJudge:
    """Leaves of ``forms.compare`` inside a worker: the fast verdict when there is one, else math-verify / sympy."""

    @staticmethod
    def scalar(x: str, y: str) -> bool:
        verdict = _scalar(x, False, y, False)
        return verdict if verdict is not None else _symbolic_scalar(x, y)

    @staticmethod
    def relation(op: str, lhs1: str, rhs1: str, lhs2: str, rhs2: str) -> bool:
        verdict = _fast_relation(op, lhs1, rhs1, lhs2, rhs2)
        if verdict is not None:
            return verdict
        try:
            return _sympy_relation(op, lhs1, rhs1, lhs2, rhs2)
        except Exception:
            return _symbolic_scalar(f"{lhs1}={rhs1}" if op == "=" else f"{lhs1}{op} {rhs1}",
                                    f"{lhs2}={rhs2}" if op == "=" else f"{lhs2}{op} {rhs2}")


def symbolic_grade(given_norm: str, truth_norm: str) -> bool:
    """Structure-aware symbolic verdict. Runs ONLY in a grading worker process (may be slow or hang on hostile input;
    its caller enforces the deadline by killing the process). Any exception means "not equal"."""
    try:
        fa, fb = answer_form(given_norm), answer_form(truth_norm)
        if not (fa[0] == "s" and fb[0] == "s") and not (is_dangerous(given_norm) or is_dangerous(truth_norm)):
            verdict = compare(fa, fb, _SymbolicJudge())
            if verdict is not None:
                return bool(verdict)
    except Exception as exc:
        log.debug("structural grading failed on %r vs %r: %s", given_norm, truth_norm, exc)
    return _symbolic_scalar(given_norm, truth_norm)
