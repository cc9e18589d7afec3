"""Batch-level TTRL labelling: vote over each prompt's n_votes rollouts, keep n_samples of them for training.

Mirrors upstream ``apply_ttrl_gt`` / ``select_top_k_per_prompt`` / ``apply_original_gt`` (algorithms-semantics §2.2),
but works directly on the rollout batch (B*n_votes rows, prompt-major) and never mutates a dict shared between rows
(``repeat`` copies references, so upstream's in-place ``reward_model`` edits leak across rows).

Per-row ``non_tensor_batch`` keys (object arrays of length B*n):
  read:    ``response_text`` (str, decoded response; required), ``reward_model`` (dict with ``ground_truth``; missing ->
           original label None), ``uid`` and ``extra_info["index"]`` (optional; when present they must be constant
           inside each prompt's block, which is how a non-prompt-major batch is caught);
  written: ``reward_model`` (a NEW dict per row: ``ground_truth`` = majority label, ``majority_gt``, ``original_gt``;
           the label is None when none of the prompt's rollouts has an answer — upstream wrote the string "None"),
           ``majority_ratio`` (float, the prompt's winning-cluster share of its n_votes rollouts).
``meta_info`` gains ``n_votes_per_prompt`` and ``n_samples_per_prompt``.

Works on ``ttrl_megatron.protocol.DataProto`` through ``.non_tensor_batch``, ``len`` and row indexing only;
imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .voting import Grader, vote_many

__all__ = ["RESPONSE_TEXT", "REWARD_MODEL", "MAJORITY_RATIO", "apply_original_gt", "apply_ttrl_gt", "select_rollouts"]

RESPONSE_TEXT = "response_text"
REWARD_MODEL = "reward_model"
MAJORITY_RATIO = "majority_ratio"
SELECTIONS = ("first", "random")


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _require(batch: Any, key: str, caller: str, hint: str) -> np.ndarray:
    if key not in batch.non_tensor_batch:
        raise KeyError(f"{caller}: missing non_tensor_batch['{key}'] ({hint}); "
                       f"present: {sorted(batch.non_tensor_batch)}")
    return batch.non_tensor_batch[key]


def _check_blocks(batch: Any, n_votes: int) -> None:
    """Rows must be prompt-major: uid / extra_info['index'], when present, constant within each block of n_votes."""
    nt = batch.non_tensor_batch
    columns = {}
    if "uid" in nt:
        columns["uid"] = list(nt["uid"])
    if "extra_info" in nt:
        columns["extra_info['index']"] = [e.get("index") if isinstance(e, dict) else None for e in nt["extra_info"]]
    for name, col in columns.items():
        for start in range(0, len(col), n_votes):
            if len(set(map(repr, col[start:start + n_votes]))) > 1:
                raise ValueError(f"apply_ttrl_gt: rows {start}..{start + n_votes - 1} have different {name} values; "
                                 f"the batch must be prompt-major (each prompt's n_votes_per_prompt={n_votes} rollouts "
                                 f"contiguous) — vote before balance_batch/reordering")


def select_rollouts(n_prompts: int, n_votes: int, n_samples: int, selection: str = "first", seed: int = 0) -> np.ndarray:
    """Row ids kept for training, prompt-major: ``first`` = the first n_samples of each block (upstream; fine because
    rollouts are i.i.d.), ``random`` = a sorted random subset per block from ``numpy.random.default_rng(seed)``."""
    if selection not in SELECTIONS:
        raise ValueError(f"ttrl selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "first":
        return (np.arange(n_prompts)[:, None] * n_votes + np.arange(n_samples)[None, :]).reshape(-1)
    rng = np.random.default_rng(seed)
    rows = [p * n_votes + np.sort(rng.choice(n_votes, size=n_samples, replace=False)) for p in range(n_prompts)]
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def apply_ttrl_gt(batch: Any, n_votes_per_prompt: int, n_samples_per_prompt: int, *, grader: Grader | None = None,
                  selection: str = "first", seed: int = 0, timeout_s: float | None = None,
                  extraction: str = "boxed") -> Any:
    """Vote per prompt over its n_votes rollouts and return the selected B*n_samples rows with pseudo labels.

    Args:
        batch: B*n_votes rows, prompt-major, with the keys listed in the module docstring.
        n_votes_per_prompt / n_samples_per_prompt: TTRL's ``ttrl.n_votes_per_prompt`` / ``ttrl.n_samples_per_prompt``.
        grader: a ``GradingPool`` (default: the shared default pool, used only for pairs the fast path cannot decide).
        selection: ``first`` (upstream) or ``random`` (seeded by ``seed``; pass e.g. ``base_seed + step``).
        extraction: how a response's answer is found (``ttrl.answer_extraction``: ``boxed`` | ``any``).
    Returns:
        A new batch of the selected rows (input untouched), with the written keys above.
    """
    n_votes, n_samples = int(n_votes_per_prompt), int(n_samples_per_prompt)
    if n_votes < 1 or not 1 <= n_samples <= n_votes:
        raise ValueError(f"need 1 <= ttrl.n_samples_per_prompt ({n_samples}) <= ttrl.n_votes_per_prompt ({n_votes})")
    if len(batch) % n_votes:
        raise ValueError(f"apply_ttrl_gt: batch has {len(batch)} rows, not a multiple of "
                         f"ttrl.n_votes_per_prompt={n_votes} (did the rollout generate n_votes per prompt?)")
    texts = _require(batch, RESPONSE_TEXT, "apply_ttrl_gt", "decoded responses")
    _check_blocks(batch, n_votes)
    n_prompts = len(batch) // n_votes
    votes = vote_many([list(texts[p * n_votes:(p + 1) * n_votes]) for p in range(n_prompts)], grader, timeout_s,
                      extraction)

    keep = select_rollouts(n_prompts, n_votes, n_samples, selection, seed)
    out = batch[keep]
    old_rm = out.non_tensor_batch.get(REWARD_MODEL)
    new_rm, ratios = [], []
    for row, src in enumerate(keep):
        vote = votes[int(src) // n_votes]
        rm = dict(old_rm[row]) if old_rm is not None and isinstance(old_rm[row], dict) else {}
        original = rm["original_gt"] if "original_gt" in rm else rm.get("ground_truth")
        rm.update(ground_truth=vote.label, majority_gt=vote.label, original_gt=original)
        new_rm.append(rm)
        ratios.append(float(vote.ratio))
    out.non_tensor_batch[REWARD_MODEL] = _objects(new_rm)
    out.non_tensor_batch[MAJORITY_RATIO] = _objects(ratios)
    out.meta_info = dict(out.meta_info, n_votes_per_prompt=n_votes, n_samples_per_prompt=n_samples)
    return out


def apply_original_gt(batch: Any) -> Any:
    """Point every row's ``reward_model['ground_truth']`` back at the dataset label (for the ground-truth reward and
    evaluation). Replaces the ``reward_model`` array with new dicts (no shared dict is mutated); returns ``batch``."""
    rms = _require(batch, REWARD_MODEL, "apply_original_gt", "written by apply_ttrl_gt")
    new_rm = []
    for i, rm in enumerate(rms):
        if not isinstance(rm, dict) or "original_gt" not in rm:
            raise ValueError(f"apply_original_gt: row {i} reward_model has no 'original_gt' "
                             f"(run apply_ttrl_gt on this batch first)")
        new_rm.append(dict(rm, ground_truth=rm["original_gt"]))
    batch.non_tensor_batch[REWARD_MODEL] = _objects(new_rm)
    return batch
