"""Group filtering of DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476 §3.2; verl algorithm.filter_groups).

A prompt group (the rollouts of one prompt, rows sharing a group id) "has signal" when its rollouts do not all have
the same value of the chosen metric (verl: the group's ``np.std`` of the metric is > 0) or when it holds a single
rollout (verl keeps those). For the group-relative estimators (grpo, grpo_nsr, rloo, ...) a group whose rewards are all
equal has advantage exactly 0 on every token: it costs a full update's compute and teaches nothing.

Pure Python + numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["group_rows", "groups_with_signal", "constant_group_share"]


def group_rows(group_ids: Sequence) -> dict:
    """{group id: [row, ...]} in order of first appearance."""
    groups: dict = {}
    for row, gid in enumerate(group_ids):
        groups.setdefault(gid, []).append(row)
    return groups


def _value(v) -> float:
    """A metric value as a float; None (a row whose reward function failed) and NaN compare equal to each other."""
    if v is None:
        return math.nan
    return float(v)


def _varies(values: list[float]) -> bool:
    finite = [v for v in values if not math.isnan(v)]
    has_nan = len(finite) != len(values)
    return (has_nan and bool(finite)) or (len(finite) > 1 and float(np.std(finite)) > 0.0)


def groups_with_signal(group_ids: Sequence, values: Sequence) -> dict:
    """{group id: True when the group's ``values`` are not all equal, or it has one row}, in first-appearance order.

    ``group_ids``/``values``: one entry per row (e.g. ``uid`` and the per-row metric).
    """
    if len(group_ids) != len(values):
        raise ValueError(f"groups_with_signal: {len(group_ids)} group ids but {len(values)} values")
    out = {}
    for gid, rows in group_rows(group_ids).items():
        vals = [_value(values[r]) for r in rows]
        out[gid] = len(rows) == 1 or _varies(vals)
    return out


def constant_group_share(group_ids: Sequence, values: Sequence) -> float:
    """Share of ROWS that belong to groups of >= 2 rows whose ``values`` are all equal (0.0 for no rows): for
    group-relative estimators, the share of the batch whose advantage is exactly 0."""
    if len(group_ids) == 0:
        return 0.0
    signal = groups_with_signal(group_ids, values)
    groups = group_rows(group_ids)
    dead = sum(len(rows) for gid, rows in groups.items() if len(rows) > 1 and not signal[gid])
    return dead / len(group_ids)
