"""The synthetic arithmetic task of the CPU demo (ttrl-demo-recipe.md): seeded questions, held-out split, noisy SFT
labels, and a writer to verl-format parquet/jsonl. Stdlib only (+ records.py for writing).

Tasks (question text -> answer): add2 "ab+cd=" (a, b in 10..99; 8,100 questions), add3 (100..999), sub2 "ab-cd="
(10..99; answers may be negative), mul21 "ab*c=" (a in 10..99, c in 2..9; 720 questions). Answers are written
`\\boxed{N}`. The split is a seeded permutation of the whole question space: the first n_test questions are TEST,
the next n_train (default: all the rest) TRAIN, so the two are disjoint by construction.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .records import write_rows

# name: (range of a, range of b, operator)
TASKS = {
    "add2": (range(10, 100), range(10, 100), "+"),
    "add3": (range(100, 1000), range(100, 1000), "+"),
    "sub2": (range(10, 100), range(10, 100), "-"),
    "mul21": (range(10, 100), range(2, 10), "*"),
}
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Example:
    question: str  # e.g. "12+34="
    answer: int  # e.g. 46


def boxed(answer: Union[int, str]) -> str:
    """The answer format of the task: \\boxed{N}."""
    return "\\boxed{" + str(answer) + "}"


def solve(question: str) -> int:
    """The exact answer of a task question ("ab+cd=" etc.)."""
    body = question.rstrip("=")
    for op in ("+", "*", "-"):
        if op in body[1:]:
            a, b = body.split(op, 1) if op != "-" else body.rsplit(op, 1)
            return _OPS[op](int(a), int(b))
    raise ValueError(f"not an arithmetic question: {question!r}")


def _example(task: str, k: int) -> Example:
    ra, rb, op = TASKS[task]
    a, b = ra[k // len(rb)], rb[k % len(rb)]
    return Example(f"{a}{op}{b}=", _OPS[op](a, b))


def task_size(task: str) -> int:
    if task not in TASKS:
        raise ValueError(f"unknown arithmetic task {task!r}; use one of {', '.join(TASKS)}")
    ra, rb, _ = TASKS[task]
    return len(ra) * len(rb)


def make_split(task: str = "add2", n_test: int = 300, n_train: Optional[int] = None,
               seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, test): disjoint, seeded. n_train=None takes every question not in test."""
    total = task_size(task)
    n_train = total - n_test if n_train is None else n_train
    if n_test < 1 or n_train < 0 or n_test + n_train > total:
        raise ValueError(f"task {task} has {total} questions; n_test={n_test} + n_train={n_train} does not fit")
    order = random.Random(seed).sample(range(total), n_test + n_train)
    examples = [_example(task, k) for k in order]
    return examples[n_test:], examples[:n_test]


def noisy_answer(answer: int, prob: float, rng: random.Random) -> str:
    """The answer's digits, each replaced by a uniform random digit with probability `prob` (a multi-digit
    answer's leading digit is drawn from 1..9, so the length is kept). The sign is kept. Recipe: prob 0.2."""
    sign, digits = ("-", str(-answer)) if answer < 0 else ("", str(answer))
    out = []
    for i, d in enumerate(digits):
        if rng.random() < prob:
            d = rng.choice("123456789" if i == 0 and len(digits) > 1 else "0123456789")
        out.append(d)
    return sign + "".join(out)


def to_rows(examples: list[Example], task: str, split: str, noise_prob: float = 0.0, seed: int = 0) -> list[dict]:
    """verl-format rows. `extra_info.sft_target` is the SFT label (`\\boxed{N}`, digit noise applied with
    `noise_prob`); `reward_model.ground_truth` is always the exact answer."""
    rng = random.Random(seed)
    rows = []
    for i, ex in enumerate(examples):
        target = boxed(noisy_answer(ex.answer, noise_prob, rng) if noise_prob > 0 else ex.answer)
        rows.append({"data_source": f"arith_{task}", "prompt": [{"role": "user", "content": ex.question}],
                     "ability": "arithmetic", "reward_model": {"ground_truth": str(ex.answer), "style": "rule"},
                     "extra_info": {"index": i, "split": split, "answer": boxed(ex.answer), "sft_target": target}})
    return rows


def write_arithmetic_dataset(out_dir: Union[str, Path], task: str = "add2", n_test: int = 300,
                             n_train: Optional[int] = None, seed: int = 0, noise_prob: float = 0.2,
                             fmt: str = "parquet") -> dict[str, Path]:
    """Write <out_dir>/train.<fmt> (SFT targets with digit noise) and <out_dir>/test.<fmt> (clean; TTRL trains on
    these questions without their labels). Returns {"train": path, "test": path}."""
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"fmt={fmt!r}: use parquet or jsonl")
    train, test = make_split(task, n_test, n_train, seed)
    out = Path(out_dir)
    return {"train": write_rows(to_rows(train, task, "train", noise_prob, seed), out / f"train.{fmt}"),
            "test": write_rows(to_rows(test, task, "test"), out / f"test.{fmt}")}
