"""RayGrader (Ray tasks over the cluster's CPUs) against the local GradingPool on a fixed set of responses: the
rule reward scores, the majority-vote labels and the raw pair verdicts must be identical, the symbolic pairs (which
need math-verify in a grading process) included. One local Ray instance (2 CPUs, no dashboard) for the module.
"""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (optional: pip install 'ray[default]==2.60.*')")

from ttrl_megatron.launch.ray_grader import RayGrader  # noqa: E402
from ttrl_megatron.protocol import DataProto, to_object_array  # noqa: E402
from ttrl_megatron.ttrl import GradingPool, RuleRewardManager  # noqa: E402
from ttrl_megatron.ttrl.voting import vote_many  # noqa: E402

# (response, ground truth): plain, equivalent forms that need sympy, wrong, missing answers
RESPONSES = [
    ("so the answer is \\boxed{3}", "3"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{2x+1}", "1+2x"),
    ("\\boxed{\\sqrt{4}}", "2"), ("\\boxed{\\frac{6}{4}}", "\\frac{3}{2}"), ("\\boxed{x^2-1}", "(x-1)(x+1)"),
    ("\\boxed{7}", "8"), ("no answer here", "5"), ("\\boxed{\\pi}", "3.14159"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{(1,2)}", "(1, 2)"), ("\\boxed{\\frac{1}{3}}", "0.33"), ("\\boxed{10\\%}", "0.1"),
    ("\\boxed{e^{i\\pi}}", "-1"), ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}"),
    ("\\boxed{3}", "3"),
]
VOTES = [["\\frac{1}{2}", "0.5", "\\frac{2}{4}", "1/3"], ["x+1", "1+x", "2x", None],
         ["\\sqrt{8}", "2\\sqrt{2}", "3", "3"]]


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rule_scores(grader) -> list[float]:
    batch = DataProto({}, {"response_text": to_object_array([r for r, _ in RESPONSES]),
                           "reward_model": to_object_array([{"ground_truth": t} for _, t in RESPONSES])}, {})
    return list(RuleRewardManager(grader, 10.0)(batch).scores)


def test_ray_tasks_grade_exactly_like_the_local_pool(ray_cluster):
    pairs = [(r.split("{", 1)[-1].rsplit("}", 1)[0], t) for r, t in RESPONSES]
    with GradingPool(num_workers=1, timeout_s=10.0, warm_up=False) as pool:
        local = (pool.grade_pairs(pairs), _rule_scores(pool), [v.label for v in vote_many(VOTES, pool, 10.0)])
        local_jobs = pool.stats["jobs"]
    grader = RayGrader(timeout_s=10.0, num_tasks=2)
    remote = (grader.grade_pairs(pairs), _rule_scores(grader), [v.label for v in vote_many(VOTES, grader, 10.0)])
    assert remote == local
    assert local_jobs > 0 and grader.stats["tasks"] >= 2, "symbolic pairs must reach the graders (not only fast)"
    assert 0 < sum(local[1]) < len(RESPONSES)  # mixed verdicts: the comparison can fail
    # a second call is answered from the verdict cache (as the pool's), with the same verdicts
    tasks = grader.stats["tasks"]
    assert grader.grade_pairs(pairs) == local[0] and grader.stats["tasks"] == tasks
    grader.close()
