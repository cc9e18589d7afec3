"""The reward phase of one generated prompt batch: TTRL majority vote + selection of n_samples per prompt, outcome
scores (plus DAPO's soft overlong punishment), and the TTRL metrics against the dataset's ground truth.

Grading is spread over the ranks: every rank holds the identical rollout batch, votes and grades ITS contiguous share
of the prompts (``split_evenly``), and the per-row results (labels, scores, extracted answers: not the texts and
prompts every rank already holds) are all-gathered in rank order. No rank idles behind
another's slow grading, and every rank ends with the same rows, labels and scores, identical to one process grading
everything: votes and scores are per prompt / per row, the kept rows are chosen for the whole batch at once
(``select_rollouts`` with the step's seed), and a pseudo label's verdict against the dataset label is decided once, on
the rank that voted, and travels with its rows (``label_correct``), so the TTRL metrics computed afterwards on any
rank (``step_metrics``) read those verdicts instead of grading again (``VerdictTable``).
Everything after this phase (tensor math) runs on every rank on the identical batch. No megatron, no vllm.
"""

from __future__ import annotations

import numpy as np
import torch

from ttrl_megatron.algorithms import scores_to_token_level
from ttrl_megatron.algorithms.overlong import overlong_penalty
from ttrl_megatron.protocol import DataProto, to_object_array
from ttrl_megatron.rollout.base import derive_seed
from ttrl_megatron.ttrl import RuleRewardManager, apply_ttrl_gt, compute_ttrl_metrics, grade_many, select_rollouts
from ttrl_megatron.ttrl.pseudo_label import REWARD_MODEL

from .assemble import split_evenly
from .generation import all_gather_objects

# Per-row columns written here (besides the reward_model labels and majority_ratio of apply_ttrl_gt).
SCORE, GT_SCORE, PRED, ACC, LABEL_CORRECT, OVERLONG = ("score", "gt_score", "pred", "acc", "label_correct",
                                                       "overlong_reward")


def _label_pair(rm) -> tuple[str, str] | None:
    """(str(majority label), str(dataset label)) of a row's reward_model, None when either is missing."""
    if not isinstance(rm, dict) or rm.get("majority_gt") is None or rm.get("original_gt") is None:
        return None
    return str(rm["majority_gt"]), str(rm["original_gt"])


class VerdictTable:
    """A ``Grader`` that answers (pseudo label, dataset label) pairs from the ``label_correct`` verdicts carried by
    the rows (decided once by the rank that voted); a pair it was not given is a bug and raises."""

    def __init__(self, batch: DataProto):
        self.verdicts: dict[tuple[str, str], bool] = {}
        for rm, ok in zip(batch.obj("reward_model"), batch.obj(LABEL_CORRECT)):
            pair = _label_pair(rm)
            if pair is not None:
                self.verdicts.setdefault(pair, bool(ok))

    def grade_pairs(self, pairs, timeout_s=None) -> list[bool]:
        missing = [p for p in pairs if tuple(p) not in self.verdicts]
        if missing:
            raise KeyError(f"VerdictTable: no verdict for label pairs {missing[:3]} (rows lack label_correct)")
        return [self.verdicts[tuple(p)] for p in pairs]


def concat_rows(parts: list[DataProto]) -> DataProto:
    """Concatenate batches whose object columns may differ (a custom reward's extra fields): missing cells are None."""
    if len(parts) == 1:
        return parts[0]
    keys = list(dict.fromkeys(k for p in parts for k in p.non_tensor_batch))
    filled = [DataProto(p.batch, {k: p.non_tensor_batch.get(k, to_object_array([None] * len(p))) for k in keys},
                        p.meta_info) for p in parts]
    return DataProto.concat(filled)


class RewardStep:
    """``__call__(batch, step, gen_index) -> (batch of kept rows with token_level_scores, metrics)``.

    With ``ttrl`` (a TTRLConfig) the batch holds n_votes rows per prompt, is labelled by majority vote and cut to
    n_samples rows per prompt; without it every row is kept and scored against the dataset label.
    ``manager``: the reward manager (majority / rule / custom); ``grader``: this rank's answer grader (every rank has
    one); ``rank`` / ``world``: this process in the trainer's world (the grading split); ``overlong``: the
    reward_model.overlong_buffer section (applied when enabled) and ``max_response_length`` its L_max.
    Per-row outputs: ``score`` (the manager's score), ``gt_score``, ``pred`` (extracted answer), ``acc`` (the manager's
    ``acc`` when it reports one, else the score, as verl's DAPO reward manager), the custom manager's extra fields,
    ``label_correct`` (TTRL) and ``overlong_reward`` (when the overlong buffer is on).
    ``token_level_scores`` = score + overlong penalty on each row's last valid token.
    """

    def __init__(self, *, ttrl, n_votes: int, n_samples: int, manager, grader, seed: int, rank: int = 0,
                 world: int = 1, overlong=None, max_response_length: int | None = None):
        self.ttrl, self.n_votes, self.n_samples = ttrl, n_votes, n_samples
        self.manager, self.grader, self.seed, self.rank, self.world = manager, grader, seed, rank, world
        self.overlong = overlong if overlong is not None and overlong.enable else None
        self.max_response_length = max_response_length
        self.timeout_s = ttrl.grade_timeout_s if ttrl else None
        self.truth = RuleRewardManager(grader, self.timeout_s, manager.extraction)

    def selection_seed(self, step: int, gen_index: int) -> int:
        """Seed of ``random`` sample selection: ``seed + step`` for the step's first prompt batch (as before dynamic
        sampling existed), a hash of (seed, step, gen_index) for the further ones."""
        return self.seed + step if gen_index == 0 else derive_seed(self.seed, step, gen_index)

    def keep_rows(self, num_rows: int, seed: int) -> np.ndarray:
        if self.ttrl is None:
            return np.arange(num_rows)
        return select_rollouts(num_rows // self.n_votes, self.n_votes, self.n_samples, self.ttrl.sample_selection,
                               seed)

    def _label_and_score(self, local: DataProto, keep: np.ndarray) -> dict:
        """This rank's share: vote (TTRL), keep the selected rows, score them. Returns the object columns this phase
        wrote (the labels it rewrote included), not the ones every rank already holds (texts, prompts, uids)."""
        held = set(local.non_tensor_batch) - {REWARD_MODEL}  # voting rewrites the labels: those travel
        if self.ttrl is not None:
            # Label every row of the share (n_samples = n_votes keeps all, in order), then keep the rows chosen for
            # the whole batch: the same labels and rows as voting the whole batch with its selection at once.
            local = apply_ttrl_gt(local, self.n_votes, self.n_votes, grader=self.grader, selection="first",
                                  timeout_s=self.timeout_s, extraction=self.truth.extraction)
        rows = local[keep]
        out, truth = self.manager(rows), self.truth(rows)
        objects = dict(rows.non_tensor_batch)
        objects[SCORE] = to_object_array([float(s) for s in out.scores])
        objects[GT_SCORE] = to_object_array([float(s) for s in truth.scores])
        objects[PRED] = to_object_array(list(out.extra.get(PRED, truth.extra[PRED])))
        objects[ACC] = to_object_array(list(out.extra[ACC]) if ACC in out.extra else [float(s) for s in out.scores])
        for key, values in out.extra.items():  # a custom reward's extra fields (e.g. for filter_groups.metric)
            objects.setdefault(key, to_object_array(list(values)))
        if self.ttrl is not None:
            objects[LABEL_CORRECT] = to_object_array(self._label_verdicts(objects[REWARD_MODEL]))
        return {"objects": {k: v for k, v in objects.items() if k not in held}, "num_errors": out.num_errors}

    def _label_verdicts(self, reward_models) -> list[bool]:
        pairs = [_label_pair(rm) for rm in reward_models]
        distinct = list(dict.fromkeys(p for p in pairs if p is not None))
        verdicts = dict(zip(distinct, grade_many(distinct, self.grader, self.timeout_s)))
        return [bool(verdicts[p]) if p is not None else False for p in pairs]

    def __call__(self, batch: DataProto, step: int, gen_index: int = 0) -> tuple[DataProto, dict]:
        keep = self.keep_rows(len(batch), self.selection_seed(step, gen_index))
        start, end = split_evenly(len(batch) // self.n_votes, self.world)[self.rank]
        lo, hi = start * self.n_votes, end * self.n_votes
        local_keep = keep[(keep >= lo) & (keep < hi)] - lo
        part = self._label_and_score(batch[lo:hi], local_keep) if hi > lo else None
        parts = [p for p in all_gather_objects(part) if p is not None]
        keys = list(dict.fromkeys(k for p in parts for k in p["objects"]))  # a custom reward's fields may differ
        written = {k: np.concatenate([p["objects"].get(k, to_object_array([None] * len(p["objects"][SCORE])))
                                      for p in parts]) for k in keys}
        rows = batch[keep]  # every rank holds the batch: only what the shares wrote was gathered
        objects = {**rows.non_tensor_batch, **written}
        kept = DataProto(dict(rows.batch), objects, dict(batch.meta_info))
        scores = torch.tensor([float(s) for s in objects[SCORE]], dtype=torch.float32)  # host: the batch lives there
        if self.overlong is not None:
            penalty = overlong_penalty(kept.batch["response_mask"].sum(dim=-1), self.max_response_length,
                                       self.overlong.len, self.overlong.penalty_factor)
            kept.non_tensor_batch[OVERLONG] = to_object_array([float(p) for p in penalty])
            scores = scores + penalty
        kept.batch["token_level_scores"] = scores_to_token_level(scores, kept.batch["response_mask"])
        errors = sum(p["num_errors"] for p in parts)
        return kept, ({"reward/num_errors": float(errors)} if errors else {})

    def step_metrics(self, batch: DataProto) -> dict:
        """``train/*`` TTRL metrics (label/reward accuracy, majority ratio, ...) of labelled rows, read from their
        verdicts (no grading here), and ``reward/overlong_*`` when the overlong buffer logs."""
        metrics = {}
        if self.ttrl is not None and len(batch):
            raw = compute_ttrl_metrics(batch, [float(s) for s in batch.obj(SCORE)],
                                       [float(s) for s in batch.obj(GT_SCORE)], self.n_samples,
                                       grader=VerdictTable(batch))
            metrics.update({f"train/{k}": v for k, v in raw.items()})
        if self.overlong is not None and self.overlong.log and len(batch):
            penalty = np.asarray([float(p) for p in batch.obj(OVERLONG)])
            metrics["reward/overlong_penalty_mean"] = float(penalty.mean())
            metrics["reward/overlong_ratio"] = float((penalty < 0).mean())
        return metrics
