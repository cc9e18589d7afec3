"""Train-inference mismatch on real rollouts: how far the rollout engine's probabilities of the sampled tokens are
from the actor's (verl's ``training/rollout_probs_diff_{max,mean,std}`` and
``training/rollout_actor_probs_pearson_corr``), as nine sums that add up over disjoint parts of a batch, so rows held
on different ranks give the whole batch's figures (trainer/corrections.py gathers the sums).

Pure torch; nothing here communicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def rollout_probs_diff(rollout_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                       response_mask: torch.Tensor) -> dict[str, float]:
    """Token-probability mismatch between the rollout engine and the actor on the same sampled tokens.

    Args: rollout_log_probs `[B, R]` (vLLM's sampling log-probs), old_log_probs `[B, R]` (the actor's), response_mask
    `[B, R]` (1 on generated tokens). Returns verl's metric names: `training/rollout_probs_diff_{max,mean,std}` of
    |exp(a) - exp(b)| over masked tokens, and `training/rollout_actor_probs_pearson_corr` of the two probabilities
    (Pearson correlation, as in verl's debug metrics). No masked token: an empty dict.
    """
    return probs_diff_metrics(probs_diff_sums(rollout_log_probs, old_log_probs, response_mask))


PROBS_DIFF_SUMS = ("tokens", "diff", "diff_sq", "diff_max", "rollout", "actor", "rollout_sq", "actor_sq", "cross")
_MAX = PROBS_DIFF_SUMS.index("diff_max")  # the one entry merged by max, not by sum


def probs_diff_sums(rollout_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                    response_mask: torch.Tensor) -> torch.Tensor:
    """`[9]` float64 host sums over the masked tokens (names: PROBS_DIFF_SUMS; diff = |p_rollout - p_actor|, p =
    exp(log-prob)), from which `probs_diff_metrics` builds the metrics: parts of a batch (rows on different ranks)
    are combined by `merge_probs_diff_sums`."""
    if not rollout_log_probs.shape == old_log_probs.shape == response_mask.shape:
        raise ValueError(f"rollout_probs_diff: shapes differ: rollout_log_probs {tuple(rollout_log_probs.shape)}, "
                         f"old_log_probs {tuple(old_log_probs.shape)}, response_mask {tuple(response_mask.shape)}")
    keep = response_mask.bool()
    p_r = rollout_log_probs.double()[keep].exp()
    p_a = old_log_probs.double()[keep].exp()
    diff = (p_r - p_a).abs()
    stats = [diff.numel(), diff.sum(), diff.square().sum(), diff.max() if diff.numel() else 0.0, p_r.sum(), p_a.sum(),
             p_r.square().sum(), p_a.square().sum(), (p_r * p_a).sum()]
    return torch.tensor([float(v) for v in stats], dtype=torch.float64)  # host: nine metric sums


def merge_probs_diff_sums(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sums of the union of disjoint token sets (max for the max)."""
    stacked = torch.stack([p.to(torch.float64) for p in parts])
    merged = stacked.sum(dim=0)
    merged[_MAX] = stacked[:, _MAX].max()
    return merged


def probs_diff_metrics(sums: torch.Tensor) -> dict[str, float]:
    """verl's mismatch metrics from `probs_diff_sums` (std unbiased, as torch.std; Pearson from the co-moments)."""
    n, s_d, s_dd, d_max, s_r, s_a, s_rr, s_aa, s_ra = (float(v) for v in sums)
    if n == 0:
        return {}
    mean = s_d / n
    var = max(s_dd - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
    out = {"training/rollout_probs_diff_max": d_max, "training/rollout_probs_diff_mean": mean,
           "training/rollout_probs_diff_std": math.sqrt(var)}
    cov, var_r, var_a = s_ra - s_r * s_a / n, s_rr - s_r * s_r / n, s_aa - s_a * s_a / n
    denom = math.sqrt(max(var_r, 0.0) * max(var_a, 0.0))
    out["training/rollout_actor_probs_pearson_corr"] = cov / denom if denom > 0 else float("nan")
    return out
