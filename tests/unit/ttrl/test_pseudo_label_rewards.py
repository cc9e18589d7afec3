"""apply_ttrl_gt / apply_original_gt on the project's DataProto, and the majority / rule / custom reward managers."""

import logging
import textwrap

import numpy as np
import pytest
import torch

from ttrl_megatron.protocol import DataProto
from ttrl_megatron.ttrl import (CustomRewardManager, MajorityRewardManager, RuleRewardManager, apply_original_gt,
                                apply_ttrl_gt, build_reward_manager, load_custom_reward_function)


def b(x):
    return f"... \\boxed{{{x}}}"


def make_batch(answers_per_prompt, truths):
    """Rows as the trainer builds them: prompt-level rows repeated (shared dicts!), then responses attached."""
    n = len(answers_per_prompt[0])
    prompts = DataProto.from_dict(
        tensors={"prompt_id": torch.arange(len(truths))},
        non_tensors={"reward_model": [{"ground_truth": t, "style": "rule"} for t in truths],
                     "extra_info": [{"index": f"math-{i}"} for i in range(len(truths))],
                     "uid": [f"u{i}" for i in range(len(truths))],
                     "data_source": ["math"] * len(truths)})
    rows = prompts.repeat(n, interleave=True)
    rows.non_tensor_batch["response_text"] = np.array([a for ans in answers_per_prompt for a in ans], dtype=object)
    # verl's repeat shares the dict objects between a prompt's rows (upstream TTRL then mutates them): reproduce that
    shared = [rm for rm in prompts.non_tensor_batch["reward_model"] for _ in range(n)]
    rows.non_tensor_batch["reward_model"] = np.array(shared + [None], dtype=object)[:-1]
    return rows


ANSWERS = [
    [b("3"), b("0.5"), b(r"\frac{1}{2}"), "no answer", b("1/2"), b("3")],  # majority 1/2 (3 of 6); truth 1/2
    [b("7"), b("8"), b("8"), b("7"), b("9"), b("8")],                        # majority 8 (3 of 6); truth 7
]
TRUTHS = [r"\frac{1}{2}", "7"]


def test_apply_ttrl_gt_labels_selects_and_never_mutates_shared_dicts(pool):
    batch = make_batch(ANSWERS, TRUTHS)
    shared = batch.non_tensor_batch["reward_model"][0]
    assert shared is batch.non_tensor_batch["reward_model"][1]  # shared dicts: the upstream pitfall
    out = apply_ttrl_gt(batch, n_votes_per_prompt=6, n_samples_per_prompt=4, grader=pool)
    assert len(out) == 8 and out.batch["prompt_id"].tolist() == [0] * 4 + [1] * 4
    assert list(out.non_tensor_batch["response_text"]) == ANSWERS[0][:4] + ANSWERS[1][:4]
    rms = out.non_tensor_batch["reward_model"]
    assert [rm["ground_truth"] for rm in rms] == ["0.5"] * 4 + ["8"] * 4
    assert [rm["majority_gt"] for rm in rms] == ["0.5"] * 4 + ["8"] * 4
    assert [rm["original_gt"] for rm in rms] == [r"\frac{1}{2}"] * 4 + ["7"] * 4
    assert all(rm["style"] == "rule" for rm in rms)
    assert len({id(rm) for rm in rms}) == 8  # one dict per row
    assert shared == {"ground_truth": r"\frac{1}{2}", "style": "rule"}  # the input is untouched
    assert list(out.non_tensor_batch["majority_ratio"]) == [0.5] * 8
    assert out.meta_info["n_votes_per_prompt"] == 6 and out.meta_info["n_samples_per_prompt"] == 4

    restored = apply_original_gt(out)
    assert [rm["ground_truth"] for rm in restored.non_tensor_batch["reward_model"]] == [r"\frac{1}{2}"] * 4 + ["7"] * 4
    assert [rm["ground_truth"] for rm in rms] == ["0.5"] * 4 + ["8"] * 4  # old dicts not mutated either


def test_random_selection_is_seeded_and_within_each_prompt(pool):
    batch = make_batch(ANSWERS, TRUTHS)
    a = apply_ttrl_gt(batch, 6, 3, grader=pool, selection="random", seed=123)
    c = apply_ttrl_gt(batch, 6, 3, grader=pool, selection="random", seed=123)
    d = apply_ttrl_gt(batch, 6, 3, grader=pool, selection="random", seed=7)
    assert list(a.non_tensor_batch["response_text"]) == list(c.non_tensor_batch["response_text"])
    assert a.batch["prompt_id"].tolist() == [0, 0, 0, 1, 1, 1]
    assert len(set(a.non_tensor_batch["uid"][:3])) == 1
    assert any(list(x.non_tensor_batch["response_text"]) != list(a.non_tensor_batch["response_text"])
               for x in (d, apply_ttrl_gt(batch, 6, 3, grader=pool, selection="random", seed=8)))


def test_bad_inputs_give_clear_errors(pool):
    batch = make_batch(ANSWERS, TRUTHS)
    with pytest.raises(ValueError, match="n_samples_per_prompt"):
        apply_ttrl_gt(batch, 6, 7, grader=pool)
    with pytest.raises(ValueError, match="not a multiple of ttrl.n_votes_per_prompt=5"):
        apply_ttrl_gt(batch, 5, 2, grader=pool)
    with pytest.raises(ValueError, match="prompt-major"):
        apply_ttrl_gt(batch, 4, 2, grader=pool)  # 12 rows, blocks of 4 straddle the two uids
    with pytest.raises(ValueError, match="selection"):
        apply_ttrl_gt(batch, 6, 2, grader=pool, selection="best")
    with pytest.raises(KeyError, match="response_text"):
        apply_ttrl_gt(batch.select(non_tensor_batch_keys=["uid"]), 6, 2, grader=pool)
    with pytest.raises(ValueError, match="original_gt"):
        apply_original_gt(batch)


def test_majority_and_rule_rewards(pool):
    out = apply_ttrl_gt(make_batch(ANSWERS, TRUTHS), 6, 6, grader=pool)
    maj = MajorityRewardManager(pool)(out)
    assert maj.scores.tolist() == [0, 1, 1, 0, 1, 0] + [0, 1, 1, 0, 0, 1]
    assert maj.extra["pred"][:4] == ["3", "0.5", r"\frac{1}{2}", ""]
    rule = RuleRewardManager(pool)(out)
    assert rule.scores.tolist() == [0, 1, 1, 0, 1, 0] + [1, 0, 0, 1, 0, 0]
    assert rule.extra["acc"] == [bool(s) for s in rule.scores]
    assert build_reward_manager("majority", grader=pool)(out).scores.tolist() == maj.scores.tolist()
    with pytest.raises(ValueError, match="majority"):
        build_reward_manager("nope")
    with pytest.raises(KeyError, match="apply_ttrl_gt"):
        MajorityRewardManager(pool)(make_batch(ANSWERS, TRUTHS))


CUSTOM = textwrap.dedent('''
    def reward_func(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
        if "boom" in solution_str:
            raise RuntimeError("bad row")
        hit = str(ground_truth) in solution_str
        return {"score": float(hit) + bonus, "source": data_source, "idx": extra_info["index"]}

    def plain(data_source, solution_str, ground_truth, extra_info=None):
        return 0.25

    NOT_CALLABLE = 3
''')


def test_custom_reward_function(tmp_path, caplog):
    path = tmp_path / "my_reward.py"
    path.write_text(CUSTOM)
    batch = make_batch([[b("7"), "boom", b("8")]], ["7"])
    mgr = CustomRewardManager(str(path), "reward_func", reward_kwargs={"bonus": 0.5})
    with caplog.at_level(logging.WARNING):
        out = mgr(batch)
    assert out.scores.tolist() == [1.5, 0.0, 0.5]
    assert out.num_errors == 1 and mgr.total_errors == 1
    assert "bad row" in caplog.text and str(path) in caplog.text
    assert out.extra["source"] == ["math", None, "math"] and out.extra["idx"] == ["math-0", None, "math-0"]
    assert build_reward_manager("custom", custom_path=str(path), custom_name="plain")(batch).scores.tolist() == [0.25] * 3


def test_custom_reward_loading_errors_name_the_path(tmp_path):
    path = tmp_path / "r.py"
    path.write_text(CUSTOM)
    with pytest.raises(FileNotFoundError, match="custom_reward_function.path.*nope.py"):
        load_custom_reward_function(str(tmp_path / "nope.py"), "reward_func")
    with pytest.raises(AttributeError, match=r"custom_reward_function.name: 'missing' .*r\.py.*reward_func"):
        load_custom_reward_function(str(path), "missing")
    with pytest.raises(TypeError, match="NOT_CALLABLE"):
        load_custom_reward_function(str(path), "NOT_CALLABLE")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_xyz\n")
    with pytest.raises(ImportError, match="broken.py"):
        load_custom_reward_function(str(broken), "f")
    with pytest.raises(ValueError, match="path is empty"):
        load_custom_reward_function("", "f")
