"""Rollout-mismatch correction: importance weights and rejection masks between the rollout engine's sampling
log-probs and the actor's old log-probs, with verl's ``algorithm.rollout_correction`` semantics and metric names.

Why: vLLM (bf16, its own kernels) and Megatron score the same sampled tokens differently, so the rollouts are
slightly off-policy for the trainer; the policy gradient is then biased unless it is re-weighted by
``rho_t = pi_old(y_t) / pi_rollout(y_t)`` (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training" (TIS); Liu et al. 2025, "When speed kills stability"; verl ``docs/algo/rollout_corr.md``).

With ``log_ratio = old_log_prob - rollout_log_prob`` ([B, R]) and ``mask`` the response mask:

* importance sampling (``rollout_is``):
    - ``token``:    ``w_t = exp(clamp(log_ratio_t, -20, 20))``;
    - ``sequence``: ``w_t = exp(clamp(sum_t mask * log_ratio, -20, 20))`` for every token of the row;
  then ``rollout_is_threshold`` = a number ``c``: truncated IS, ``w = min(w, c)``; a string ``"lo_hi"``: IcePop,
  ``w = 0`` where ``w`` is outside ``[lo, hi]``. Padding positions get 0. With ``rollout_is_batch_normalize`` the
  weights are divided by their batch mean (tokens for ``token``, rows for ``sequence``). The weights never carry a
  gradient; the policy loss multiplies its per-token loss by them (``compute_policy_loss(rollout_is_weights=...)``).
* rejection sampling (``rollout_rs``, a comma list; every option must pass): per-token divergences
  ``k1 = -log_ratio``, ``k2 = log_ratio^2 / 2``, ``k3 = exp(log_ratio) - 1 - log_ratio``, used per token
  (``token_k*``) or as a per-row sum / mean / max (``seq_sum_k*``, ``seq_mean_k*``, ``seq_max_k{2,3}``). A ``k1``
  statistic is kept inside ``[log lower, log upper]`` (``rollout_rs_threshold`` = ``"lower_upper"``, or one number
  ``u`` meaning ``[1/u, u]``); ``k2``/``k3`` statistics are kept ``<= upper``. Rejected tokens (token options) or
  whole rows (sequence options) leave the response mask, i.e. the loss, the advantages and the critic.

Metrics (``rollout_corr/`` + verl's names): ``rollout_is_{mean,max,min,std,eff_sample_size}``,
``rollout_is_ratio_fraction_{high,low}``, ``rollout_is_seq_{mean,max,min}``, ``rollout_is_batch_norm_factor``,
``rollout_is_oob_ratio`` (IcePop), ``rollout_rs_<option>_{mean,masked_fraction,seq_masked_fraction}``,
``rollout_rs_{masked_fraction,seq_masked_fraction}``, and the off-policy diagnostics ``kl`` (E[log pi_rollout -
log pi_old]), ``k3_kl``, ``training_ppl``, ``rollout_ppl``, ``log_ppl_diff``, ``log_ppl_abs_diff``, ``chi2_token``
(E[rho^2] - 1), ``chi2_seq``.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf. The whole batch is on every rank
(trainer.py), so batch means need no communication.
"""

from __future__ import annotations

import math

import torch

from ttrl_megatron.algorithms.masked import masked_mean, masked_sum

__all__ = ["IS_LEVELS", "RS_OPTIONS", "SAFETY_BOUND", "compute_rollout_correction", "offpolicy_metrics",
           "parse_is_threshold", "parse_rs", "rejection_mask", "rollout_is_weights"]

SAFETY_BOUND = 20.0  # |log ratio| cap before exp(): exp(20) ~ 4.9e8 keeps weights finite in float32
IS_LEVELS = ("token", "sequence")
RS_OPTIONS = ("token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3", "seq_mean_k1",
              "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3")
IS_FIELD = "algorithm.rollout_correction.rollout_is_threshold"
RS_FIELD = "algorithm.rollout_correction.rollout_rs"
RS_THRESHOLD_FIELD = "algorithm.rollout_correction.rollout_rs_threshold"


def _number(text, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{field}={text!r}: not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field}={text!r}: must be a positive finite number")
    return value


def _bounds(spec, field: str) -> tuple[float | None, float]:
    """``"lo_hi"`` -> (lo, hi); a number (or numeric string) -> (None, hi)."""
    if isinstance(spec, bool) or spec is None:
        raise ValueError(f"{field}={spec!r}: give a positive number or a 'lower_upper' string such as '0.5_2.0'")
    text = str(spec).strip()
    if isinstance(spec, str) and "_" in text:
        lo_text, hi_text = text.split("_", 1)
        lo, hi = _number(lo_text, field), _number(hi_text, field)
        if lo > hi:
            raise ValueError(f"{field}={spec!r}: the lower bound exceeds the upper bound")
        return lo, hi
    return None, _number(text, field)


def parse_is_threshold(spec) -> tuple[float | None, float]:
    """``rollout_is_threshold`` -> (IcePop lower bound or None for truncation, upper bound)."""
    return _bounds(spec, IS_FIELD)


def parse_rs(options, thresholds) -> dict[str, tuple[float | None, float]]:
    """``rollout_rs`` (comma list) and ``rollout_rs_threshold`` (one spec for all, or one per option, comma
    separated) -> {option: (lower, upper)} in the order given, duplicates removed. ``k1`` options get a lower bound
    (the reciprocal of a single number); ``k2``/``k3`` options take a single upper bound."""
    names = [o.strip() for o in str(options).split(",") if o.strip()]
    if not names:
        raise ValueError(f"{RS_FIELD}={options!r}: give one or more of {', '.join(RS_OPTIONS)}")
    bad = [o for o in names if o not in RS_OPTIONS]
    if bad:
        raise ValueError(f"{RS_FIELD}={options!r}: unknown option(s) {bad}; use {', '.join(RS_OPTIONS)}")
    names = list(dict.fromkeys(names))
    if thresholds is None:
        raise ValueError(f"{RS_THRESHOLD_FIELD} must be set when {RS_FIELD} is set")
    specs = [s.strip() for s in thresholds.split(",")] if isinstance(thresholds, str) else [thresholds]
    if len(specs) == 1:
        specs = specs * len(names)
    if len(specs) != len(names):
        raise ValueError(f"{RS_THRESHOLD_FIELD}={thresholds!r}: give one threshold, or one per {RS_FIELD} option "
                         f"({len(names)})")
    out = {}
    for name, spec in zip(names, specs):
        lo, hi = _bounds(spec, f"{RS_THRESHOLD_FIELD} (for {name})")
        if name.endswith("k1"):
            out[name] = (1.0 / hi if lo is None else lo, hi)
        elif lo is not None:
            raise ValueError(f"{RS_THRESHOLD_FIELD}={thresholds!r}: {name} takes a single upper bound, not "
                             f"'lower_upper'")
        else:
            out[name] = (None, hi)
    return out


def _masked_max(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    filled = values.masked_fill(mask == 0, float("-inf"))
    out = filled.max() if axis is None else filled.max(dim=axis).values
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def _masked_min(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = values.masked_fill(mask == 0, float("inf")).min()
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def rollout_is_weights(log_ratio: torch.Tensor, mask: torch.Tensor, level: str, threshold,
                       batch_normalize: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated (or IcePop-masked) importance weights ``[B, R]`` (0 on padding) and their metrics (no prefix).

    ``log_ratio`` = old_log_prob - rollout_log_prob ``[B, R]``; ``mask`` the response mask; ``level`` token |
    sequence; ``threshold`` as ``rollout_is_threshold``.
    """
    if level not in IS_LEVELS:
        raise ValueError(f"algorithm.rollout_correction.rollout_is={level!r}: use one of {', '.join(IS_LEVELS)}")
    lower, upper = parse_is_threshold(threshold)
    log_ratio = log_ratio.detach().to(torch.float32)
    mask = mask.to(torch.float32)
    if level == "token":
        log_w = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
        stat = log_ratio  # for the high/low fractions, per token
    else:
        seq = masked_sum(log_ratio, mask, axis=-1)
        log_w = seq.clamp(-SAFETY_BOUND, SAFETY_BOUND).unsqueeze(-1).expand_as(log_ratio)
        stat = seq
    raw = torch.exp(log_w) * mask
    if lower is None:
        weights = raw.clamp(max=upper)
        low_bound = 1.0 / upper
    else:
        inside = (raw >= lower) & (raw <= upper)
        weights = torch.where(inside, raw, torch.zeros_like(raw))
        low_bound = lower
    metrics = _is_metrics(weights, raw, stat, mask, level, upper, low_bound)
    if lower is not None:
        metrics["rollout_is_oob_ratio"] = float(masked_mean(((raw < lower) | (raw > upper)).float(), mask))
    if batch_normalize:
        if level == "token":
            mean = masked_mean(weights, mask)
        else:
            rows = (mask.sum(-1) > 0).float()
            mean = (masked_mean(weights, mask, axis=-1) * rows).sum() / rows.sum().clamp_min(1.0)
        if float(mean) > 1e-8:
            weights = weights / mean
            metrics["rollout_is_batch_norm_factor"] = float(mean)
        else:
            metrics["rollout_is_batch_norm_factor"] = 1.0
    return weights.detach(), metrics


def _is_metrics(weights, raw, stat, mask, level, upper, lower) -> dict[str, float]:
    """verl's rollout_is_* statistics: mean/max/min/std/ESS of the applied weights, shares of raw ratios outside
    [lower, upper] (per token, or per row for sequence weights), per-row mean weights."""
    out = {"rollout_is_mean": float(masked_mean(weights, mask))}
    if level == "sequence":
        rows = mask.sum(-1) > 0
        seq_stat = stat[rows]
        out["rollout_is_max"] = math.exp(min(float(seq_stat.max()), SAFETY_BOUND)) if seq_stat.numel() else 0.0
        out["rollout_is_min"] = math.exp(max(float(seq_stat.min()), -SAFETY_BOUND)) if seq_stat.numel() else 0.0
        out["rollout_is_ratio_fraction_high"] = float((seq_stat > math.log(upper)).float().mean()) \
            if seq_stat.numel() else 0.0
        out["rollout_is_ratio_fraction_low"] = float((seq_stat < math.log(lower)).float().mean()) \
            if seq_stat.numel() else 0.0
    else:
        out["rollout_is_max"] = float(_masked_max(weights, mask))
        out["rollout_is_min"] = float(_masked_min(weights, mask))
        out["rollout_is_ratio_fraction_high"] = float(masked_mean((raw > upper).float(), mask))
        out["rollout_is_ratio_fraction_low"] = float(masked_mean((raw < lower).float(), mask))
    clamped = weights.clamp(0.0, upper)
    mean = masked_mean(clamped, mask)
    var = masked_mean(clamped.square(), mask) - mean.square()
    out["rollout_is_std"] = float(var.clamp_min(0.0).sqrt())
    # Kish's effective sample size of the normalised weights, as a share of the tokens: 1 / E[(w / E[w])^2].
    second = masked_mean((clamped / (mean + 1e-8)).square(), mask)
    out["rollout_is_eff_sample_size"] = float(1.0 / second) if float(second) > 0 else 0.0
    seq_mean = masked_mean(weights, mask, axis=-1)[mask.sum(-1) > 0]
    out["rollout_is_seq_mean"] = float(seq_mean.mean()) if seq_mean.numel() else 0.0
    out["rollout_is_seq_max"] = float(seq_mean.max()) if seq_mean.numel() else 0.0
    out["rollout_is_seq_min"] = float(seq_mean.min()) if seq_mean.numel() else 0.0
    return out


def _divergence(log_ratio: torch.Tensor, kind: str) -> torch.Tensor:
    lr = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    if kind == "k1":
        return -lr
    if kind == "k2":
        return 0.5 * lr.square()
    return torch.exp(lr) - 1.0 - lr


def rejection_mask(log_ratio: torch.Tensor, mask: torch.Tensor, options,
                   thresholds) -> tuple[torch.Tensor, dict[str, float]]:
    """The response mask with rejected tokens / rows set to 0 (same dtype as ``mask``), and metrics (no prefix).

    ``options`` / ``thresholds`` as ``rollout_rs`` / ``rollout_rs_threshold`` (see the module docstring).
    """
    bounds = parse_rs(options, thresholds)
    log_ratio = log_ratio.detach().to(torch.float32)
    maskf = mask.to(torch.float32)
    valid_rows = maskf.sum(-1) > 0
    keep_all = torch.ones_like(maskf)
    metrics: dict[str, float] = {}
    for name, (lower, upper) in bounds.items():
        scope, kind = name.rsplit("_", 1)
        token_stat = _divergence(log_ratio, kind)
        if scope == "token":
            stat = token_stat
        elif scope == "seq_sum":
            stat = masked_sum(token_stat, maskf, axis=-1).unsqueeze(-1).expand_as(maskf)
        elif scope == "seq_mean":
            stat = masked_mean(token_stat, maskf, axis=-1).unsqueeze(-1).expand_as(maskf)
        else:  # seq_max
            stat = _masked_max(token_stat, maskf, axis=-1).unsqueeze(-1).expand_as(maskf)
        if kind == "k1":
            keep = (stat >= math.log(lower)) & (stat <= math.log(upper))
        else:
            keep = stat <= upper
        keep = keep.to(torch.float32)
        keep_all = keep_all * keep
        rejected_rows = ((1.0 - keep) * maskf).sum(-1) > 0
        metrics[f"rollout_rs_{name}_mean"] = float(masked_mean(stat, maskf))
        metrics[f"rollout_rs_{name}_masked_fraction"] = float(masked_mean(1.0 - keep, maskf))
        metrics[f"rollout_rs_{name}_seq_masked_fraction"] = _row_share(rejected_rows, valid_rows)
    metrics["rollout_rs_masked_fraction"] = float(masked_mean(1.0 - keep_all, maskf))
    metrics["rollout_rs_seq_masked_fraction"] = _row_share(((1.0 - keep_all) * maskf).sum(-1) > 0, valid_rows)
    return (mask * keep_all.to(mask.dtype)).to(mask.dtype), metrics


def _row_share(rows: torch.Tensor, valid_rows: torch.Tensor) -> float:
    count = int(valid_rows.sum())
    return float((rows & valid_rows).sum()) / count if count else 0.0


def offpolicy_metrics(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor,
                      mask: torch.Tensor) -> dict[str, float]:
    """Mismatch diagnostics (no prefix): ``kl`` = E[log pi_rollout - log pi_old] per token, ``k3_kl``, per-row
    perplexities ``training_ppl`` / ``rollout_ppl`` (batch means of exp(-mean log-prob)), ``log_ppl_diff`` (mean over
    rows of mean rollout minus mean old log-prob) and its absolute mean, ``chi2_token`` = E[rho^2] - 1,
    ``chi2_seq`` = E_rows[(prod rho)^2] - 1."""
    maskf = mask.to(torch.float32)
    rows = maskf.sum(-1) > 0
    if not bool(rows.any()):
        return {}
    old, roll = old_log_prob.detach().to(torch.float32), rollout_log_prob.detach().to(torch.float32)
    log_ratio = old - roll
    old_row = masked_mean(old, maskf, axis=-1)[rows]
    roll_row = masked_mean(roll, maskf, axis=-1)[rows]
    diff = roll_row - old_row
    safe = log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    seq = masked_sum(log_ratio, maskf, axis=-1)[rows].clamp(-SAFETY_BOUND, SAFETY_BOUND)
    return {
        "kl": float(masked_mean(roll - old, maskf)),
        "k3_kl": float(masked_mean(torch.exp(safe) - safe - 1.0, maskf)),
        "training_ppl": float(torch.exp(-old_row).mean()),
        "rollout_ppl": float(torch.exp(-roll_row).mean()),
        "log_ppl_diff": float(diff.mean()),
        "log_ppl_abs_diff": float(diff.abs().mean()),
        "chi2_token": float(masked_mean(torch.exp(2.0 * safe), maskf) - 1.0),
        "chi2_seq": float(torch.exp(2.0 * seq).mean() - 1.0),
    }


def compute_rollout_correction(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor,
                               response_mask: torch.Tensor, *, rollout_is: str | None = None,
                               rollout_is_threshold=2.0, rollout_is_batch_normalize: bool = False,
                               rollout_rs: str | None = None, rollout_rs_threshold=None
                               ) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, float]]:
    """Importance weights (None when ``rollout_is`` is None), the response mask after rejection sampling (the input
    itself when ``rollout_rs`` is None) and the ``rollout_corr/*`` metrics. All tensors ``[B, R]``."""
    if not old_log_prob.shape == rollout_log_prob.shape == response_mask.shape:
        raise ValueError(f"rollout correction: shapes differ: old_log_prob {tuple(old_log_prob.shape)}, "
                         f"rollout_log_probs {tuple(rollout_log_prob.shape)}, response_mask "
                         f"{tuple(response_mask.shape)}")
    log_ratio = old_log_prob.detach().to(torch.float32) - rollout_log_prob.detach().to(torch.float32)
    metrics: dict[str, float] = {}
    weights = None
    if rollout_is is not None:
        weights, is_metrics = rollout_is_weights(log_ratio, response_mask, rollout_is, rollout_is_threshold,
                                                 rollout_is_batch_normalize)
        weights = weights.to(old_log_prob.dtype)
        metrics.update(is_metrics)
    mask = response_mask
    if rollout_rs is not None:
        mask, rs_metrics = rejection_mask(log_ratio, response_mask, rollout_rs, rollout_rs_threshold)
        metrics.update(rs_metrics)
    metrics.update(offpolicy_metrics(old_log_prob, rollout_log_prob, response_mask))
    return weights, mask, {f"rollout_corr/{k}": v for k, v in metrics.items()}
