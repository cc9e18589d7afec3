"""Answer-equivalence table in the style of MATH (LaTeX) and GSM8K (plain numbers, units, money) final answers.

Each row: (given, ground_truth, expected). Rows marked by their section; expectations follow MATH grading
conventions (tuples/intervals ordered with matching brackets, sets and solution lists unordered, units and
`\\text{}` ignored, percent = value or value/100) plus the forms users expect to match (0.5 = 1/2 = \\frac12, x=3 = 3).
"""

MATH_EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"), (r"\frac12", "1/2"), (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\tfrac{3}{4}", "0.75"),
    ("x=3", "3"), ("x = 3", "3"), ("3", "x=3"), ("y = 2x + 3", "2x+3"), (r"\left( 1, 2 \right)", "(1,2)"),
    ("[1, 2)", "[1,2)"), (r"(-\infty, 3]", r"(-\infty,3]"), (r"\{1,2\}", r"\{2,1\}"), ("1, 2", "2, 1"),
    ("1,2,3", "3,2,1"), (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"), (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"3\sqrt{2}", r"\sqrt{18}"), (r"2\sqrt{3}", r"\sqrt{12}"), (r"2\pi", r"\pi \cdot 2"), (r"\frac{\pi}{2}", r"\pi/2"),
    (r"90^\circ", "90"), (r"90^{\circ}", "90"), (r"5\text{ cm}", "5"), (r"5 \text{cm}", "5"), (r"10\mbox{ inches}", "10"),
    (r"\text{(A)}", "A"), ("(B)", "B"), (r"\textbf{(C)}", "C"), (r"25\%", "25"), (r"25\%", "0.25"), ("25%", r"\frac{1}{4}"),
    ("-0.5", r"-\frac{1}{2}"), (r"-\frac{1}{2}", r"\frac{-1}{2}"), (r"\frac{-1}{2}", "-1/2"), ("2^{10}", "1024"),
    ("2^{2^{2}}", "16"), ("5!", "120"), (r"\binom{5}{2}", "10"), ("x^2+2x+1", "(x+1)^2"), ("x^2-1", "(x-1)(x+1)"),
    ("2x+3", "3+2x"), (r"\frac{x}{2}", "0.5x"), (r"\infty", r"\infty"), (r"\text{Monday}", "Monday"),
    (r"\text{yes}", "Yes"), ("1.5", r"\frac{3}{2}"), (r"\frac{10}{4}", r"\frac{5}{2}"), ("0.1", r"\frac{1}{10}"),
    ("1e3", "1000"), ("1000000", "10^6"), (r"1.5\times 10^{3}", "1500"), (r"\sqrt{16}", "4"), (r"\sqrt[3]{27}", "3"),
    (r"\sqrt{8}", r"2\sqrt{2}"), (r"\frac{2}{\sqrt{3}}", r"\frac{2\sqrt{3}}{3}"), ("4", "4.0"), (r"\pm2", r"\pm 2"),
    ("(3, -1)", "(3,-1)"), ("(0.5, 2)", r"(\frac{1}{2}, 2)"), (r"\{-1, 1\}", r"\{1, -1\}"),
    (r"\frac{1}{2}\pi", r"\frac{\pi}{2}"), ("12", "12.0"), ("0", "-0"), (r"\frac{0}{5}", "0"), (r"6\%", "0.06"),
    (r"\boxed{7}", "7"), ("$7$", "7"), (r"\(7\)", "7"), ("7.", "7"), ("x=-2", "-2"), ("k = 5", "5"), ("a+b", "b+a"),
    ("ab", "ba"), (r"\frac{a}{b}", "a/b"), ("a^2b", "ba^2"), (r"\sin^2 x + \cos^2 x", "1"), ("(1,2,3)", "(1,2,3)"),
    ("[2, 5]", "[2,5]"), (r"\frac{1+\sqrt{5}}{2}", r"\frac{\sqrt{5}+1}{2}"), (r"2+\sqrt{3}", r"\sqrt{3}+2"),
    (r"\frac{9}{4}\pi", r"\frac{9\pi}{4}"), (r"36\pi", r"36 \pi"), ("x^2", "x^{2}"), (r"-\frac{3}{2}", "-1.5"),
    ("1/3", "2/6"), ("10^{-3}", "0.001"), (r"\frac{1}{1000}", "0.001"), ("2^{-1}", "0.5"), (r"(1, \infty)", r"(1,\infty)"),
    (r"\frac{1}{2}, \frac{1}{3}", r"\frac{1}{3}, \frac{1}{2}"), (r"\frac{5}{2}", "2.5"), (r"10\%", r"\frac{1}{10}"),
    (r"\left[ 0, \frac{1}{2} \right]", r"[0, 0.5]"), (r"\frac{3\sqrt{3}}{4}", r"\frac{3}{4}\sqrt{3}"),
    (r"\dfrac{\sqrt{6}}{3}", r"\frac{\sqrt6}{3}"), (r"(2,\ 3)", "(2,3)"), (r"\frac{1}{6}", r"\frac{2}{12}"),
    # a decimal that rounds the exact value to its last digit and within 1e-4 relative (grading.decimal_rounds);
    # "0.333" vs 1/3 and "3.14" vs pi below stay different (1e-3 relative)
    (r"\pi", "3.14159"), (r"\frac{3}{7}", "0.428571"), (r"\sqrt{2}", "1.41421356"),
]

MATH_DIFFERENT = [
    ("(1,2)", "(2,1)"), ("[1,2)", "[1,2]"), (r"(-\infty, 3)", r"(-\infty,3]"), ("1,2", "1,2,3"),
    (r"2\sqrt{3}", r"3\sqrt{2}"), ("A", "B"), (r"50\%", r"25\%"), ("0.333", r"\frac{1}{3}"),
    ("2x+3", "2x+4"), (r"-\infty", r"\infty"), (r"\text{no}", "yes"), ("4", "-4"), ("(3, -1)", "(-1, 3)"),
    ("12", "12.5"), (r"\frac{3}{7}", r"\frac{4}{7}"), ("-3", "3"), ("0.5", "5"),
    ("50", "5"), ("(1,2,3)", "(1,3,2)"), ("(2, 5]", "[2, 5]"), (r"\frac{1+\sqrt{5}}{2}", r"\frac{1-\sqrt{5}}{2}"),
    (r"36\pi", r"37\pi"), (r"\text{even}", r"\text{odd}"), ("x^3", "x^2"), (r"\frac{-3}{2}", "1.5"), ("3.14", r"\pi"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{2}}{2}"), (r"[0, \infty)", r"(0, \infty)"),
    ("x+1", "x-1"), (r"\frac{x+1}{2}", r"\frac{x-1}{2}"), ("(1,2)", "[1,2]"), (r"\{1,2\}", r"\{1,3\}"),
    ("1, 2", "1, 3"), ("3", "(3,4)"), (r"\frac{1}{2}", r"\frac{1}{3}"), ("2^{10}", "1000"), ("6!", "120"),
    ("a+b", "a-b"), ("xy", "x+y"), (r"\sqrt{3}", "3"), ("", "3"), ("3", ""), (r"\text{(A)}", "B"),
]

GSM8K_EQUIVALENT = [
    ("72", "72"), ("1,200", "1200"), (r"\$ 20", "20"), ("20 dollars", "20.00"), ("5 hours", "5"),
    ("0.75", r"75\%"), ("75", r"75\%"), ("2,500,000", "2500000"), ("12.50", "12.5"), ("42 minutes", "42"),
    (r"\$0.50", "0.5"), ("100", "100.0"), (r"8 \text{ miles}", "8"), (r"\text{9 eggs}", "9"), ("1/4", "0.25"),
    (r"\$1,000", "1000"), (r"\$5.00", "5"), ("5.00", "5"), (".5", "0.5"), ("18 dollars", "18"), ("3 hours", "3"),
    ("7 cm^2", "7"), (r"\$18", "18"), ("1,000", "1000"), (r"1{,}000", "1000"), (r"1\,000", "1000"),
    ("$1,234.50", "1234.5"), ("60 mph", "60"), ("3 square feet", "3"), ("The answer is 15", "The answer is 15"),
]

GSM8K_DIFFERENT = [
    ("18", "17"), ("-5", "5"), ("1600", "16000"), ("3,000", "300"), ("50 cents", "0.5"), (r"\frac{1}{4}", "25"),
    ("12.5", "125"), ("99", "100"), ("0.2", "2"), ("1,500", "15"), (r"\$20", "21"), ("4 hours", "5"),
]

ALL_PAIRS = ([(g, t, True) for g, t in MATH_EQUIVALENT + GSM8K_EQUIVALENT]
             + [(g, t, False) for g, t in MATH_DIFFERENT + GSM8K_DIFFERENT])
