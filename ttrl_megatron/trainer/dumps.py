"""JSONL dumps of generations: ``trainer.rollout_data_dir/<step>.jsonl`` (training rollouts) and
``trainer.validation_data_dir/<step>.jsonl`` (validation generations). One JSON object per row:
prompt, response, extracted answer, pseudo label (majority vote; null without TTRL), ground truth, score, step.

Written by rank 0 only (the caller decides); files are written to a temporary name and renamed, so a reader never
sees half a file. Stdlib only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence


def _plain(value: Any) -> Any:
    """JSON-safe version of a row value (numpy scalars, tensors and odd objects become numbers or strings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def write_jsonl(out_dir: str | os.PathLike, step: int, rows: Iterable[dict]) -> Path:
    """Write ``rows`` to ``<out_dir>/<step>.jsonl`` atomically; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{step}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def generation_rows(step: int, prompts: Sequence[Any], responses: Sequence[str], answers: Sequence[Any],
                    pseudo_labels: Sequence[Any], ground_truths: Sequence[Any], scores: Sequence[float],
                    extra: dict[str, Sequence[Any]] | None = None) -> list[dict]:
    """One dict per row (all sequences have the same length); ``extra`` adds more per-row columns."""
    n = len(responses)
    columns = {"prompt": prompts, "response": responses, "answer": answers, "pseudo_label": pseudo_labels,
               "ground_truth": ground_truths, "score": scores, **(extra or {})}
    bad = {k: len(v) for k, v in columns.items() if len(v) != n}
    if bad:
        raise ValueError(f"generation_rows: {n} responses but column lengths {bad}")
    return [{"step": step, **{k: v[i] for k, v in columns.items()}} for i in range(n)]
