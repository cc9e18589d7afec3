"""TTRL core, pure Python (no torch): answer extraction, grading, equivalence-aware majority voting, pseudo labels,
reward managers and TTRL / validation metrics.

Grading that may need sympy/math-verify runs in killable worker processes (``GradingPool``), so nothing here can hang
the caller. Must not import torch, torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from .answers import answer_for_label, response_answer
from .extract import EXTRACTIONS, extract_answer
from .grading import fast_grade
from .metrics import compute_ttrl_metrics, compute_validation_metrics, pass_at_k, ttrl_metrics_from_rows
from .normalize import normalize_answer
from .pool import GradingPool, default_pool
from .pseudo_label import apply_original_gt, apply_ttrl_gt, select_rollouts
from .rewards import (CustomRewardManager, MajorityRewardManager, RewardOutput, RuleRewardManager,
                      build_reward_manager, load_custom_reward_function)
from .score import grade_answer, grade_many, score_response, score_responses
from .voting import Vote, majority_vote, vote_many

__all__ = [
    "EXTRACTIONS", "answer_for_label", "response_answer", "score_response", "score_responses",
    "extract_answer", "fast_grade", "grade_answer", "normalize_answer", "GradingPool", "default_pool",
    "Vote", "grade_many", "majority_vote", "vote_many", "apply_ttrl_gt", "apply_original_gt", "select_rollouts",
    "RewardOutput", "MajorityRewardManager", "RuleRewardManager", "CustomRewardManager", "build_reward_manager",
    "load_custom_reward_function", "compute_ttrl_metrics", "ttrl_metrics_from_rows", "compute_validation_metrics",
    "pass_at_k",
]
