"""The reward phase of a step: TTRL majority vote + selection of n_samples per prompt, outcome scores, and the
TTRL metrics against the dataset's ground truth.

Grading runs on rank 0 only and its per-row results are broadcast: grading is pure Python work (duplicating it on
every rank only costs CPU), and a grader timeout near its deadline could otherwise give ranks different labels.
Everything after this phase (tensor math) runs on every rank on the identical batch.
No megatron, no vllm.
"""

from __future__ import annotations

import numpy as np
import torch

from ttrl_megatron.algorithms import scores_to_token_level
from ttrl_megatron.protocol import DataProto, to_object_array
from ttrl_megatron.ttrl import RuleRewardManager, apply_ttrl_gt, compute_ttrl_metrics, select_rollouts

from .generation import broadcast_object


class RewardStep:
    """``__call__(batch, step) -> (batch of kept rows with token_level_scores, metrics)``.

    With ``ttrl`` (a TTRLConfig) the batch holds n_votes rows per prompt, is labelled by majority vote and cut to
    n_samples rows per prompt; without it every row is kept and scored against the dataset label.
    ``manager``: the reward manager (majority / rule / custom), only needed on rank 0 (None elsewhere);
    ``grader``: the GradingPool (rank 0). Per-row outputs: ``score``, ``pred`` (extracted answer), ``gt_score``.
    """

    def __init__(self, *, ttrl, n_votes: int, n_samples: int, manager, grader, seed: int, is_source: bool):
        self.ttrl, self.n_votes, self.n_samples = ttrl, n_votes, n_samples
        self.manager, self.grader, self.seed, self.is_source = manager, grader, seed, is_source
        self.truth = RuleRewardManager(grader, ttrl and ttrl.grade_timeout_s, manager.extraction) if is_source else None

    def keep_rows(self, num_rows: int, step: int) -> np.ndarray:
        if self.ttrl is None:
            return np.arange(num_rows)
        return select_rollouts(num_rows // self.n_votes, self.n_votes, self.n_samples, self.ttrl.sample_selection,
                               self.seed + step)

    def _label_and_score(self, batch: DataProto, step: int) -> dict:
        """Rank 0: the kept rows' object columns, scores and TTRL metrics."""
        if self.ttrl is not None:
            batch = apply_ttrl_gt(batch, self.n_votes, self.n_samples, grader=self.grader,
                                  selection=self.ttrl.sample_selection, seed=self.seed + step,
                                  timeout_s=self.ttrl.grade_timeout_s, extraction=self.truth.extraction)
        out = self.manager(batch)
        truth = self.truth(batch)
        metrics = {}
        if self.ttrl is not None:
            raw = compute_ttrl_metrics(batch, out.scores, truth.scores, self.n_samples, grader=self.grader)
            metrics = {f"train/{k}": v for k, v in raw.items()}
        if out.num_errors:
            metrics["reward/num_errors"] = float(out.num_errors)
        objects = dict(batch.non_tensor_batch)
        objects["score"] = to_object_array([float(s) for s in out.scores])
        objects["gt_score"] = to_object_array([float(s) for s in truth.scores])
        objects["pred"] = to_object_array(list(out.extra.get("pred", truth.extra["pred"])))
        return {"objects": objects, "metrics": metrics}

    def __call__(self, batch: DataProto, step: int) -> tuple[DataProto, dict]:
        keep = self.keep_rows(len(batch), step)
        result = broadcast_object(self._label_and_score(batch, step) if self.is_source else None)
        kept = DataProto(dict(batch[keep].batch), result["objects"], dict(batch.meta_info))
        scores = torch.tensor([float(s) for s in result["objects"]["score"]], dtype=torch.float32)
        kept.batch["token_level_scores"] = scores_to_token_level(scores, kept.batch["response_mask"])
        return kept, result["metrics"]
