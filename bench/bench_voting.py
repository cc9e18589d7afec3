"""Benchmark: TTRL voting + majority rewards for one step (32 prompts x 64 votes = 2,048 responses).

Workload (seeded, fresh constants per prompt and per step): eleven kinds of answers (GSM8K integers with money/units,
thousands separators, fractions, percents, surds, multiples of pi, polynomials, intervals, tuples, unordered solution
lists, multiple choice), each true answer written in several equivalent spellings, wrong answers near the truth, a
per-prompt accuracy between 0.15 and 0.9, ~5% of responses without a box, ~10% with an intermediate box before the final
one, and 20 adversarial answers (exponent towers, ``((10^{9})!)!``, 50,000-character nested braces, ``9^{9^{9}}``,
``\\sin(10^{9^{9}})``, ``(x+1)^{10000}``, malformed LaTeX).

Both sides run the same algorithm (``voting.vote_many``, then one grade per response against its prompt's label) with
the same in-process fast path and per-(answer, label) dedupe; they differ only in where symbolic grading runs:
  pool        a long-lived ``GradingPool`` with ``--workers`` processes (hard deadline per pair, parallel);
  sequential  one process calling ``symbolic_grade`` inline (the one-process baseline; it has no deadline at all).
Steady state, as in training: each side is warmed by the same untimed earlier step (math-verify's parser builds its
caches per process), then ``--repeats`` new steps are timed, sequential and pool on the same workload, in-process
caches cleared before each; the best of each side is reported. Worker start-up is reported separately. A second,
symbolic-only workload (``--symbolic-pairs`` surd / factored-polynomial pairs) shows the worker parallelism alone,
because the fast path settles ~98% of a step's pairs in the caller. Results of both sides must be identical.
Prints a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ttrl_megatron.ttrl import GradingPool, fast_grade, vote_many  # noqa: E402
from ttrl_megatron.ttrl import grading, normalize, numeric  # noqa: E402

try:
    from ttrl_megatron.ttrl import forms  # noqa: E402
except ImportError:  # a checkout from before structured answer forms (to rerun the bench there)
    forms = None
from ttrl_megatron.ttrl.grading import normalized_pair, symbolic_grade, warm_up  # noqa: E402

def _signed(c: int) -> str:
    return f"+{c}" if c >= 0 else str(c)


def _kinds(rng: random.Random) -> list:
    """Per-prompt answer kinds with fresh constants: (equivalent spellings of the truth, wrong answers)."""
    n, big = rng.randint(10, 999), rng.randint(1001, 99_999)
    b_ = rng.randint(3, 12)
    a_ = rng.choice([k for k in range(1, b_) if math.gcd(k, b_) == 1])
    pct, k, m, c = rng.randint(1, 19) * 5, rng.choice([2, 3, 5, 6, 7]), rng.randint(2, 6), rng.randint(2, 9)
    u, v = rng.randint(1, 9), rng.randint(1, 9)
    lo, hi = rng.randint(-5, 3), rng.randint(4, 12)
    letter = rng.choice("ABCDE")
    others = [x for x in "ABCDE" if x != letter]
    return [
        ([str(n), f"{n}.0", rf"\${n}", f"{n} dollars", f"x = {n}", f"{n}.00"], [str(n + 1), str(n - 1), str(2 * n), str(n + 10)]),
        ([str(big), f"{big:,}", f"{big:,}".replace(",", "{,}"), rf"\${big:,}", f"{big} meters"],
         [str(big + 100), str(big * 10), str(big // 10), str(big - 1)]),
        ([rf"\frac{{{a_}}}{{{b_}}}", f"{a_}/{b_}", rf"\dfrac{{{a_}}}{{{b_}}}", rf"\frac{{{2 * a_}}}{{{2 * b_}}}"],
         [rf"\frac{{{b_}}}{{{a_}}}", rf"\frac{{{a_ + 1}}}{{{b_}}}", rf"\frac{{{a_}}}{{{b_ + 1}}}"]),
        ([rf"{pct}\%", str(pct / 100), rf"\frac{{{pct}}}{{100}}", str(pct), f"{pct} percent"],
         [rf"{pct + 5}\%", str(pct / 10), str(pct + 5)]),
        ([rf"\frac{{\sqrt{{{k}}}}}{{{m}}}", rf"\frac{{\sqrt{k}}}{{{m}}}", rf"\sqrt{{{k}}}/{m}", rf"\frac{{1}}{{{m}}}\sqrt{{{k}}}"],
         [rf"\frac{{\sqrt{{{k + 1}}}}}{{{m}}}", rf"\sqrt{{{k}}}", rf"\frac{{{k}}}{{{m}}}", rf"\frac{{\sqrt{{{k}}}}}{{{m + 1}}}"]),
        ([rf"{c}\pi", rf"\pi \cdot {c}", rf"{c} \pi", rf"\frac{{{2 * c}\pi}}{{2}}"],
         [rf"{c + 1}\pi", rf"\frac{{{c}\pi}}{{2}}", str(c), f"{3.14 * c:.2f}"]),
        ([f"x^2{_signed(v - u)}x{_signed(-u * v)}", f"(x-{u})(x+{v})", f"(x+{v})(x-{u})", f"x^{{2}}{_signed(v - u)}x{_signed(-u * v)}"],
         [f"x^2{_signed(u - v)}x{_signed(-u * v)}", f"(x-{u})^2", f"x^2{_signed(-u * v)}"]),
        ([f"[{lo}, {hi})", f"[{lo},{hi})", rf"\left[{lo}, {hi}\right)"], [f"[{lo},{hi}]", f"({lo},{hi})", f"[{lo}, {hi + 1})"]),
        ([f"({u}, -{v})", f"({u},-{v})", rf"\left({u}, -{v}\right)"], [f"(-{v}, {u})", f"({u}, {v})", f"({v}, -{u})"]),
        ([f"{u}, {u + v}", f"{u + v}, {u}", rf"\{{{u}, {u + v}\}}"], [f"{u}, {u + v + 1}", str(u), f"{u}, {u + v}, {v + 20}"]),
        ([f"({letter})", letter, rf"\text{{({letter})}}", rf"\textbf{{{letter}}}"],
         [others[0], others[1], f"({others[2]})", rf"\text{{({others[0]})}}"]),
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
        kinds = _kinds(rng)
        forms, wrong = kinds[p % len(kinds)]
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
    """Every in-process cache of the grader (the ones a checkout has), so each timed step starts cold."""
    fns = [normalize.normalize_answer, normalize.parse_number, normalize.is_dangerous, numeric.evaluate, grading._fast]
    fns += [getattr(grading, "_scalar", None), getattr(forms, "answer_form", None) if forms else None]
    for fn in fns:
        if fn is not None:
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


def timed(fn):
    clear_caches()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--votes", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--symbolic-pairs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=4, help="timed steps per side, each on a fresh workload")
    args = ap.parse_args()
    warm_prompts, _ = make_workload(args.prompts, args.votes, args.seed + 10_000)

    # Steady state, as in training: one long-lived grader per side, warmed by the same untimed earlier step.
    t0 = time.perf_counter()
    warm_up()
    seq = SequentialGrader()
    step(warm_prompts, seq)
    seq_warmup_s = time.perf_counter() - t0
    pool = GradingPool(num_workers=args.workers, timeout_s=5.0)
    t0 = time.perf_counter()
    pool.warmup()
    pool_startup_s = time.perf_counter() - t0
    step(warm_prompts, pool)
    pool_warmup_s = time.perf_counter() - t0

    runs = []
    with pool:
        for r in range(args.repeats):  # each repeat: a new step (new answers), both sides, alternating order
            prompts, truths = make_workload(args.prompts, args.votes, args.seed + r)
            sym = symbolic_pairs(args.symbolic_pairs, args.seed + r)
            jobs0 = pool.stats["jobs"]
            order = (seq, pool) if r % 2 == 0 else (pool, seq)  # alternate who goes first
            out = {id(g): timed(lambda g=g: step(prompts, g)) for g in order}
            (seq_out, seq_s), (pool_out, pool_s) = out[id(seq)], out[id(pool)]
            pool_jobs = pool.stats["jobs"] - jobs0
            out = {id(g): timed(lambda g=g: g.grade_pairs(sym)) for g in order}
            (seq_sym, seq_sym_s), (pool_sym, pool_sym_s) = out[id(seq)], out[id(pool)]
            same = ([(v.label, v.ratio) for v in seq_out[0]] == [(v.label, v.ratio) for v in pool_out[0]]
                    and seq_out[1] == pool_out[1] and seq_sym == pool_sym)
            label_ok = sum(bool(v.label is not None and pool.grade_pairs([(v.label, t)])[0])
                           for v, t in zip(pool_out[0], truths))
            runs.append(dict(seq_s=seq_s, pool_s=pool_s, seq_sym_s=seq_sym_s, pool_sym_s=pool_sym_s, same=same,
                             label_ok=label_ok, pool_jobs=pool_jobs, sym_pairs=len(sym)))
            print(f"step {r}: pool {pool_s:.3f} s / sequential {seq_s:.3f} s ({pool_jobs} symbolic jobs, labels = "
                  f"truth {label_ok}/{len(prompts)}); {len(sym)} symbolic-only pairs: pool {pool_sym_s:.3f} s / "
                  f"sequential {seq_sym_s:.3f} s; identical={same}")
        stats = dict(pool.stats)

    best = {k: min(r[k] for r in runs) for k in ("seq_s", "pool_s", "seq_sym_s", "pool_sym_s")}
    n_resp = args.prompts * args.votes
    print(f"{n_resp} responses per step; pool start-up {pool_startup_s:.2f} s (+ warm-up step {pool_warmup_s - pool_startup_s:.2f} s), "
          f"sequential warm-up {seq_warmup_s:.2f} s; timeouts {stats['timeouts']}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    result = {
        "bench": "voting", "prompts": args.prompts, "votes_per_prompt": args.votes, "responses": n_resp,
        "workers": args.workers, "cpus": os.cpu_count(), "repeats": args.repeats,
        "pool_s": round(best["pool_s"], 4), "sequential_s": round(best["seq_s"], 4),
        "speedup": round(best["seq_s"] / best["pool_s"], 2),
        "symbolic_jobs_per_step": [r["pool_jobs"] for r in runs],
        "symbolic_pairs": runs[0]["sym_pairs"], "symbolic_pool_s": round(best["pool_sym_s"], 4),
        "symbolic_sequential_s": round(best["seq_sym_s"], 4),
        "symbolic_speedup": round(best["seq_sym_s"] / best["pool_sym_s"], 2),
        "pool_startup_s": round(pool_startup_s, 3), "timeouts": stats["timeouts"],
        "label_equals_truth": [r["label_ok"] for r in runs], "identical_results": all(r["same"] for r in runs),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
