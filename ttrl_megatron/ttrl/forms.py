"""The structure of a normalized answer, and the structural half of answer equivalence.

``answer_form(text)`` reads a normalized answer (``normalize.py``) into a small tree of tuples (hashable, cached):

  ("s", text)                        a scalar: a number, an expression, a word; compared by a leaf judge
  ("seq", kind, items, var)          a collection; ``kind`` is the bracket pair of a tuple or interval (``()``, ``[]``,
                                     ``(]``, ``[)``), ``set`` (``\\{..\\}``), ``list`` (a bare ``a, b``, order-free like
                                     a set of solutions), ``named`` (``k=45, n=2``: values labelled by DIFFERENT
                                     names) or ``union`` (``A \\cup B``); ``var`` names the variable of an interval that
                                     came from an inequality (``x > 5`` -> ``(5, \\infty)`` with var ``x``)
  ("named", name, value, value_text) ``x = 3``, ``y = 2x+3``, ``(p,q) = (3,2)``, ``f(x) = x^2``
  ("rel", op, lhs, rhs)              any other relation, ``op`` in ``=`` ``<`` ``\\leq`` ``\\neq`` (``>``/``\\geq`` are
                                     flipped): ``2x+4y-3=0``, ``x \\neq 3``, ``x^2 < 4``
  ("mat", rows)                      ``pmatrix`` / ``bmatrix`` / ``matrix`` / ``array`` cells, row-major

Rules, each with where it comes from in practice:
- solutions labelled with one variable (``x = 1, x = 2``, ``x_1 = a, x_2 = b``: quadratics, MATH/OlympiadBench) are an
  order-free list of values; labels with distinct names (``k = 45, n = 2``, ``(p,q) = (3,2)``: "find k and n") keep the
  order they were written in and, against another labelled answer, are matched by name;
- one-variable inequalities are intervals (``x \\geq 5`` = ``[5, \\infty)``; ``-2 \\le x \\le 7`` = ``x \\in [-2, 7]``
  = ``[-2, 7]``); a list of them is a union (``x < -1`` or ``x > 2``);
- ``a \\pm b`` is the list ``a+b, a-b`` (roots written with a plus-minus sign);
- two equations are equal when one is a non-zero multiple of the other (``2x+4y-3=0`` = ``y=-\\frac{1}{2}x+\\frac{3}{4}``),
  an inequality only for a positive multiple; an assignment ``y = 2x+3`` also equals its right-hand side;
- a row or column vector equals the tuple of its entries; a matrix never equals its transpose (shapes and cell order
  are compared).
``compare(a, b, judge)`` applies them with a leaf ``judge`` (in-process fast judge in ``grading.py``; the symbolic one
in the worker), three-valued: True, False, or None when the structure alone cannot tell.

Pure Python: standard library only.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Protocol

from .normalize import MAX_EVAL_LEN, has_variable

__all__ = ["Judge", "answer_form", "compare", "is_list_valued", "split_top"]

ORDERED = ("()", "[]", "(]", "[)")
MAX_UNORDERED = 32  # order-free lists compare pairwise (n^2 leaf verdicts); longer ones only as identical multisets
UNORDERED = ("set", "list", "union")
_MATRIX_RE = re.compile(r"^[(\[]?\\begin\{([pbBV]?matrix|smallmatrix)\}(.*)\\end\{\1\}[)\]]?$", re.S)
_ARRAY_RE = re.compile(r"^[(\[]?\\begin\{array\}(?:\{[^{}]*\})?(.*)\\end\{array\}[)\]]?$", re.S)
# A name on the left of `=`: a letter with an optional subscript / primes, or a function value `f(x)`.
_NAME_RE = re.compile(r"^[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?'*(?:\([A-Za-z](?:,[A-Za-z])*\))?$")
_TUPLE_NAME_RE = re.compile(r"^\([A-Za-z](?:_\{?\w+\}?)?(?:,[A-Za-z](?:_\{?\w+\}?)?)+\)$")
_STRUCTURE_RE = re.compile(r"[,=<>&]|\\\{|\\(?:pm|mp|cup|in|begin|leq|geq|neq)(?![A-Za-z])")
_RELATION_RE = re.compile(r"\\(?:leq|geq|neq|in)(?![A-Za-z])|[<>=]")
_FLIP = {">": "<", "\\geq": "\\leq", "<": ">", "\\leq": "\\geq"}
_INF = "\\infty"


class Judge(Protocol):
    """Leaf comparisons used by ``compare``: scalars, and relations as the sign of a multiple."""

    def scalar(self, x: str, y: str) -> bool | None: ...

    def relation(self, op: str, lhs1: str, rhs1: str, lhs2: str, rhs2: str) -> bool | None: ...


def split_top(text: str, seps: tuple[str, ...]) -> list[tuple[str, str]]:
    """Split ``text`` at separators outside brackets: ``[(piece, separator_after), ...]`` (the last has "")."""
    if not any(sep in text for sep in seps):
        return [(text, "")]
    out, depth, start, i, n = [], 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if text.startswith(sep, i) and not (sep[0] == "\\" and text[i + len(sep):i + len(sep) + 1].isalpha()):
                    out.append((text[start:i], sep))
                    i += len(sep)
                    start = i
                    break
            else:
                i += 1
            continue
        i += 1
    out.append((text[start:], ""))
    return out


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


def _brackets(text: str) -> tuple[str, str]:
    """(kind, body): ``set`` for ``\\{..\\}``, the bracket pair for ``(..)``/``[..)``..., else ("", text)."""
    if text.startswith("\\{") and text.endswith("\\}") and _wraps(text, 2):
        return "set", text[2:-2]
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _wraps(text, 1):
        return text[0] + text[-1], text[1:-1]
    return "", text


@lru_cache(maxsize=1 << 16)
def answer_form(text: str) -> tuple:
    """The structure of a normalized answer (see the module docstring). Never raises."""
    if not text or len(text) > MAX_EVAL_LEN or not _STRUCTURE_RE.search(text):
        return ("s", text)  # no separator, relation, set, plus-minus, union or environment: a scalar
    try:
        return _form(text, 0)
    except Exception:  # a structure we misread is still a string that can match itself
        return ("s", text)


def _form(text: str, depth: int) -> tuple:
    if depth > 4:
        return ("s", text)
    m = _MATRIX_RE.match(text) or _ARRAY_RE.match(text)
    if m:
        body = m.group(m.lastindex)
        rows = tuple(tuple(cell for cell in row.split("&")) for row in body.split("\\\\") if row.strip())
        if rows and len({len(r) for r in rows}) == 1:
            return ("mat", rows)
    unions = split_top(text, ("\\cup",))
    if len(unions) > 1:
        return ("seq", "union", tuple(_form(p, depth + 1) for p, _ in unions), "")
    kind, body = _brackets(text)
    parts = [p for p, _ in split_top(body, (",",))]
    if len(parts) == 1 and kind != "set":
        return _item(text, depth)
    items = []
    for p in parts:
        f = _item(p, depth + 1)
        if f[0] == "seq" and f[1] == "list" and kind in ("", "set") and ("\\pm" in p or "\\mp" in p):
            items.extend(f[2])  # `1 \pm \sqrt{2}, 3`: the plus-minus pair joins the list
        else:
            items.append(f)
    return _collection(kind or "list", tuple(items))


def _collection(kind: str, items: tuple) -> tuple:
    """A list of items: labelled solutions of one variable become an order-free list, distinct labels a ``named``
    sequence, a list of intervals of one variable a union."""
    named = [f for f in items if f[0] == "named"]
    if named and len(named) == len(items) and kind in ("list", "set"):
        bases = {_base(f[1]) for f in items}
        if len(bases) == 1 and None not in bases:
            return ("seq", "list", tuple(f[2] for f in items), "")
        return ("seq", "named", items, "")
    if kind == "list" and len(items) > 1 and all(f[0] == "seq" and f[3] for f in items):
        if len({f[3] for f in items}) == 1:
            return ("seq", "union", items, "")
    return ("seq", kind, items, "")


def _base(name: str) -> str | None:
    """The variable letter of a solution label (``x``, ``x_1``, ``x_{2}``), None for function values."""
    return name[0] if "(" not in name else None


def _item(text: str, depth: int) -> tuple:
    """One item: a plus-minus pair, a relation, a labelled value, or a scalar (brackets recurse into ``_form``)."""
    if not text:
        return ("s", text)
    pm = text.count("\\pm") + text.count("\\mp")
    if pm == 1:
        sign = "\\pm" if "\\pm" in text else "\\mp"
        plus, minus = ("+", "-") if sign == "\\pm" else ("-", "+")
        a, b = text.replace(sign, plus), text.replace(sign, minus)
        return ("seq", "list", (_item(_tidy_sign(a), depth + 1), _item(_tidy_sign(b), depth + 1)), "")
    if _RELATION_RE.search(text):
        rel = _relation(text, depth)
        if rel is not None:
            return rel
    kind, _ = _brackets(text)
    if kind:
        inner = _form(text, depth + 1)
        if inner[0] == "seq":
            return inner
    return ("s", text)


def _tidy_sign(text: str) -> str:
    """``+3`` -> ``3``, ``x=+3`` -> ``x=3``, ``--3`` -> ``3`` after replacing a plus-minus sign."""
    text = re.sub(r"(^|[=(,{])\+", r"\1", text)
    return text.replace("+-", "-").replace("-+", "-").replace("--", "+")


def _relation(text: str, depth: int) -> tuple | None:
    parts = split_top(text, ("\\leq", "\\geq", "\\neq", "\\in", "<", ">", "="))
    if len(parts) == 1:
        return None
    sides = [p.strip() for p, _ in parts]
    ops = [op for _, op in parts[:-1]]
    if any(not s for s in sides):
        return None
    if len(ops) == 1:
        lhs, op, rhs = sides[0], ops[0], sides[1]
        if op == "\\in":
            inner = _form(rhs, depth + 1)
            if inner[0] == "seq" and inner[1] in ORDERED and len(inner[2]) == 2 and _NAME_RE.match(lhs):
                return ("seq", inner[1], inner[2], lhs)
            return inner
        if op == "=":
            if _NAME_RE.match(lhs) or (_TUPLE_NAME_RE.match(lhs) and _brackets(rhs)[0]):
                return ("named", lhs, _form(rhs, depth + 1), rhs)
            return ("rel", "=", lhs, rhs)
        return _inequality(lhs, op, rhs)
    if len(ops) == 2 and ({ops[0], ops[1]} <= {"<", "\\leq"} or {ops[0], ops[1]} <= {">", "\\geq"}):
        # a chain `a < x <= b` (or `b > x >= a`) around one variable: an interval
        lo, mid, hi = sides
        if ops[0] in (">", "\\geq"):
            lo, hi, ops = hi, lo, [_FLIP[ops[1]], _FLIP[ops[0]]]
        if ops[0] in ("<", "\\leq") and _NAME_RE.match(mid) and not has_variable(lo) and not has_variable(hi):
            left = "(" if ops[0] == "<" else "["
            right = ")" if ops[1] == "<" else "]"
            return ("seq", left + right, (("s", lo), ("s", hi)), mid)
    return None


def _inequality(lhs: str, op: str, rhs: str) -> tuple:
    """``x > 5`` -> interval ``(5, \\infty)`` of x; other relations in a canonical direction (``<``, ``\\leq``)."""
    if op in ("<", ">", "\\leq", "\\geq"):
        if _NAME_RE.match(rhs) and not _NAME_RE.match(lhs):
            lhs, rhs, op = rhs, lhs, _FLIP[op]
        if _NAME_RE.match(lhs) and not has_variable(rhs):
            if op in ("<", "\\leq"):
                return ("seq", "(" + (")" if op == "<" else "]"), (("s", "-" + _INF), ("s", rhs)), lhs)
            return ("seq", ("(" if op == ">" else "[") + ")", (("s", rhs), ("s", _INF)), lhs)
        if op in (">", "\\geq"):
            lhs, rhs, op = rhs, lhs, _FLIP[op]
        return ("rel", op, lhs, rhs)
    if op == "\\neq" and _NAME_RE.match(rhs) and not _NAME_RE.match(lhs):
        lhs, rhs = rhs, lhs
    return ("rel", op, lhs, rhs)


def is_list_valued(text: str) -> bool:
    """Does a normalized answer hold several values (a list, set, tuple, labelled list or a plus-minus pair)?"""
    f = answer_form(text)
    if f[0] == "named":
        f = f[2]
    return f[0] == "seq" and f[1] in ("list", "set", "named", "()") and len(f[2]) >= 2


# --------------------------------------------------------------------------------------------- comparison
def compare(a: tuple, b: tuple, judge: Judge) -> bool | None:
    """Three-valued equivalence of two forms (see the module docstring for the rules)."""
    if a == b:
        return True
    ta, tb = a[0], b[0]
    if ta == "named" or tb == "named":
        return _compare_named(a, b, judge)
    if ta == "s" and tb == "s":
        return judge.scalar(a[1], b[1])
    if ta == "rel" and tb == "rel":
        return _compare_relations(a, b, judge)
    if ta == "rel" or tb == "rel":
        return None  # an equation against a value: math-verify decides on the whole strings
    if ta == "mat" or tb == "mat":
        return _compare_matrix(a, b, judge)
    if ta == "s" or tb == "s":  # a value against a collection: only a one-element set / list may match
        seq = a if tb == "s" else b
        other = b if tb == "s" else a
        if len(seq[2]) == 1 and seq[1] in UNORDERED:
            return compare(seq[2][0], other, judge)
        return False
    return _compare_seqs(a, b, judge)


def _compare_named(a: tuple, b: tuple, judge: Judge) -> bool | None:
    if a[0] == "named" and b[0] == "named":
        if a[1] == b[1] or not (has_variable(a[3]) or has_variable(b[3])):
            return compare(a[2], b[2], judge)
        return judge.relation("=", a[1], a[3], b[1], b[3])  # two lines written for different variables
    named, other = (a, b) if a[0] == "named" else (b, a)
    if other[0] == "rel" and other[1] == "=":
        return judge.relation("=", named[1], named[3], other[2], other[3])  # y = mx + c against ax + by + c = 0
    return compare(named[2], other, judge)


def _compare_relations(a: tuple, b: tuple, judge: Judge) -> bool | None:
    if a[1] != b[1]:
        return False if {a[1], b[1]} <= {"<", "\\leq"} and a[2:] == b[2:] else None
    if a[1] == "\\neq" and judge.scalar(a[2], b[2]) and judge.scalar(a[3], b[3]):
        return True
    return judge.relation(a[1], a[2], a[3], b[2], b[3])


def _compare_matrix(a: tuple, b: tuple, judge: Judge) -> bool | None:
    if a[0] == "mat" and b[0] == "mat":
        if len(a[1]) != len(b[1]) or len(a[1][0]) != len(b[1][0]):
            return False
        return _all_in_order([x for r in a[1] for x in r], [y for r in b[1] for y in r], judge)
    mat, seq = (a, b) if a[0] == "mat" else (b, a)
    if seq[0] != "seq" or seq[1] not in ("()", "[]", "list") or min(len(mat[1]), len(mat[1][0])) != 1:
        return False
    cells = [x for r in mat[1] for x in r]
    if len(cells) != len(seq[2]):
        return False
    return _all_in_order(cells, list(seq[2]), judge)


def _leaf(item) -> tuple:
    return item if isinstance(item, tuple) else answer_form(item)


def _all_in_order(xs: list, ys: list, judge: Judge) -> bool | None:
    verdicts = []
    for x, y in zip(xs, ys):
        v = compare(_leaf(x), _leaf(y), judge)
        if v is False:
            return False
        verdicts.append(v)
    return True if all(verdicts) else None


def _compare_seqs(a: tuple, b: tuple, judge: Judge) -> bool | None:
    (_, ka, ia, va), (_, kb, ib, vb) = a, b
    if len(ia) != len(ib):
        return False
    if va and vb and va != vb:
        return False
    if ka == "named" and kb == "named":
        names_a, names_b = [f[1] for f in ia], [f[1] for f in ib]
        if sorted(names_a) == sorted(names_b):
            by_name = dict(zip(names_b, ib))
            return _all_in_order([f[2] for f in ia], [by_name[n][2] for n in names_a], judge)
    if "named" in (ka, kb):
        other = kb if ka == "named" else ka
        if other in ("named", "list", "()"):
            return _all_in_order([f[2] if f[0] == "named" else f for f in ia],
                                 [f[2] if f[0] == "named" else f for f in ib], judge)
        return False
    if ka in ORDERED and kb in ORDERED:
        return _all_in_order(list(ia), list(ib), judge) if ka == kb else False
    if {ka, kb} == {"list", "()"}:
        return _all_in_order(list(ia), list(ib), judge)  # a bare `3, 2` against the tuple `(3, 2)`
    if ka in ORDERED or kb in ORDERED or (ka == "union") != (kb == "union"):
        return False
    return _unordered(ia, ib, judge)


def _unordered(ia: tuple, ib: tuple, judge: Judge) -> bool | None:
    """A perfect matching on decided-equal pairs -> True; a row with no possible partner -> False; else None.
    Lists longer than ``MAX_UNORDERED`` (degenerate answers) are equal only as identical multisets."""
    if len(ia) > MAX_UNORDERED:
        return sorted(map(repr, ia)) == sorted(map(repr, ib))
    table = [[compare(x, y, judge) for y in ib] for x in ia]
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
