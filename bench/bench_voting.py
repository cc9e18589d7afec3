"""Benchmark: TTRL voting + majority rewards for one step (32 prompts x 64 votes = 2,048 responses).

Workload (seeded): ten kinds of answers (GSM8K integers with money/units/thousands, fractions, percents, surds,
multiples of pi, polynomials, intervals, tuples, unordered solution lists, multiple choice), each true answer written in
several equivalent spellings, wrong answers near the truth, a per-prompt accuracy between 0.15 and 0.9, ~5% of responses
without a box, some with an intermediate box before the final one, and 20 adversarial answers (exponent towers,
``((10^{9})!)!``, 50,000-character nested braces, ``9^{9^{9}}``, ``(x+1)^{10000}``, malformed LaTeX).

Both sides run the same algorithm (``voting.vote_many`` + one grade per response against its prompt's label) with the
same in-process fast path and a per-(answer, label) dedupe; they differ only in where the symbolic grading runs:
  pool        ``GradingPool`` with ``--workers`` processes (hard deadline per pair, parallel);
  sequential  one process, ``symbolic_grade`` called inline (the one-process baseline; no deadline possible).
In-process caches are cleared before each timed run; worker start-up (pool) and the same imports + parser warm-up
(``grading.warm_up``, sequential) are measured separately and excluded. Both must produce identical labels, ratios and rewards.
The fast path decides ~99% of this step's pairs in the caller's process, so a second, symbolic-only workload
(``--symbolic-pairs`` distinct surd / factored-polynomial pairs) shows what the worker parallelism itself buys.
Prints a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ttrl_megatron.ttrl import GradingPool, fast_grade, vote_many  # noqa: E402
from ttrl_megatron.ttrl import grading, normalize, numeric  # noqa: E402
from ttrl_megatron.ttrl.grading import normalized_pair, symbolic_grade, warm_up  # noqa: E402

# (equivalent spellings of the truth, wrong answers)
KINDS = [
    (["72", "72.0", r"\$72", "72 dollars", "x = 72", "72.00"], ["71", "73", "144", "36", "70"]),
    (["1200", "1,200", r"1{,}200", r"\$1,200", "1200 meters"], ["1100", "120", "12000", "1,300"]),
    ([r"\frac{1}{2}", "0.5", "1/2", r"\dfrac12", r"\tfrac{1}{2}"], [r"\frac{1}{3}", "0.25", r"\frac{2}{3}", "2"]),
    ([r"25\%", "0.25", r"\frac14", "25", "25 percent"], [r"20\%", "0.2", r"30\%", "75"]),
    ([r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", r"\sqrt{3}/2", r"\frac{1}{2}\sqrt{3}"],
     [r"\frac{\sqrt{2}}{2}", r"\sqrt{3}", r"\frac{1}{2}", r"\frac{\sqrt{3}}{3}"]),
    ([r"2\pi", r"\pi \cdot 2", r"2 \pi", r"\frac{4\pi}{2}"], [r"\pi", r"4\pi", r"\frac{\pi}{2}", "6.28"]),
    (["x^2-1", "(x-1)(x+1)", "x^{2} - 1", "-1+x^2"], ["x^2+1", "(x-1)^2", "x^2-2x+1", "x-1"]),
    (["[1, 3)", "[1,3)", r"\left[1, 3\right)"], ["[1,3]", "(1,3)", "(1, 3]", "[1, 2)"]),
    (["(2, -1)", "(2,-1)", r"\left(2, -1\right)"], ["(-1, 2)", "(2, 1)", "(1, -2)"]),
    (["1, 2", "2, 1", r"\{1, 2\}", r"\{2,1\}"], ["1, 3", "1", "2", "1, 2, 3"]),
    (["(B)", "B", r"\text{(B)}", r"\textbf{B}"], ["A", "C", "(D)", r"\text{(A)}"]),
]
ADVERSARIAL = [
    "2^{2^{2^{2^{2^{2}}}}}", "((10^{9})!)!", "{" * 25_000 + "1" + "}" * 25_000, "9^{9^{9}}", r"\sin(10^{9^{9}})",
    "(x+1)^{10000}", r"\frac{1}{", r"\sqrt{{{", r"10^{10^{10}}", "100000!",
]
FILLER = ("First, we set up the equation from the problem statement. ", "Simplifying both sides gives ",
          "Let me double-check the arithmetic. ", "Substituting back confirms the result. ",
          "We consider the cases separately. ", "Hence the value follows. ")


def make_workload(n_prompts: int, n_votes: int, seed: int) -> tuple[list[list[str]], list[str]]:
    rng = random.Random(seed)
    prompts, truths = [], []
    adversarial_slots = set(rng.sample(range(n_prompts * n_votes), 20))
    for p in range(n_prompts):
        forms, wrong = KINDS[p % len(KINDS)]
        accuracy = rng.uniform(0.15, 0.9)
        responses = []
        for v in range(n_votes):
            body = "".join(rng.choice(FILLER) for _ in range(rng.randint(3, 12)))
            if p * n_votes + v in adversarial_slots:
                ans = rng.choice(ADVERSARIAL)
            elif rng.random() < accuracy:
                ans = rng.choice(forms)
            else:
                ans = rng.choice(wrong)
            if rng.random() < 0.05:
                responses.append(body + "I could not finish the computation.")
                continue
            prefix = rf"An intermediate value is $\boxed{{{rng.choice(wrong)}}}$. " if rng.random() < 0.1 else ""
            responses.append(prefix + body + rf"Therefore, the final answer is $\boxed{{{ans}}}$.")
        prompts.append(responses)
        truths.append(forms[0])
    return prompts, truths


class SequentialGrader:
    """The one-process baseline: fast path, dedupe by normalized pair, then ``symbolic_grade`` inline."""

    def __init__(self):
        self.cache: dict[tuple[str, str], bool] = {}
        self.jobs = 0

    def grade_pairs(self, pairs, timeout_s=None):
        out = []
        for given, truth in pairs:
            verdict = fast_grade(given, truth)
            if verdict is None:
                key = normalized_pair(given, truth)
                if key not in self.cache:
                    self.jobs += 1
                    self.cache[key] = symbolic_grade(*key)
                verdict = self.cache[key]
            out.append(verdict)
        return out


def clear_caches() -> None:
    for fn in (normalize.normalize_answer, normalize.parse_number, normalize.is_dangerous, numeric.evaluate,
               grading._fast):
        fn.cache_clear()
    grading._PARSE_CACHE.clear()


def step(prompts: list[list[str]], grader) -> tuple[list, list[list[bool]]]:
    """One TTRL step's grading: vote every prompt, then grade every response against its prompt's label."""
    votes = vote_many(prompts, grader)
    pairs = [(v.answers[i], v.label) for v in votes for i in range(len(v.answers))]
    gradable = [k for k, (a, label) in enumerate(pairs) if a is not None and label is not None]
    verdicts = dict(zip(gradable, grader.grade_pairs([pairs[k] for k in gradable])))
    flat = [verdicts.get(k, False) for k in range(len(pairs))]
    n = len(prompts[0])
    return votes, [flat[i:i + n] for i in range(0, len(flat), n)]


def symbolic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Distinct equivalent pairs that only the symbolic grader can confirm (surds, factored polynomials)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        out.append((rf"{a}\sqrt{{{b * b * c}}}", rf"{a * b}\sqrt{{{c}}}"))
        out.append((f"(x+{a})(x-{b})", f"x^2+{a - b}x-{a * b}"))
    return list(dict.fromkeys(out))[:n]


def run_sequential(prompts, sym) -> dict:
    clear_caches()
    seq = SequentialGrader()
    t0 = time.perf_counter()
    votes, rewards = step(prompts, seq)
    step_s = time.perf_counter() - t0
    clear_caches()
    t0 = time.perf_counter()
    sym_verdicts = SequentialGrader().grade_pairs(sym)
    return dict(step_s=step_s, sym_s=time.perf_counter() - t0, votes=votes, rewards=rewards, sym=sym_verdicts,
                jobs=seq.jobs)


def run_pool(prompts, sym, workers: int) -> dict:
    with GradingPool(num_workers=workers, timeout_s=5.0) as pool:  # a fresh pool: cold parse caches, like the baseline
        t0 = time.perf_counter()
        pool.warmup()
        startup_s = time.perf_counter() - t0
        clear_caches()
        t0 = time.perf_counter()
        votes, rewards = step(prompts, pool)
        step_s = time.perf_counter() - t0
        stats = dict(pool.stats)
        clear_caches()
        t0 = time.perf_counter()
        sym_verdicts = pool.grade_pairs(sym)
        sym_s = time.perf_counter() - t0
    return dict(step_s=step_s, sym_s=sym_s, votes=votes, rewards=rewards, sym=sym_verdicts, stats=stats,
                startup_s=startup_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--votes", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--symbolic-pairs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per side; the best is reported")
    args = ap.parse_args()
    prompts, truths = make_workload(args.prompts, args.votes, args.seed)
    sym = symbolic_pairs(args.symbolic_pairs, args.seed)

    t0 = time.perf_counter()
    warm_up()  # the sequential side's one-time imports and parser warm-up, exactly what each pool worker does
    seq_warmup_s = time.perf_counter() - t0
    seq_runs, pool_runs = [], []
    for _ in range(args.repeats):
        seq_runs.append(run_sequential(prompts, sym))
        pool_runs.append(run_pool(prompts, sym, args.workers))
    ref = seq_runs[0]
    identical = all([(v.label, v.ratio) for v in r["votes"]] == [(v.label, v.ratio) for v in ref["votes"]]
                    and r["rewards"] == ref["rewards"] and r["sym"] == ref["sym"] for r in seq_runs + pool_runs)
    best = {name: min(r[key] for r in runs) for name, runs in (("seq", seq_runs), ("pool", pool_runs))
            for key in ("step_s",)}
    sym_best = {name: min(r["sym_s"] for r in runs) for name, runs in (("seq", seq_runs), ("pool", pool_runs))}
    stats = pool_runs[0]["stats"]
    label_ok = sum(bool(v.label is not None and (fast_grade(v.label, t) if fast_grade(v.label, t) is not None
                                                 else symbolic_grade(*normalized_pair(v.label, t))))
                   for v, t in zip(ref["votes"], truths))
    n_resp = sum(len(p) for p in prompts)
    for i, (sr, pr) in enumerate(zip(seq_runs, pool_runs)):
        print(f"run {i}: step pool {pr['step_s']:.3f} s / sequential {sr['step_s']:.3f} s; symbolic-only "
              f"pool {pr['sym_s']:.3f} s / sequential {sr['sym_s']:.3f} s; pool start-up {pr['startup_s']:.2f} s")
    print(f"{n_resp} responses, symbolic jobs {stats['jobs']} (sequential {ref['jobs']}), fast verdicts "
          f"{stats['fast']}, labels equal to truth {label_ok}/{len(prompts)}, identical={identical}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    result = {
        "bench": "voting", "prompts": args.prompts, "votes_per_prompt": args.votes, "responses": n_resp,
        "workers": args.workers, "cpus": os.cpu_count(), "repeats": args.repeats,
        "pool_s": round(best["pool"], 4), "sequential_s": round(best["seq"], 4),
        "speedup": round(best["seq"] / best["pool"], 2),
        "pool_startup_s": round(min(r["startup_s"] for r in pool_runs), 3), "sequential_warmup_s": round(seq_warmup_s, 3),
        "symbolic_jobs": stats["jobs"], "timeouts": stats["timeouts"], "fast_verdicts": stats["fast"],
        "label_equals_truth": label_ok, "identical_results": identical,
        "symbolic_pairs": len(sym), "symbolic_pool_s": round(sym_best["pool"], 4),
        "symbolic_sequential_s": round(sym_best["seq"], 4),
        "symbolic_speedup": round(sym_best["seq"] / sym_best["pool"], 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
