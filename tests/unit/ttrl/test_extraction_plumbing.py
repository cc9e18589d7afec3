"""ttrl.answer_extraction end to end in the pure layer: voting with list answers and unboxed conclusions, the pseudo
label, the reward managers, validation metrics; the config field; no import cycles inside ttrl/."""

import ast
import threading
from pathlib import Path

import pytest

from ttrl_megatron.config import ConfigError, TTRLTrainerConfig, validate
from ttrl_megatron.config import names
from ttrl_megatron.ttrl import (EXTRACTIONS, CustomRewardManager, MajorityRewardManager, RuleRewardManager,
                                apply_ttrl_gt, build_reward_manager, compute_validation_metrics, majority_vote,
                                vote_many)

from .test_pseudo_label_rewards import make_batch


def test_a_list_answer_votes_as_one_list(pool):
    responses = [r"$\boxed{1}$ and $\boxed{-2}$", r"\boxed{-2, 1}", r"\boxed{3}", r"\boxed{x=1 \text{ or } x=-2}",
                 r"\boxed{\{1, -2\}}", r"\boxed{3}", r"\boxed{1}"]
    label, ratio = majority_vote(responses, pool)
    assert (label, ratio) == ("1, -2", 4 / 7)


def test_equivalent_relations_and_thousands_are_one_vote(pool):
    votes = vote_many([[r"\boxed{x \geq 5}", r"\boxed{x > 5}", r"\boxed{[5, \infty)}", r"\boxed{5 \le x}"],
                       [r"\boxed{1{,}000}", r"\boxed{1000}", r"\boxed{1, 000}", r"\boxed{10^3}"]], pool)
    assert (votes[0].label, votes[0].cluster_of) == (r"x \geq 5", [0, 1, 0, 0])
    assert (votes[1].label, votes[1].cluster_of) == ("1{,}000", [0, 0, 1, 0])


def test_unboxed_answers_vote_only_with_any(pool):
    responses = ["The answer is 12.", "So the answer is $12$.", r"\boxed{13}", "#### 12"]
    assert majority_vote(responses, pool) == ("13", 1 / 4)
    assert majority_vote(responses, pool, extraction="any") == ("12", 3 / 4)


def test_pseudo_label_and_rewards_with_list_labels(pool):
    answers = [[r"$\boxed{2}$ and $\boxed{3}$", r"\boxed{3, 2}", r"\boxed{2}", r"\boxed{x=2 \text{ or } x=3}"]]
    out = apply_ttrl_gt(make_batch(answers, ["2, 3"]), 4, 4, grader=pool)
    assert [rm["majority_gt"] for rm in out.non_tensor_batch["reward_model"]] == ["2, 3"] * 4
    assert MajorityRewardManager(pool)(out).scores.tolist() == [1, 1, 0, 1]
    rule = RuleRewardManager(pool)(out)
    assert rule.scores.tolist() == [1, 1, 0, 1]
    assert rule.extra["pred"] == ["2, 3", "3, 2", "2", "x=2 \\text{ or } x=3"]


def test_any_extraction_in_apply_ttrl_gt_and_rewards(pool):
    answers = [["The answer is 7.", "#### 7", "Therefore $8$.", r"\boxed{7}"]]
    for extraction, label, scores in (("boxed", "7", [0, 0, 0, 1]), ("any", "7", [1, 1, 0, 1])):
        out = apply_ttrl_gt(make_batch(answers, ["7"]), 4, 4, grader=pool, extraction=extraction)
        assert out.non_tensor_batch["reward_model"][0]["majority_gt"] == label
        mgr = build_reward_manager("rule", grader=pool, extraction=extraction)
        assert mgr.extraction == extraction
        assert mgr(out).scores.tolist() == scores


def test_validation_metrics_use_the_extraction(pool):
    responses = [["The answer is 4.", r"\boxed{4}"], [r"$\boxed{1}$ and $\boxed{2}$", "So the answer is 3."]]
    boxed = compute_validation_metrics(responses, ["4", "1, 2"], grader=pool)
    anyx = compute_validation_metrics(responses, ["4", "1, 2"], grader=pool, extraction="any")
    assert boxed["val-core/unknown/acc/mean@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert anyx["val-core/unknown/acc/mean@2"] == pytest.approx((1.0 + 0.5) / 2)


def test_managers_reject_unknown_extractions(tmp_path):
    for make in (lambda: MajorityRewardManager(extraction="last"), lambda: RuleRewardManager(extraction="x"),
                 lambda: build_reward_manager("majority", extraction="")):
        with pytest.raises(ValueError, match="ttrl.answer_extraction"):
            make()
    path = tmp_path / "r.py"
    path.write_text("def f(**kw):\n    return 0.0\n")
    assert CustomRewardManager(str(path), "f", extraction="any").extraction == "any"


def test_vote_from_threads(pool):
    results = {}

    def job(i):
        results[i] = majority_vote([r"\boxed{1} and \boxed{2}", r"\boxed{2, 1}", r"\boxed{5}"], pool)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert list(results.values()) == [("1, 2", 2 / 3)] * 4


def test_config_field_is_validated_and_names_agree():
    assert names.ANSWER_EXTRACTIONS == EXTRACTIONS
    cfg = TTRLTrainerConfig()
    assert cfg.ttrl.answer_extraction == "boxed"
    cfg.ttrl.answer_extraction = "last_box"
    with pytest.raises(ConfigError, match="ttrl.answer_extraction='last_box'"):
        validate(cfg, check_paths=False)


def _ttrl_imports(path: Path) -> set[str]:
    """Sibling modules of ttrl/ that ``path`` imports anywhere (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add(node.module.split(".")[0] if node.module else "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ttrl_megatron.ttrl."):
            out.add(node.module.split(".")[2])
    return out - {""}


def test_no_import_cycles_inside_ttrl():
    pkg = Path(__file__).resolve().parents[3] / "ttrl_megatron" / "ttrl"
    graph = {p.stem: _ttrl_imports(p) for p in pkg.glob("*.py") if p.stem != "__init__"}

    def visit(node, stack):
        for nxt in graph.get(node, ()):
            assert nxt not in stack, f"import cycle: {' -> '.join(stack + [nxt])}"
            visit(nxt, stack + [nxt])

    for mod in graph:
        visit(mod, [mod])
