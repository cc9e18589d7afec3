"""Grading-fidelity cases: (kind, response, label, expected) written from how policies and datasets write answers.

``response`` is a whole model output (graded with ``score_response``), ``label`` the dataset's ground truth as stored,
``expected`` the right verdict. A response without a box has no answer under ``extraction="boxed"`` (expected False
there, see ``expected_for``); its ``expected`` is the verdict under ``extraction="any"``. Each kind says where it comes
from in practice; every kind has negative cases (pairs that must NOT grade equal). Used by ``test_grading_fidelity.py``
and ``bench/bench_grading_fidelity.py`` (which also runs math-verify on the same pairs).
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    kind: str
    response: str
    label: str
    expected: bool


def B(x: str) -> str:
    """A response that ends the usual way (Qwen2.5-Math / DeepSeek-R1 style: "... the final answer is $\\boxed{x}$.")."""
    return f"Let me work through this carefully.\nSo the final answer is $\\boxed{{{x}}}$."


KINDS: dict[str, str] = {
    "multibox": "several boxes in one response: chat models (Qwen2.5-Instruct, Llama-3.x-Instruct, R1 distills) box "
                "each solution, unknown or part ('\\boxed{1} and \\boxed{-2}', '\\boxed{6} papers and \\boxed{8} "
                "bins'); labels from MATH 'enter all solutions' and OlympiadBench multi-answer problems",
    "thousands": "thousands separators: GSM8K solutions ('1,000'), MATH solutions and the models trained on them "
                 "('1{,}000', '32,\\!349', '11,\\! 111,\\! 100'), DeepSeek/Qwen outputs with thin spaces ('1\\,000')",
    "lists": "answer lists joined by ';', 'and', 'or', '\\quad', '\\text{ and }', inside or outside '\\{ \\}': MATH "
             "'separated by commas' problems, OlympiadBench multi-solution answers, chat models' prose",
    "labelled": "labelled answers: 'find k and n' (AIME/OlympiadBench) answered 'k = 45, n = 2', points '(p,q)=(3,2)', "
                "roots 'x_1 = a, x_2 = b' (quadratics in MATH algebra)",
    "json": "labels stored with JSON-escaped backslashes ('\\\\frac{1}{5}'): dataset conversions that escaped twice "
            "(NuminaMath/DeepScaleR-style JSON exports, parquet written from escaped strings)",
    "relations": "relations and inequalities: OlympiadBench/MATH interval answers ('x \\geq 5', '-2 \\le x \\le 7', "
                 "'x \\in [-2, 7]', unions), '\\neq' vs '!=' from code-trained models",
    "equations": "equations that are the same line or curve: MATH/OlympiadBench analytic geometry ('find the equation "
                 "of the line'), slope-intercept vs general form",
    "matrices": "matrices and vectors: MATH precalculus labels in pmatrix; models write bmatrix, array, or a tuple "
                "for a vector",
    "decimals": "rounded decimals against exact values: models that evaluate fractions or surds numerically "
                "('0.0833333' for 1/12, '2.6667' for 8/3); too-coarse roundings must fail",
    "plusminus": "plus-minus roots: MATH algebra labels '1 \\pm \\sqrt{2}' or '3, -3'; models write either form",
    "unboxed": "no box at all: GSM8K few-shot ('The answer is 42', '#### 42'), Minerva-format ('Final Answer: The "
               "final answer is $5$. I hope it is correct.'), chat models without a box instruction ('Therefore "
               "$x \\geq 5$.', '**Answer:** 9')",
    "notation": "other spellings of one value: mixed numbers ('2\\frac{1}{2}', GSM8K-style chat answers), repeating "
                "decimals ('0.\\overline{3}', MATH number theory), angle-bracket vectors ('\\langle 1, 2 \\rangle', "
                "MATH precalculus), the empty set and the reals ('\\varnothing', '\\mathbb{R}')",
    "basics": "everyday MATH/GSM8K forms that must keep working: fractions vs decimals, units, money, percent, "
              "multiple choice, surds, multiples of pi, intervals, ordered pairs",
}

CASES: list[Case] = [
    # --- multibox
    Case("multibox", r"The solutions are $\boxed{1}$ $\boxed{2}$.", "1, 2", True),
    Case("multibox", r"So $x = \boxed{1}$ and $x = \boxed{-2}$.", "-2, 1", True),
    Case("multibox", r"She needs $\boxed{6}$ papers and $\boxed{8}$ bins.", "6, 8", True),
    Case("multibox", r"Thus $\boxed{3}$, $\boxed{5}$, or $\boxed{7}$.", r"\{3, 5, 7\}", True),
    Case("multibox", r"We get $x = \boxed{2}$, $y = \boxed{-1}$.", "(2, -1)", True),
    Case("multibox", "The number of papers is $\\boxed{6}$.\n\nThe number of bins is $\\boxed{8}$.", "6, 8", True),
    Case("multibox", r"Roots: $\boxed{\frac{1}{2}}$ and $\boxed{-3}$.", r"-3, \frac{1}{2}", True),
    Case("multibox", r"So $\boxed{1}$ and $\boxed{2}$.", "1, 2, 3", False),  # one solution missing
    Case("multibox", r"So $\boxed{1}$ and $\boxed{4}$.", "1, 2", False),  # one solution wrong
    Case("multibox", r"We get $x = \boxed{-1}$, $y = \boxed{2}$.", "(2, -1)", False),  # an ordered pair, swapped
    Case("multibox", "An intermediate value is $\\boxed{3}$. Checking again, we get $\\boxed{5}$.", "5", True),
    Case("multibox", "An intermediate value is $\\boxed{3}$. Checking again, we get $\\boxed{5}$.", "3", False),
    Case("multibox", r"First $\boxed{2}$, so the answer is $\boxed{2}$.", "2", True),
    # --- thousands
    Case("thousands", B(r"11,\! 111,\! 100"), "11111100", True),
    Case("thousands", B(r"32,\!349"), "32349", True),
    Case("thousands", B(r"1{,}000"), "1000", True),
    Case("thousands", B(r"1\,000"), "1000", True),
    Case("thousands", B("1,000"), "1000", True),
    Case("thousands", B(r"\$1,250.50"), "1250.5", True),
    Case("thousands", B("2,500,000"), r"2{,}500{,}000", True),
    Case("thousands", B("12 345"), "12345", True),
    Case("thousands", B("1,2"), "1, 2", True),  # a real list keeps its comma
    Case("thousands", B("1, 000"), "1000", False),  # comma + space + digits: a list, not a separator
    Case("thousands", B(r"1{,}000"), "100", False),
    Case("thousands", B("3,000"), "300", False),
    Case("thousands", B(r"3{,}5"), "3.5", True),  # a decimal comma (European typesetting)
    Case("thousands", B("1,000"), "1, 0", False),
    # --- lists
    Case("lists", B("1; 2"), "1, 2", True),
    Case("lists", B(r"1 \text{ and } 2"), "1, 2", True),
    Case("lists", B(r"x=1 \text{ or } x=2"), "1, 2", True),
    Case("lists", B(r"1 \quad 2"), "1, 2", True),
    Case("lists", B(r"\{1, 2\}"), "2, 1", True),
    Case("lists", B(r"\{-1 \text{ or } 3\}"), "3, -1", True),
    Case("lists", B("2 and -5"), r"\{-5, 2\}", True),
    Case("lists", B(r"x = 1, \quad x = -4"), "-4, 1", True),
    Case("lists", B(r"\frac{1}{2}, -3"), r"-3, \frac12", True),
    Case("lists", B(r"\frac{\sqrt{2}}{2}, 3"), r"3, \frac{1}{\sqrt{2}}", True),  # items only sympy can match
    Case("lists", B("(x+1)^2, 2"), "(x^2+2x+1, 2)", True),
    Case("lists", B(r"\frac{\sqrt{3}}{2}, 3"), r"3, \frac{1}{\sqrt{2}}", False),
    Case("lists", B("1; 2; 3"), "1, 2", False),
    Case("lists", B(r"1 \text{ and } 3"), "1, 2", False),
    Case("lists", B("1, 2"), "(1, 2]", False),  # a list is not an interval
    Case("lists", B(r"\{1, 2\}"), "(2, 1)", False),  # a set is not an ordered pair
    # --- labelled
    Case("labelled", B("(p,q)=(3,2)"), "(3,2)", True),
    Case("labelled", B("k = 45, n = 2"), "45, 2", True),
    Case("labelled", B("n = 2, k = 45"), "k=45, n=2", True),
    Case("labelled", B("x_1 = 3, x_2 = 5"), "5, 3", True),
    Case("labelled", B(r"a = 2, b = \frac{1}{3}"), r"(2, \frac{1}{3})", True),
    Case("labelled", B("x = 7"), "7", True),
    Case("labelled", B("f(x) = x^2 + 1"), "x^2+1", True),
    Case("labelled", B("(p,q)=(2,3)"), "(3,2)", False),
    Case("labelled", B("k = 2, n = 45"), "k=45, n=2", False),
    Case("labelled", B("k = 45, n = 3"), "45, 2", False),
    # --- json
    Case("json", B(r"\left( \frac{1}{5}, \frac{1}{6} \right)"), r"\\left( \\frac{1}{5}, \\frac{1}{6} \\right)", True),
    Case("json", B(r"\frac{\sqrt{3}}{2}"), r"\\frac{\\sqrt{3}}{2}", True),
    Case("json", B(r"2\pi"), r"2\\pi", True),
    Case("json", B(r"\{1, 2\}"), r"\\{1, 2\\}", True),
    Case("json", B(r"\left( \frac{1}{6}, \frac{1}{5} \right)"), r"\\left( \\frac{1}{5}, \\frac{1}{6} \\right)", False),
    Case("json", B(r"\frac{\sqrt{2}}{2}"), r"\\frac{\\sqrt{3}}{2}", False),
    # --- relations
    Case("relations", B(r"x \geq 5"), "x >= 5", True),
    Case("relations", B(r"x \ge 5"), r"[5, \infty)", True),
    Case("relations", B(r"x \neq 3"), "x != 3", True),
    Case("relations", B(r"x \in [-2, 7]"), r"-2 \le x \le 7", True),
    Case("relations", B(r"-2 \leq x \leq 7"), "[-2, 7]", True),
    Case("relations", B(r"5 < x"), "x > 5", True),
    Case("relations", B(r"x < -1 \text{ or } x > 2"), r"(-\infty, -1) \cup (2, \infty)", True),
    Case("relations", B(r"(2, \infty) \cup (-\infty, -1)"), r"(-\infty, -1) \cup (2, \infty)", True),
    Case("relations", B(r"0 < x \le 1"), r"x \in (0, 1]", True),
    Case("relations", B(r"x > 5"), r"x \ge 5", False),
    Case("relations", B(r"x \leq 5"), r"x \ge 5", False),
    Case("relations", B(r"x \in [-2, 7)"), r"-2 \le x \le 7", False),
    Case("relations", B(r"x \neq 3"), "x != -3", False),
    Case("relations", B(r"x < -1 \text{ or } x > 3"), r"(-\infty, -1) \cup (2, \infty)", False),
    # --- equations
    Case("equations", B("2x+4y-3=0"), r"y=-\frac{1}{2}x+\frac{3}{4}", True),
    Case("equations", B("y = 2x + 3"), "2x - y + 3 = 0", True),
    Case("equations", B("x^2 + y^2 = 4"), "y^2 + x^2 - 4 = 0", True),
    Case("equations", B("3x - 6y = 12"), "x - 2y - 4 = 0", True),
    Case("equations", B("y = 2x + 3"), "2x+3", True),
    Case("equations", B("2x+4y-3=0"), r"y=-\frac{1}{2}x+\frac{5}{4}", False),
    Case("equations", B("y = 2x + 3"), "y = 3x + 2", False),
    Case("equations", B("x^2 + y^2 = 4"), "x^2 + y^2 = 2", False),
    # --- matrices
    Case("matrices", B(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
         r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}", True),
    Case("matrices", B(r"\left(\begin{array}{cc} 1 & 2 \\ 3 & 4 \end{array}\right)"),
         r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", True),
    Case("matrices", B(r"\begin{pmatrix} \frac{1}{2} \\ -1 \end{pmatrix}"),
         r"\begin{pmatrix} 0.5 \\ -1 \end{pmatrix}", True),
    Case("matrices", B(r"\begin{pmatrix} 2 \\ -1 \\ 3 \end{pmatrix}"), "(2, -1, 3)", True),
    Case("matrices", B(r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
         r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}", False),  # the transpose
    Case("matrices", B(r"\begin{pmatrix} 1 & 2 & 3 \end{pmatrix}"),
         r"\begin{pmatrix} 1 \\ 2 \\ 3 \\ 4 \end{pmatrix}", False),
    Case("matrices", B(r"\begin{pmatrix} 2 \\ -1 \\ 3 \end{pmatrix}"), "(2, 3, -1)", False),
    # --- decimals
    Case("decimals", B("0.0833333"), r"\frac{1}{12}", True),
    Case("decimals", B("(0.6, 2.6667]"), r"(\frac35, \frac83]", True),
    Case("decimals", B("1.4142"), r"\sqrt{2}", True),
    Case("decimals", B("3.1416"), r"\pi", True),
    Case("decimals", B("0.33333"), r"\frac{1}{3}", True),
    Case("decimals", B("0.083"), r"\frac{1}{12}", False),  # too coarse (4e-3 relative)
    Case("decimals", B("3.14"), r"\pi", False),
    Case("decimals", B("0.333"), r"\frac{1}{3}", False),
    Case("decimals", B("(0.6, 2.67]"), r"(\frac35, \frac83]", False),
    Case("decimals", B("1000.1"), "1000", False),  # an exact decimal that differs is not a rounding
    Case("decimals", B("12.5"), "12.49", False),
    # --- plusminus
    Case("plusminus", B(r"1 \pm \sqrt{2}"), r"1+\sqrt{2}, 1-\sqrt{2}", True),
    Case("plusminus", B(r"x = \pm 3"), "3, -3", True),
    Case("plusminus", B(r"\frac{-1 \pm \sqrt{5}}{2}"), r"\frac{-1+\sqrt5}{2}, \frac{-1-\sqrt5}{2}", True),
    Case("plusminus", B(r"\pm 3"), "3", False),
    Case("plusminus", B(r"1 \pm \sqrt{3}"), r"1+\sqrt{2}, 1-\sqrt{2}", False),
    # --- unboxed
    Case("unboxed", "Adding them up gives 18 + 24 = 42.\nThe answer is 42.", "42", True),
    Case("unboxed", "She pays 3 * 4 = 12 dollars.\n#### 12", "12", True),
    Case("unboxed", "Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac34", True),
    Case("unboxed", "Combining the cases, we conclude.\n\nTherefore $x \\geq 5$.", r"[5, \infty)", True),
    Case("unboxed", "We simplify the sum.\n\n**Answer:** $9$", "9", True),
    Case("unboxed", "Answer $9$", "9", True),
    Case("unboxed", "The two solutions are $x = 1$ or $x = 2$, so these are all.\nThus $x = 1$ or $x = 2$.", "1, 2", True),
    Case("unboxed", "The area is $\\frac{1}{2} \\cdot 6 \\cdot 4 = 12$.", "12", True),
    Case("unboxed", "So the total cost is $1,250.", "1250", True),
    Case("unboxed", "Hence the probability is $\\frac{1}{12} \\approx 0.083$.", r"\frac{1}{12}", True),
    Case("unboxed", "The answer is 41.", "42", False),
    Case("unboxed", "Therefore $x > 5$.", r"x \geq 5", False),
    Case("unboxed", "I could not finish the computation.", "3", False),
    Case("unboxed", "#### 7", "8", False),
    # --- notation
    Case("notation", B(r"2\frac{1}{2}"), "2.5", True),
    Case("notation", B(r"0.\overline{3}"), r"\frac{1}{3}", True),
    Case("notation", B(r"1.2\overline{45}"), r"\frac{137}{110}", True),
    Case("notation", B(r"\left\langle 1, -2 \right\rangle"), "(1, -2)", True),
    Case("notation", B(r"\varnothing"), r"\emptyset", True),
    Case("notation", B(r"x \in \mathbb{R}"), r"(-\infty, \infty)", True),
    Case("notation", B(r"2\frac{1}{2}"), "1", False),  # a mixed number, not 2 times 1/2
    Case("notation", B(r"0.\overline{3}"), "0.3", False),
    Case("notation", B(r"\langle 1, -2 \rangle"), "(-2, 1)", False),
    # --- basics
    Case("basics", B(r"\frac{1}{2}"), "0.5", True),
    Case("basics", B(r"\dfrac{3}{4}"), "0.75", True),
    Case("basics", B(r"25\%"), "0.25", True),
    Case("basics", B(r"\$18"), "18", True),
    Case("basics", B(r"5 \text{ cm}"), "5", True),
    Case("basics", B(r"\text{(B)}"), "B", True),
    Case("basics", B(r"3\sqrt{2}"), r"\sqrt{18}", True),
    Case("basics", B(r"\frac{\pi}{2}"), r"\pi/2", True),
    Case("basics", B("(x-1)(x+1)"), "x^2-1", True),
    Case("basics", B("[1, 3)"), "[1,3)", True),
    Case("basics", B("(3, -1)"), "(3,-1)", True),
    Case("basics", B(r"90^\circ"), "90", True),
    Case("basics", B("1011_2"), "1011_2", True),
    Case("basics", B("025"), "25", True),  # AIME answers are three digits
    Case("basics", B("3+4i"), "4i+3", True),
    Case("basics", B(r"\text{No}"), "no", True),
    Case("basics", B(r"x \in (-\infty, 1]"), r"(-\infty, 1]", True),
    Case("basics", B(r"-\frac{1}{2}"), "-0.5", True),
    Case("basics", B(r"\frac{a+b}{2}"), r"\frac{b+a}{2}", True),
    Case("basics", B("(3,2)"), "(2,3)", False),
    Case("basics", B("[1, 3)"), "[1, 3]", False),
    Case("basics", B("A"), "B", False),
    Case("basics", B(r"2\sqrt{3}"), r"3\sqrt{2}", False),
    Case("basics", B("18"), "17", False),
    Case("basics", B("x^2+1"), "x^2-1", False),
    Case("basics", B("3+4i"), "3-4i", False),
    Case("basics", B(r"\text{Yes}"), "no", False),
    Case("basics", B(r"(-\infty, 1)"), r"(-\infty, 1]", False),
    # --- written after the grader, graded once without changes (first run: boxed 55/57, any 52/57; see report)
Case("multibox", r"So $\boxed{2} \text{ and } \boxed{3}$.", "2, 3", True),
    Case("multibox", "The smallest is $\\boxed{4}$ and the largest is $\\boxed{9}$.", "4, 9", True),
    Case("multibox", r"So $m = \boxed{3}$ and $n = \boxed{7}$, giving $m+n = \boxed{10}$.", "10", True),
    Case("multibox", r"The choices are $\boxed{\text{(A)}}$ and $\boxed{\text{(C)}}$.", "A, C", True),
    Case("multibox", r"So $\boxed{a=1, b=2}$.", "(1, 2)", True),
    Case("thousands", B("10,000"), "10000", True),
    Case("thousands", B(r"\$ 2{,}500"), "2500", True),
    Case("thousands", B("1,234,567"), "1234567", True),
    Case("thousands", B("12,34"), "1234", False),
    Case("lists", B("-2, 2"), r"\pm 2", True),
    Case("lists", B(r"x \in \{1, 2\}"), "1, 2", True),
    Case("lists", B(r"3 \text{ or } -3"), r"\pm 3", True),
    Case("lists", B("1, 2, 3"), r"\{3, 2, 1\}", True),
    Case("lists", B(r"x=2 \text{ and } y=3"), "(2, 3)", True),
    Case("lists", B("1, 2, 3"), r"\{3, 2, 4\}", False),
    Case("relations", B(r"x \leq -3 \text{ or } x \geq 3"), r"(-\infty, -3] \cup [3, \infty)", True),
    Case("relations", B(r"[3, \infty)"), r"x \geq 3", True),
    Case("relations", B("x < 2"), r"(-\infty, 2)", True),
    Case("relations", B(r"(-\infty, 2]"), "x<2", False),
    Case("relations", B(r"m \geq \frac{1}{2}"), r"[\frac12, +\infty)", True),
    Case("relations", B("k < 4"), r"k \in (-\infty, 4)", True),
    Case("relations", B(r"x \ne 0"), r"x \neq 0", True),
    Case("equations", B("y = -x + 1"), "x + y = 1", True),
    Case("equations", B("y = x^2 - 4x + 3"), "y=(x-1)(x-3)", True),
    Case("equations", B("x + 2y = 5"), "2y + x - 5 = 0", True),
    Case("equations", B(r"\frac{x^2}{4} + \frac{y^2}{3} = 1"), "3x^2 + 4y^2 = 12", True),
    Case("equations", B("y = 3x"), "y = -3x", False),
    Case("equations", B("x^2 + y^2 = 9"), "x^2 + y^2 = 3", False),
    Case("matrices", B(r"\begin{bmatrix} 0 & 1 \\ -1 & 0 \end{bmatrix}"), r"\begin{pmatrix} 0 & 1 \\ -1 & 0 \end{pmatrix}", True),
    Case("matrices", B(r"\begin{pmatrix} 1/2 & 0 \\ 0 & 2 \end{pmatrix}"), r"\begin{pmatrix} \frac12 & 0 \\ 0 & 2 \end{pmatrix}", True),
    Case("matrices", B(r"\begin{pmatrix} 0 & -1 \\ 1 & 0 \end{pmatrix}"), r"\begin{pmatrix} 0 & 1 \\ -1 & 0 \end{pmatrix}", False),
    Case("decimals", B("0.1667"), r"\frac{1}{6}", True),
    Case("decimals", B("0.7071"), r"\frac{\sqrt{2}}{2}", True),
    Case("decimals", B("33.33"), r"\frac{100}{3}", True),
    Case("decimals", B("0.67"), r"\frac23", False),
    Case("decimals", B("1.73"), r"\sqrt3", False),
    Case("unboxed", "Thus, the answer is $\\frac{5}{2}$.", "2.5", True),
    Case("unboxed", "So, Janet makes $18 every day at the farmers' market.\n#### 18", "18", True),
    Case("unboxed", "**Final Answer**\n\\[\n\\frac{7}{3}\n\\]", "7/3", True),
    Case("unboxed", "Therefore, there are 15 ways.", "15", True),
    Case("unboxed", "The answer is (B).", "B", True),
    Case("unboxed", "Hence $a_{10} = 512$.", "512", True),
    Case("unboxed", "So the answer is 3/4.", "0.75", True),
    Case("unboxed", "The answer is \\(\\sqrt{3}\\).", "\\sqrt3", True),
    Case("unboxed", "Thus the minimum value is $-\\frac{1}{4}$, attained at $x = \\frac12$.", "-1/4", True),
    Case("unboxed", "There are $\\binom{5}{2} = 10$ ways to choose.", "10", True),
    Case("unboxed", "I think the answer might be 7, but I'm not sure.", "7", True),
    Case("unboxed", "Therefore, there are 16 ways.", "15", False),
    Case("labelled", B("a = 3, b = 4, c = 5"), "3, 4, 5", True),
    Case("labelled", B("(a, b) = (1, -2)"), "(1,-2)", True),
    Case("labelled", B("x = 2, y = -1"), "(2, -1)", True),
    Case("labelled", B("x = 2, y = -1"), "(-1, 2)", False),
    Case("labelled", B("AB = 5"), "5", True),
    Case("labelled", B("P(x) = x^3 - 2x"), "x^3-2x", True),
    Case("json", B(r"\sqrt2"), r"\\sqrt{2}", True),
    Case("json", B("1/3"), r"\\dfrac{1}{3}", True),
    Case("json", B(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"), r"\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
]


def has_box(response: str) -> bool:
    return "\\boxed" in response or "\\fbox" in response


def expected_for(case: Case, extraction: str) -> bool:
    """The verdict ``score_response`` must give: without a box, ``boxed`` extraction finds no answer (False)."""
    return case.expected if extraction == "any" or has_box(case.response) else False
