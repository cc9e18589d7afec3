"""Reward managers: per-row outcome scores for a rollout batch (the value that becomes ``token_level_scores``).

- ``majority``: 1.0 when the row's answer (``answers.answer_for_label``, ``ttrl.answer_extraction``) grades equal to the
  pseudo label
  ``reward_model['majority_gt']`` (written by ``apply_ttrl_gt``), else 0.0 (no answer -> 0.0; TTRL's reward).
- ``rule``: the same against the dataset label (``reward_model['original_gt']`` when present, else ``ground_truth``).
- ``custom``: a user function from ``custom_reward_function.path`` / ``.name`` with verl's signature
  ``fn(data_source, solution_str, ground_truth, extra_info, **reward_kwargs) -> float | dict`` (a dict carries
  ``score`` plus extra per-row fields). It receives the CURRENT ``reward_model['ground_truth']`` — the majority label
  after ``apply_ttrl_gt``, the dataset label after ``apply_original_gt`` — exactly as in TTRL on verl.
  A row whose call raises scores 0.0 and is counted (``RewardOutput.num_errors``) and logged, so one bad row cannot
  kill the step; loading problems raise one error naming the path/function.

Placing the score on the last valid token is done elsewhere (pure torch, algorithms/). Imports no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .extract import check_extraction
from .score import Grader, score_responses

__all__ = ["RewardOutput", "MajorityRewardManager", "RuleRewardManager", "CustomRewardManager",
           "build_reward_manager", "load_custom_reward_function", "REWARD_MANAGERS"]

log = logging.getLogger(__name__)


@dataclass
class RewardOutput:
    """scores: ``[N]`` float64, one per row; extra: per-row lists (``acc``, ``pred``, custom dict fields)."""

    scores: np.ndarray
    extra: dict[str, list] = field(default_factory=dict)
    num_errors: int = 0


def _column(batch: Any, key: str, who: str) -> np.ndarray:
    nt = batch.non_tensor_batch
    if key not in nt:
        raise KeyError(f"{who} reward: missing non_tensor_batch['{key}'] (present: {sorted(nt)})")
    return nt[key]


class _GradedRewardManager:
    """Shared body of ``majority`` and ``rule``: extract, grade against a label column, 0/1 scores.
    ``extraction``: ``ttrl.answer_extraction`` (``boxed`` | ``any``), see ``answers.py``."""

    name = ""

    def __init__(self, grader: Grader | None = None, timeout_s: float | None = None, extraction: str = "boxed"):
        check_extraction(extraction)
        self.grader, self.timeout_s, self.extraction = grader, timeout_s, extraction

    def target(self, reward_model: Any, row: int) -> Any:
        raise NotImplementedError

    def __call__(self, batch: Any) -> RewardOutput:
        texts = _column(batch, "response_text", self.name)
        rms = _column(batch, "reward_model", self.name)
        targets = [self.target(rm, i) for i, rm in enumerate(rms)]
        preds, acc = score_responses(list(texts), targets, self.grader, self.timeout_s, self.extraction)
        scores = np.asarray(acc, dtype=np.float64)
        return RewardOutput(scores, {"acc": acc, "pred": [p if p is not None else "" for p in preds]})


class MajorityRewardManager(_GradedRewardManager):
    """TTRL reward: agreement with the majority-vote pseudo label."""

    name = "majority"

    def target(self, rm: Any, row: int) -> Any:
        if not isinstance(rm, dict) or "majority_gt" not in rm:
            raise KeyError(f"majority reward: row {row} reward_model has no 'majority_gt' (run apply_ttrl_gt first)")
        return rm["majority_gt"]


class RuleRewardManager(_GradedRewardManager):
    """Verifiable reward against the dataset's ground truth."""

    name = "rule"

    def target(self, rm: Any, row: int) -> Any:
        if not isinstance(rm, dict) or ("original_gt" not in rm and "ground_truth" not in rm):
            raise KeyError(f"rule reward: row {row} reward_model has no 'ground_truth'")
        return rm["original_gt"] if "original_gt" in rm else rm["ground_truth"]


def load_custom_reward_function(path: str, name: str) -> Callable[..., Any]:
    """Import ``name`` from the Python file ``path`` (verl's ``custom_reward_function.path`` / ``.name``)."""
    if not path:
        raise ValueError("custom_reward_function.path is empty; set it to a .py file defining the reward function")
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise FileNotFoundError(f"custom_reward_function.path: no such file {full!r}")
    module_name = "ttrl_custom_reward_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, full)
    if spec is None or spec.loader is None:
        raise ImportError(f"custom_reward_function.path: cannot load {full!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ImportError(f"custom_reward_function.path: importing {full!r} failed: {exc!r}") from exc
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AttributeError(f"custom_reward_function.name: {name!r} is not defined in {full!r} (callables: {found})")
    if not callable(fn):
        raise TypeError(f"custom_reward_function.name: {name!r} in {full!r} is a {type(fn).__name__}, not a function")
    return fn


class CustomRewardManager:
    """Calls a user reward function per row with verl's keyword arguments."""

    name = "custom"

    def __init__(self, path: str, name: str, reward_kwargs: dict | None = None, max_logged_errors: int = 5,
                 extraction: str = "boxed"):
        check_extraction(extraction)
        self.extraction = extraction  # not used by the user's function; the ground-truth metrics of the step use it
        self.path, self.fn_name = path, name
        self.fn = load_custom_reward_function(path, name)
        self.reward_kwargs = dict(reward_kwargs or {})
        self.max_logged_errors = max_logged_errors
        self.total_errors = 0

    def _score(self, kwargs: dict) -> tuple[float, dict]:
        result = self.fn(**kwargs, **self.reward_kwargs)
        if isinstance(result, dict):
            if "score" not in result:
                raise KeyError(f"returned a dict without a 'score' key (keys: {sorted(result)})")
            return float(result["score"]), {k: v for k, v in result.items() if k != "score"}
        return float(result), {}

    def __call__(self, batch: Any) -> RewardOutput:
        nt = batch.non_tensor_batch
        texts = _column(batch, "response_text", self.name)
        rms = _column(batch, "reward_model", self.name)
        n = len(texts)
        sources = nt.get("data_source", [None] * n)
        infos = nt.get("extra_info", [None] * n)
        scores = np.zeros(n, dtype=np.float64)
        extras: list[dict] = []
        errors = 0
        for i in range(n):
            gt = rms[i].get("ground_truth") if isinstance(rms[i], dict) else None
            kwargs = dict(data_source=sources[i], solution_str=texts[i], ground_truth=gt, extra_info=infos[i])
            try:
                scores[i], extra = self._score(kwargs)
            except Exception as exc:
                errors += 1
                extra = {}
                if self.total_errors + errors <= self.max_logged_errors:
                    log.warning("custom reward %s:%s raised on row %d, scored 0.0: %r",
                                self.path, self.fn_name, i, exc)
            extras.append(extra)
        self.total_errors += errors
        if errors:
            log.warning("custom reward %s:%s failed on %d of %d rows this batch (%d in total)",
                        self.path, self.fn_name, errors, n, self.total_errors)
        keys = sorted({k for e in extras for k in e})
        return RewardOutput(scores, {k: [e.get(k) for e in extras] for k in keys}, errors)


REWARD_MANAGERS = ("majority", "rule", "custom")


def build_reward_manager(kind: str, *, grader: Grader | None = None, timeout_s: float | None = None,
                         custom_path: str | None = None, custom_name: str | None = None,
                         reward_kwargs: dict | None = None, extraction: str = "boxed"):
    """``majority`` / ``rule`` / ``custom`` by name; unknown names raise listing the valid ones. ``extraction`` is
    ``ttrl.answer_extraction``."""
    if kind == "majority":
        return MajorityRewardManager(grader, timeout_s, extraction)
    if kind == "rule":
        return RuleRewardManager(grader, timeout_s, extraction)
    if kind == "custom":
        return CustomRewardManager(custom_path or "", custom_name or "compute_score", reward_kwargs,
                                   extraction=extraction)
    raise ValueError(f"reward manager must be one of {REWARD_MANAGERS}, got {kind!r}")
