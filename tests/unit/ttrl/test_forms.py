"""Normalization rules and answer structures (forms.py), the rounding rule, and bounded work on hostile structures."""

import time
from fractions import Fraction

import pytest

from ttrl_megatron.ttrl import fast_grade, normalize_answer
from ttrl_megatron.ttrl.forms import answer_form, is_list_valued
from ttrl_megatron.ttrl.grading import decimal_rounds

NORMALIZED = [  # (raw, normalized text)
    (r"11,\! 111,\! 100", "11111100"), (r"32,\!349", "32349"), (r"1{,}000", "1000"), (r"1\,000", "1000"),
    ("1,000", "1000"), ("12 345", "12345"), (r"3{,}5", "3.5"), ("1, 000", "1,000"), ("1,2", "1,2"),
    ("1; 2", "1,2"), (r"1 \text{ and } 2", "1,2"), (r"x=1 \text{ or } x=2", "x=1,x=2"), (r"1 \quad 2", "1,2"),
    (r"x = 1,\quad x = 2", "x=1,x=2"), (r"5 \quad \text{cm}", "5"), ("2 and -5", "2,-5"),
    (r"\\left( \\frac{1}{5}, \\frac{1}{6} \\right)", r"(\frac{1}{5},\frac{1}{6})"), (r"2\\pi", r"2\pi"),
    (r"x \ge 5", r"x\geq5"), ("x >= 5", r"x\geq5"), (r"x \geqslant 5", r"x\geq5"), (r"x \ne 3", r"x\neq3"),
    ("x != 3", r"x\neq3"), ("x ≤ 2", r"x\leq2"), ("−3", "-3"), (r"-2 \le x \le 7", r"-2\leq x\leq7"),
    (r"2\pi r", r"2\pi r"), ("y = 2x+3", "y=2x+3"), (r"x = \dfrac12", r"\frac{1}{2}"), (r"x = 1, 2", "1,2"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}"),
    (r"\langle 1, 2 \rangle", "(1,2)"), (r"\varnothing", r"\emptyset"), (r"\{\}", r"\emptyset"),
    (r"\mathbb{R}", r"(-\infty,\infty)"),
]


@pytest.mark.parametrize("raw,text", NORMALIZED, ids=lambda x: repr(x)[:24])
def test_normalization(raw, text):
    assert normalize_answer(raw).text == text


S = lambda t: ("s", t)  # noqa: E731
FORMS = [
    ("x=1,x=2", ("seq", "list", (S("1"), S("2")), "")),  # one variable: an order-free list of solutions
    ("x_1=3,x_2=5", ("seq", "list", (S("3"), S("5")), "")),
    ("k=45,n=2", ("seq", "named", (("named", "k", S("45"), "45"), ("named", "n", S("2"), "2")), "")),
    ("(p,q)=(3,2)", ("named", "(p,q)", ("seq", "()", (S("3"), S("2")), ""), "(3,2)")),
    (r"x\geq5", ("seq", "[)", (S("5"), S(r"\infty")), "x")),
    ("5<x", ("seq", "()", (S("5"), S(r"\infty")), "x")),
    (r"-2\leq x<7", ("seq", "[)", (S("-2"), S("7")), "x")),
    (r"x\in(0,1]", ("seq", "(]", (S("0"), S("1")), "x")),
    (r"x\neq3", ("rel", r"\neq", "x", "3")),
    ("x^2>4", ("rel", "<", "4", "x^2")),  # flipped to a canonical direction
    ("2x+4y-3=0", ("rel", "=", "2x+4y-3", "0")),
    (r"(1,2)\cup(3,4)", ("seq", "union", (("seq", "()", (S("1"), S("2")), ""), ("seq", "()", (S("3"), S("4")), "")), "")),
    (r"\pm3", ("seq", "list", (S("3"), S("-3")), "")),
    (r"1\pm\sqrt{2}", ("seq", "list", (S(r"1+\sqrt{2}"), S(r"1-\sqrt{2}")), "")),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", ("mat", (("1", "2"), ("3", "4")))),
    (r"(\begin{array}{cc}1&2\\3&4\end{array})", ("mat", (("1", "2"), ("3", "4")))),
    ("f(x)=x^2", ("named", "f(x)", S("x^2"), "x^2")),
    ("f(1,2)", S("f(1,2)")),
    (r"\{5\}", ("seq", "set", (S("5"),), "")),
]


@pytest.mark.parametrize("text,form", FORMS, ids=lambda x: repr(x)[:24])
def test_forms(text, form):
    assert answer_form(text) == form


def test_list_valued_labels():
    for text in ("1,2", r"\{1,2\}", "(3,2)", "k=45,n=2", r"\pm3", "x=1,x=2"):
        assert is_list_valued(text), text
    for text in ("5", "[1,2)", r"x\geq5", r"\frac{1}{2}", r"\begin{pmatrix}1&2\end{pmatrix}"):
        assert not is_list_valued(text), text


@pytest.mark.parametrize("places,written,exact,sig,ok", [
    (7, Fraction("0.0833333"), Fraction(1, 12), 6, True),
    (4, Fraction("2.6667"), Fraction(8, 3), 5, True),
    (4, Fraction("0.1667"), Fraction(1, 6), 4, True),  # correct rounding to 4 significant digits
    (4, Fraction("0.1666"), Fraction(1, 6), 4, False),  # truncated and 4e-4 relative
    (2, Fraction("3.14"), 3.141592653589793, 3, False),
    (3, Fraction("0.333"), Fraction(1, 3), 3, False),
    (1, Fraction("1000.1"), Fraction(1000), 5, False),  # 1000 is an exact decimal: no rounding stands for it
    (1, Fraction("12.5"), Fraction("12.49"), 3, False),
])
def test_decimal_rounding_rule(places, written, exact, sig, ok):
    assert decimal_rounds(places, written, exact, sig) is ok


def test_exact_values_of_special_notations():
    from ttrl_megatron.ttrl.normalize import parse_number

    assert parse_number(r"2\frac{1}{2}") == Fraction(5, 2)
    assert parse_number(r"-3\frac{1}{4}") == Fraction(-13, 4)
    assert parse_number(r"3\frac{5}{2}") is None  # not a proper fraction: not a mixed number
    assert parse_number(r"0.\overline{3}") == Fraction(1, 3)
    assert parse_number(r"1.2\overline{45}") == Fraction(137, 110)
    assert parse_number(r".\overline{142857}") == Fraction(1, 7)


def test_percent_and_rounding_together():
    assert fast_grade(r"16.67\%", r"\frac{1}{6}") is True
    assert fast_grade(r"16.7\%", r"\frac{1}{6}") is False


HOSTILE_STRUCTURES = [
    ",".join(["1"] * 140), ",".join(str(i) for i in range(140)), "x<" * 140 + "1", r"\pm" * 90, r"\cup" * 70,
    "x=" * 140, "(" * 12 + ",".join("1" * 50) + ")" * 12, r"\begin{pmatrix}" + "1&" * 140 + r"\end{pmatrix}",
]


@pytest.mark.parametrize("text", HOSTILE_STRUCTURES, ids=lambda s: repr(s[:16]))
def test_hostile_structures_are_fast(text):
    other = ",".join(str(i) for i in range(139, -1, -1))
    t0 = time.perf_counter()
    answer_form(text)
    fast_grade(text, other)
    fast_grade(other, text)
    assert time.perf_counter() - t0 < 1.0
