"""Benchmark: grading fidelity on the project's case table, against math-verify on the same pairs.

Cases: ``tests/unit/ttrl/grading_cases.py`` (whole responses and labels as policies and datasets write them, with the
right verdict; kinds: multi-box answers, thousands separators, answer lists, labelled answers, JSON-escaped labels,
relations, equations, matrices, rounded decimals, plus-minus, unboxed conclusions, basics; negatives in every kind).

Sides, all on the same (response, label) pairs:
  ours/boxed    ``score_response(response, label, extraction="boxed")`` semantics (batch ``score_responses`` on a
                warmed ``GradingPool``; a response without a box has no answer, so its expected verdict is False)
  ours/any      the same with ``extraction="any"``
  math-verify   ``verify(parse(label), parse(response))`` with math-verify's defaults (the baseline the issue names)
  math-verify/boxed-label   ``verify(parse("\\boxed{" + label + "}"), parse(response))``, how verl's math_verify
                reward calls it (a bare label such as ``1, 2`` otherwise parses to its last number)
Agreement = share of pairs whose verdict equals the expected one; reported on the pairs whose response has a box
(the issue's "boxed predictions") and on all pairs (ours with ``any``). Latency per pair: each pair graded on its own,
in-process caches cleared first (ours: fast path, then a worker job when undecided; math-verify: parse + verify in
this process). Prints a per-kind table and the pairs each side gets wrong; last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from tests.unit.ttrl.grading_cases import CASES, KINDS, expected_for, has_box  # noqa: E402
from ttrl_megatron.ttrl import GradingPool, forms, grading, normalize, numeric  # noqa: E402
from ttrl_megatron.ttrl.score import score_responses  # noqa: E402


def clear_caches() -> None:
    for fn in (normalize.normalize_answer, normalize.parse_number, normalize.is_dangerous, numeric.evaluate,
               grading._fast, grading._scalar, forms.answer_form):
        fn.cache_clear()


def ours(pool: GradingPool, extraction: str, timeout_s: float) -> tuple[list[bool], list[float], list]:
    """Verdict and seconds per pair, each pair graded alone (cold in-process caches, empty pool cache)."""
    verdicts, seconds, answers = [], [], []
    pool._cache.clear()
    clear_caches()
    for case in CASES:
        t0 = time.perf_counter()
        (answer,), (ok,) = score_responses([case.response], [case.label], pool, timeout_s, extraction)
        seconds.append(time.perf_counter() - t0)
        verdicts.append(ok)
        answers.append(answer)
    return verdicts, seconds, answers


def math_verify(boxed_label: bool) -> tuple[list[bool], list[float]]:
    from math_verify import parse, verify

    verdicts, seconds = [], []
    for case in CASES:
        label = "\\boxed{" + case.label + "}" if boxed_label else case.label
        t0 = time.perf_counter()
        try:
            ok = bool(verify(parse(label), parse(case.response)))
        except Exception:
            ok = False
        seconds.append(time.perf_counter() - t0)
        verdicts.append(ok)
    return verdicts, seconds


def agreement(verdicts: list[bool], expected: list[bool], rows: list[int]) -> float:
    return sum(verdicts[i] == expected[i] for i in rows) / max(1, len(rows))


def latency(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
            "mean_ms": round(statistics.fmean(ms), 3), "max_ms": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0, help="per-pair deadline of our grader (s)")
    ap.add_argument("--show-wrong", action="store_true", help="list every pair a side gets wrong")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # math-verify warns about every disabled timeout / parse failure

    boxed_rows = [i for i, c in enumerate(CASES) if has_box(c.response)]
    all_rows = list(range(len(CASES)))
    with GradingPool(num_workers=args.workers, timeout_s=args.timeout) as pool:
        pool.warmup()
        ours(pool, "boxed", args.timeout)  # untimed pass: math-verify's parser builds its caches per worker process
        sides = {}
        for extraction in ("boxed", "any"):
            verdicts, seconds, answers = ours(pool, extraction, args.timeout)
            sides[f"ours/{extraction}"] = (verdicts, seconds, [expected_for(c, extraction) for c in CASES], answers)
        timeouts = pool.stats["timeouts"]
    math_verify(False)  # untimed pass (parser caches), as for ours
    truth = [c.expected for c in CASES]
    for name, boxed_label in (("math-verify", False), ("math-verify/boxed-label", True)):
        verdicts, seconds = math_verify(boxed_label)
        sides[name] = (verdicts, seconds, truth, [None] * len(CASES))

    print(f"{len(CASES)} pairs ({len(boxed_rows)} with a boxed response) in {len(KINDS)} kinds; "
          f"agreement with the expected verdict per kind:")
    names = list(sides)
    print(f"{'kind':<11} {'pairs':>5}  " + "  ".join(f"{n:>23}" for n in names))
    by_kind = defaultdict(list)
    for i, c in enumerate(CASES):
        by_kind[c.kind].append(i)
    per_kind = {}
    for kind, rows in by_kind.items():
        cells = {n: agreement(sides[n][0], sides[n][2], rows) for n in names}
        per_kind[kind] = {n: round(v, 3) for n, v in cells.items()}
        print(f"{kind:<11} {len(rows):>5}  " + "  ".join(f"{cells[n]:>23.3f}" for n in names))
    for n in names:
        verdicts, seconds, expected, answers = sides[n]
        wrong = [i for i in all_rows if verdicts[i] != expected[i]]
        print(f"{n}: {len(wrong)} wrong; latency per pair {latency(seconds)}")
        if args.show_wrong:
            for i in wrong:
                c = CASES[i]
                print(f"    [{c.kind}] expected {expected[i]}: {c.response[-70:]!r} vs {c.label!r}"
                      + (f" (answer {answers[i]!r})" if answers[i] is not None else ""))

    result = {
        "bench": "grading_fidelity", "pairs": len(CASES), "boxed_pairs": len(boxed_rows),
        "boxed_agreement": {n: round(agreement(sides[n][0], sides[n][2], boxed_rows), 4)
                            for n in ("ours/boxed", "math-verify", "math-verify/boxed-label")},
        "all_agreement": {n: round(agreement(sides[n][0], sides[n][2], all_rows), 4)
                          for n in ("ours/any", "math-verify", "math-verify/boxed-label")},
        "latency": {n: latency(sides[n][1]) for n in names},
        "per_kind": per_kind, "timeouts": timeouts, "workers": args.workers, "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
