"""Answer equivalence: a fast in-process grader, the symbolic grader that runs in worker processes, and ``grade_answer``.

Order of checks (algorithms-semantics §2.4 keeps "string match, then symbolic"; PLATFORM.md "math-verify 0.9.0"):
1. ``fast_grade`` (this process, pure Python, bounded time): normalized strings equal -> True; an answer that is too
   dangerous to evaluate (``normalize.is_dangerous``, or a value beyond float range) -> False; tuples / intervals /
   sets split and compared element by element (tuples and intervals in order with identical brackets, sets and bare
   comma lists in any order, like MATH grading); two plain numbers -> exact rational comparison (``0.5`` = ``1/2`` =
   ``\\frac12``; a trailing percent also matches the value / 100, so ``25\\%`` = ``25`` = ``0.25``); two constant
   expressions whose float values differ -> False. Anything else is undecided (None).
2. ``symbolic_grade`` (only inside a worker process, see ``pool.py``): math-verify ``parse`` + ``verify`` on the
   boxed normalized strings, then a sympy fallback ``simplify(a - b) == 0`` via latex2sympy. It can hang on hostile
   input, which is why it never runs in the caller's process: the pool kills a worker at the deadline.

``grade_answer`` = fast path, else one job on the shared default pool; a timeout or any error counts as "not equal".
Imports no torch; math-verify/sympy are imported only inside worker processes.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

from .normalize import is_dangerous, normalize_answer, parse_number
from .numeric import MALFORMED, NOT_NUMERIC, TOO_BIG, evaluate

__all__ = ["fast_grade", "grade_answer", "symbolic_grade", "split_structure"]

log = logging.getLogger(__name__)

_REL_TOL = 1e-9
_ORDERED = {"()", "[]", "(]", "[)"}


def split_structure(text: str) -> tuple[str, list[str]] | None:
    """Split a normalized answer into (kind, items) when it is a comma list: kind ``set`` for ``\\{a,b\\}``, the two
    bracket characters (``()``, ``[)``, ...) for tuples/intervals, ``list`` for a bare ``a,b``. None for a scalar."""
    kind, body = "list", text
    if text.startswith("\\{") and text.endswith("\\}") and _wraps(text, 2):
        kind, body = "set", text[2:-2]
    elif len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _wraps(text, 1):
        kind, body = text[0] + text[-1], text[1:-1]
    items, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    if len(items) == 1 and kind != "set":
        return None
    return kind, items


def _wraps(text: str, width: int) -> bool:
    """True when the opening bracket of ``text`` (``width`` chars) is closed only by its last char(s)."""
    depth = 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False
    return depth == 0


def _compare_structures(a: tuple[str, list[str]], b: tuple[str, list[str]]) -> bool | None:
    (ka, ia), (kb, ib) = a, b
    if len(ia) != len(ib):
        return False
    if ka in _ORDERED or kb in _ORDERED:
        if ka != kb:
            return False if {ka, kb} & {"set"} or (ka in _ORDERED and kb in _ORDERED) else None
        verdicts = [_fast(x, False, y, False) for x, y in zip(ia, ib)]
        if False in verdicts:
            return False
        return True if all(verdicts) else None
    # Unordered (set or bare list): a perfect matching on decided-equal pairs -> True; a row with no possible
    # partner -> False; otherwise undecided.
    table = [[_fast(x, False, y, False) for y in ib] for x in ia]
    if any(all(v is False for v in row) for row in table):
        return False
    if _perfect_matching([[v is True for v in row] for row in table]):
        return True
    return None if any(v is None for row in table for v in row) else False


def _perfect_matching(ok: list[list[bool]]) -> bool:
    """Kuhn's augmenting paths on a small boolean matrix (lists of answers are short)."""
    match_of_col: dict[int, int] = {}

    def augment(row: int, seen: set[int]) -> bool:
        for col, good in enumerate(ok[row]):
            if good and col not in seen:
                seen.add(col)
                if col not in match_of_col or augment(match_of_col[col], seen):
                    match_of_col[col] = row
                    return True
        return False

    return all(augment(r, set()) for r in range(len(ok)))


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=1e-12)


@lru_cache(maxsize=1 << 17)
def _fast(x: str, xp: bool, y: str, yp: bool) -> bool | None:
    """Three-valued verdict on two normalized answers with percent flags (see the module docstring)."""
    if x == y:
        return True
    if not x or not y or is_dangerous(x) or is_dangerous(y):
        return False
    sx, sy = split_structure(x), split_structure(y)
    if sx is not None and sy is not None:
        return _compare_structures(sx, sy)
    if (sx is None) != (sy is None):  # a list against a scalar; only a one-element set (`\\{5\\}`) may still match
        return None if len((sx or sy)[1]) == 1 else False
    nx, ny = parse_number(x), parse_number(y)
    if nx is not None and ny is not None:
        return nx == ny or (xp and nx / 100 == ny) or (yp and ny / 100 == nx)
    if x.isalpha() and y.isalpha():  # words or letters: `Yes` = `yes`; `A` != `B`; `ab` vs `ba` is left to algebra
        if x.lower() == y.lower() and len(x) > 1:
            return True
        if len(x) == 1 and len(y) == 1:
            return False
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
        xs = [fx] + ([fx / 100] if xp else [])
        ys = [fy] + ([fy / 100] if yp else [])
        if _close(fx, fy):
            return None  # numerically equal closed forms: let the symbolic grader confirm
        return any(_close(u, v) for u in xs for v in ys)
    if (isinstance(fx, float) and y.isalpha()) or (isinstance(fy, float) and x.isalpha()):
        return False
    return None


def fast_grade(given: str, ground_truth: str) -> bool | None:
    """In-process verdict on two raw answers: True / False, or None when only the symbolic grader can tell."""
    a, b = normalize_answer(str(given)), normalize_answer(str(ground_truth))
    return _fast(a.text, a.percent, b.text, b.percent)


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
)


def warm_up() -> None:
    """Import math-verify/sympy and fill the parser's caches (see ``WARMUP_PAIRS``). Worker start-up calls this."""
    for given, truth in WARMUP_PAIRS:
        symbolic_grade(given, truth)
    _PARSE_CACHE.clear()  # keep the parser's internal caches, not our verdict-level ones


def symbolic_grade(given_norm: str, truth_norm: str) -> bool:
    """math-verify, then sympy. Runs ONLY in a grading worker process (may be slow or hang on hostile input; its
    caller enforces the deadline by killing the process). Any exception means "not equal"."""
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


# --------------------------------------------------------------------------------------------- public entry point
def grade_answer(given: str | None, ground_truth: str | None, timeout_s: float = 5.0) -> bool:
    """True when ``given`` is mathematically equivalent to ``ground_truth``.

    Safe from any thread of any process: the fast path runs here; undecided pairs go to the shared default
    ``GradingPool`` (``pool.default_pool()``). The call returns within ``timeout_s`` (waiting for a busy worker
    included; the worker is killed if it is still grading) plus the one-time start of a worker (~1 s, not counted).
    Timeouts, errors and None inputs give False; never raises.
    """
    if given is None or ground_truth is None:
        return False
    try:
        verdict = fast_grade(given, ground_truth)
        if verdict is not None:
            return verdict
        from .pool import default_pool

        return default_pool().grade_pairs([(str(given), str(ground_truth))], timeout_s=timeout_s,
                                          total_timeout_s=timeout_s)[0]
    except Exception as exc:  # the grader must never take the training step down
        log.warning("grade_answer(%.60r, %.60r) failed, counted as not equal: %s", given, ground_truth, exc)
        return False
