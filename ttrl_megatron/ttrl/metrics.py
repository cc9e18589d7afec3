"""TTRL training metrics (algorithms-semantics §2.5) and validation metrics (mean@n, maj@k, unbiased pass@k).

Training, per prompt then averaged over prompts (logged as ``train/<name>``):
  label_accuracy          1 if the majority label grades equal to the dataset label (no answer -> 0)
  reward_accuracy         fraction of the prompt's rollouts whose majority reward == ground-truth reward (exact)
  majority_ratio          winning-cluster share of the prompt's n_votes rollouts
  majority_voting_reward  mean majority (pseudo) score over the rollouts (pre-KL)
  ground_truth_reward     mean ground-truth score over the rollouts
  pass@{n}                1 if any rollout's ground-truth score >= 1 (n = rollouts per prompt = n_samples)
Rows are grouped by prompt (``uid``, else ``extra_info['index']``, else contiguous blocks of n) instead of
upstream's sort-then-cut, so a reordered (balanced) batch gives the same numbers.

Validation, per prompt then averaged, for every k in 1, 2, 4, ... up to n (and n itself):
  mean@n   mean correctness of the n samples;
  maj@k    correctness of the equivalence-aware majority label of the FIRST k samples (``voting.vote_many``); the
           label's correctness is that of the response it came from. Deterministic (upstream verl bootstraps 1000
           random subsets with a fixed seed; first-k is its expectation's cheapest unbiased proxy for i.i.d. samples);
  pass@k   unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, arXiv 2107.03374), c = correct samples.
Imports no torch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from .score import Grader, grade_many, score_responses
from .voting import vote_many

__all__ = ["pass_at_k", "compute_ttrl_metrics", "ttrl_metrics_from_rows", "compute_validation_metrics", "powers_of_two"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: ``1 - C(n-c, k) / C(n, k)``, computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


def _group_ids(batch: Any, n: int | None) -> list:
    nt = batch.non_tensor_batch
    if "uid" in nt:
        return [repr(u) for u in nt["uid"]]
    if "extra_info" in nt and all(isinstance(e, dict) and "index" in e for e in nt["extra_info"]):
        return [repr(e["index"]) for e in nt["extra_info"]]
    if not n:
        raise ValueError("compute_ttrl_metrics: rows carry neither 'uid' nor extra_info['index']; "
                         "pass n_samples_per_prompt so contiguous blocks can be used")
    return [i // n for i in range(len(batch))]


def ttrl_metrics_from_rows(group_ids: Sequence, majority_gt: Sequence, original_gt: Sequence,
                           majority_ratio: Sequence[float], majority_scores: Sequence[float],
                           gt_scores: Sequence[float], grader: Grader | None = None,
                           pass_k_name: int | None = None) -> dict[str, float]:
    """The metrics above from per-row arrays (length N). Each group must carry a single majority and original label."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        groups[g].append(i)
    if not groups:
        return {}
    sizes = {len(rows) for rows in groups.values()}
    if pass_k_name is None:
        if len(sizes) != 1:
            raise ValueError(f"compute_ttrl_metrics: prompts have different rollout counts {sorted(sizes)}; "
                             f"pass n_samples_per_prompt to name pass@n")
        pass_k_name = sizes.pop()
    labels = []
    for g, rows in groups.items():
        for name, col in (("majority", majority_gt), ("original", original_gt)):
            if len({repr(col[i]) for i in rows}) != 1:
                raise ValueError(f"compute_ttrl_metrics: prompt {g!r} has several {name} labels "
                                 f"{sorted({repr(col[i]) for i in rows})}")
        labels.append((majority_gt[rows[0]], original_gt[rows[0]]))
    gradable = [i for i, (m, o) in enumerate(labels) if m is not None and o is not None]
    label_ok = [False] * len(labels)
    for i, ok in zip(gradable, grade_many([(str(labels[i][0]), str(labels[i][1])) for i in gradable], grader)):
        label_ok[i] = ok
    per_prompt = defaultdict(list)
    for ok, rows in zip(label_ok, groups.values()):
        maj = np.asarray([majority_scores[i] for i in rows], dtype=np.float64)
        gt = np.asarray([gt_scores[i] for i in rows], dtype=np.float64)
        per_prompt["label_accuracy"].append(float(ok))
        per_prompt["reward_accuracy"].append(float(np.mean(maj == gt)))
        per_prompt["majority_ratio"].append(float(majority_ratio[rows[0]]))
        per_prompt["majority_voting_reward"].append(float(maj.mean()))
        per_prompt["ground_truth_reward"].append(float(gt.mean()))
        per_prompt[f"pass@{pass_k_name}"].append(float(np.any(gt >= 1.0)))
    return {k: float(np.mean(v)) for k, v in per_prompt.items()}


def compute_ttrl_metrics(batch: Any, majority_scores: Sequence[float], gt_scores: Sequence[float],
                         n_samples_per_prompt: int | None = None, grader: Grader | None = None) -> dict[str, float]:
    """TTRL metrics of a training batch after ``apply_ttrl_gt``.

    Args:
        batch: rows with ``reward_model`` (``majority_gt``, ``original_gt``), ``majority_ratio`` and ``uid`` or
            ``extra_info['index']`` (any row order).
        majority_scores / gt_scores: ``[N]`` per-row outcome scores against the pseudo / dataset label (e.g. the
            row sums of ``token_level_scores`` and ``token_level_scores_original``).
    """
    nt = batch.non_tensor_batch
    for key in ("reward_model", "majority_ratio"):
        if key not in nt:
            raise KeyError(f"compute_ttrl_metrics: missing non_tensor_batch['{key}'] (written by apply_ttrl_gt)")
    n = len(batch)
    if len(majority_scores) != n or len(gt_scores) != n:
        raise ValueError(f"compute_ttrl_metrics: {n} rows but {len(majority_scores)} majority scores and "
                         f"{len(gt_scores)} ground-truth scores")
    rms = nt["reward_model"]
    return ttrl_metrics_from_rows(_group_ids(batch, n_samples_per_prompt), [rm.get("majority_gt") for rm in rms],
                                  [rm.get("original_gt") for rm in rms], nt["majority_ratio"], majority_scores,
                                  gt_scores, grader, n_samples_per_prompt)


def compute_validation_metrics(responses_per_prompt: Sequence[Sequence[str]], ground_truths: Sequence[str],
                               data_sources: Sequence[str] | None = None, grader: Grader | None = None,
                               timeout_s: float | None = None, extraction: str = "boxed") -> dict[str, float]:
    """``val-core/{data_source}/acc/{mean@n, maj@n, pass@n}`` and ``val-aux/...`` for smaller k (see docstring).
    ``extraction``: ``ttrl.answer_extraction`` (``boxed`` | ``any``), used for the per-sample scores and the votes."""
    if len(responses_per_prompt) != len(ground_truths):
        raise ValueError(f"compute_validation_metrics: {len(responses_per_prompt)} prompts but "
                         f"{len(ground_truths)} ground truths")
    sources = list(data_sources) if data_sources is not None else ["unknown"] * len(ground_truths)
    flat_responses = [r for rs in responses_per_prompt for r in rs]
    flat_truths = [gt for rs, gt in zip(responses_per_prompt, ground_truths) for _ in rs]
    verdicts = iter(score_responses(flat_responses, flat_truths, grader, timeout_s, extraction)[1])
    correct = [[next(verdicts) for _ in rs] for rs in responses_per_prompt]
    per: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    n_max: dict[str, int] = defaultdict(int)
    jobs = []  # (source, k, prompt) for maj@k votes, graded in one batch
    for src, rs, acc in zip(sources, responses_per_prompt, correct):
        n = len(rs)
        if n == 0:
            continue
        n_max[src] = max(n_max[src], n)
        per[(src, "mean", n)].append(float(np.mean(acc)))
        for k in powers_of_two(n):
            per[(src, "pass", k)].append(pass_at_k(n, sum(acc), k))
            jobs.append((src, k, list(rs[:k]), acc[:k]))
    votes = vote_many([j[2] for j in jobs], grader, timeout_s, extraction)
    for (src, k, _, acc), vote in zip(jobs, votes):
        per[(src, "maj", k)].append(float(vote.winner >= 0 and acc[vote.cluster_of.index(vote.winner)]))
    out = {}
    for (src, kind, k), values in sorted(per.items()):
        prefix = "val-core" if k == n_max[src] else "val-aux"
        out[f"{prefix}/{src}/acc/{kind}@{k}"] = float(np.mean(values))
    return out
