"""The demo's arithmetic task: sizes, a disjoint seeded split, exact answers, recipe-style label noise, the writer."""

import random

import pytest

from ttrl_megatron.config import DataConfig
from ttrl_megatron.data import PromptDataset, load_records
from ttrl_megatron.data import arithmetic as A


@pytest.mark.parametrize("task, size", [("add2", 8100), ("add3", 810000), ("sub2", 8100), ("mul21", 720)])
def test_task_sizes(task, size):
    assert A.task_size(task) == size


def test_split_is_disjoint_seeded_and_correct():
    train, test = A.make_split("add2", n_test=300, seed=0)
    assert len(test) == 300 and len(train) == 7800
    assert not {e.question for e in train} & {e.question for e in test}
    assert A.make_split("add2", n_test=300, seed=0) == (train, test)
    assert A.make_split("add2", n_test=300, seed=1)[1] != test
    for ex in test[:50]:
        a, b = ex.question[:-1].split("+")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99 and ex.answer == int(a) + int(b) == A.solve(ex.question)


@pytest.mark.parametrize("task", ["add3", "sub2", "mul21"])
def test_other_tasks_answer_their_questions(task):
    train, test = A.make_split(task, n_test=20, n_train=30, seed=2)
    assert len(train) == 30 and all(A.solve(e.question) == e.answer for e in train + test)
    assert any(e.answer < 0 for e in A.make_split("sub2", n_test=200, seed=0)[1])


def test_split_too_large_is_refused():
    with pytest.raises(ValueError, match="720 questions"):
        A.make_split("mul21", n_test=700, n_train=100)
    with pytest.raises(ValueError, match="unknown arithmetic task"):
        A.make_split("div2")


def test_noise_rate_and_leading_digit():
    rng = random.Random(0)
    assert A.noisy_answer(173, 0.0, rng) == "173"
    always = [A.noisy_answer(173, 1.0, rng) for _ in range(200)]
    assert all(len(s) == 3 and s[0] != "0" for s in always) and len(set(always)) > 50
    assert A.noisy_answer(-42, 1.0, rng).startswith("-")
    changed = total = 0
    for _ in range(3000):
        noisy = A.noisy_answer(123, 0.2, rng)
        changed += sum(x != y for x, y in zip(noisy, "123"))
        total += 3
    assert 0.16 < changed / total < 0.20  # 0.2 x P(new digit differs) = 0.2 x (8/9 or 9/10)


def test_writer_outputs_verl_rows(tmp_path, char_tokenizer):
    paths = A.write_arithmetic_dataset(tmp_path, n_test=40, n_train=500, noise_prob=0.2, fmt="parquet")
    train, test = load_records([paths["train"]]), load_records([paths["test"]])
    assert len(train) == 500 and len(test) == 40 and test[0].data_source == "arith_add2"
    assert all(r.extra_info["sft_target"] == A.boxed(r.ground_truth) for r in test)  # test labels are clean
    noisy = sum(r.extra_info["sft_target"] != A.boxed(r.ground_truth) for r in train)
    assert 0.2 * 500 < noisy < 0.6 * 500  # ~1 - 0.82^3 of 3-digit answers (fewer for 2-digit ones)
    assert all(r.ground_truth == str(A.solve(r.prompt[0]["content"])) for r in train)
    ds = PromptDataset([paths["test"]], char_tokenizer, DataConfig(max_prompt_length=8))
    assert len(ds) == 40 and len(ds[0]["raw_prompt_ids"]) == 7  # BOS + "ab+cd="
    jsonl = A.write_arithmetic_dataset(tmp_path / "j", n_test=5, n_train=5, fmt="jsonl")
    assert jsonl["test"].suffix == ".jsonl" and len(load_records([jsonl["test"]])) == 5
