"""KL estimators, KL coefficient controllers and the in-reward KL penalty.

Follows reference/algorithms-semantics.md §1.1-§1.2 (verl's ``kl_penalty`` / ``apply_kl_penalty``; Schulman's
k1/k2/k3 estimators, http://joschu.net/blog/kl-approx.html; adaptive control from Ziegler et al. 2019,
arXiv 1909.08593). Any estimator name may end in ``+`` (verl's straight-through variants, e.g. ``k3+``): the value is
that estimator's and the gradient is k2's (``k2 - sg(k2) + sg(value)``).

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from typing import Any

import torch

from ttrl_megatron.algorithms.masked import masked_mean

_ALIASES = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}
KL_PENALTY_NAMES = tuple(sorted(_ALIASES)) + tuple(sorted(f"{name}+" for name in _ALIASES))


def kl_penalty_forward(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference, [B, T] -> [B, T] (no straight-through)."""
    kind = _ALIASES.get(kl_penalty)
    if kind == "k1":
        return logprob - ref_logprob
    if kind == "abs":
        return (logprob - ref_logprob).abs()
    if kind == "k2":
        return 0.5 * (logprob - ref_logprob).square()
    if kind == "k3":
        # Clamps as in verl: keep exp() finite and the estimate bounded for far-off tokens.
        d = torch.clamp(ref_logprob - logprob, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)
    if kl_penalty == "full":
        raise NotImplementedError(
            "kl_penalty='full' needs the full-vocabulary distributions, which this per-token API does not receive; "
            f"use one of: {', '.join(KL_PENALTY_NAMES)}"
        )
    raise ValueError(f"unknown kl_penalty {kl_penalty!r}; valid names: {', '.join(KL_PENALTY_NAMES)}")


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate [B, T]; a name ending in ``+`` is straight-through (value of the named estimator,
    gradient of k2), as in verl."""
    if kl_penalty.endswith("+"):
        value = kl_penalty_forward(logprob, ref_logprob, kl_penalty[:-1])
        if _ALIASES.get(kl_penalty[:-1]) == "k2":
            return value
        k2 = kl_penalty_forward(logprob, ref_logprob, "k2")
        return k2 - k2.detach() + value.detach()
    return kl_penalty_forward(logprob, ref_logprob, kl_penalty)


class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op."""

    kind = "fixed"

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_type(state, self.kind)
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019: move ``value`` toward the target KL.

    ``e = clip(current_kl / target_kl - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int):
        if horizon <= 0:
            raise ValueError(f"algorithm.kl_ctrl.horizon must be > 0 for the adaptive controller, got {horizon}")
        if target_kl <= 0:
            raise ValueError(f"algorithm.kl_ctrl.target_kl must be > 0 for the adaptive controller, got {target_kl}")
        self.value = float(init_kl_coef)
        self.target = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        # target/horizon are saved for inspection only; on load the current config's values are kept.
        return {"type": self.kind, "value": self.value, "target_kl": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_type(state, self.kind)
        self.value = float(state["value"])


def _check_state_type(state: dict[str, Any], kind: str) -> None:
    if state.get("type") != kind:
        raise ValueError(f"KL controller checkpoint holds a {state.get('type')!r} controller, but "
                         f"algorithm.kl_ctrl.type is {kind!r}; make them match")


def get_kl_controller(kl_ctrl, kl_coef: float | None = None, horizon: int | None = None,
                      target_kl: float | None = None):
    """Build a controller from ``algorithm.kl_ctrl``.

    ``kl_ctrl`` is either the type name (``"fixed"`` / ``"adaptive"``, then pass the numbers as arguments) or a
    config object with attributes ``type, kl_coef, horizon, target_kl`` (verl's ``get_kl_controller(cfg.kl_ctrl)``).
    """
    if isinstance(kl_ctrl, str):
        kind = kl_ctrl
    else:
        kind, kl_coef, horizon, target_kl = kl_ctrl.type, kl_ctrl.kl_coef, kl_ctrl.horizon, kl_ctrl.target_kl
    if kl_coef is None:
        raise ValueError("algorithm.kl_ctrl.kl_coef is required")
    if kind == "fixed":
        return FixedKLController(kl_coef=kl_coef)
    if kind == "adaptive":
        if horizon is None or target_kl is None:
            raise ValueError("algorithm.kl_ctrl.horizon and algorithm.kl_ctrl.target_kl are required for type=adaptive")
        return AdaptiveKLController(init_kl_coef=kl_coef, target_kl=target_kl, horizon=horizon)
    raise ValueError(f"unknown algorithm.kl_ctrl.type {kind!r}; valid types: adaptive, fixed")


def apply_kl_penalty(data, *args, **kwargs):
    """Subtract ``beta * KL`` per token from the scores, then update the controller (§1.1). Two call forms:

    - verl's ``apply_kl_penalty(data, kl_ctrl, kl_penalty="kl") -> (data, metrics)``: ``data`` is a batch (our
      DataProto) with ``token_level_scores``, ``old_log_probs``, ``ref_log_prob``, ``response_mask`` in ``.batch``;
      ``data.batch["token_level_rewards"]`` is written.
    - tensors: ``apply_kl_penalty(token_level_scores, old_log_prob, ref_log_prob, response_mask, kl_ctrl,
      kl_penalty="kl") -> (token_level_rewards, metrics)`` (:func:`apply_kl_penalty_to_scores`).
    """
    if isinstance(data, torch.Tensor):
        return apply_kl_penalty_to_scores(data, *args, **kwargs)
    return _apply_kl_penalty_to_batch(data, *args, **kwargs)


def _apply_kl_penalty_to_batch(data, kl_ctrl, kl_penalty: str = "kl"):
    t = data.batch
    t["token_level_rewards"], metrics = apply_kl_penalty_to_scores(
        t["token_level_scores"], t["old_log_probs"], t["ref_log_prob"], t["response_mask"], kl_ctrl, kl_penalty)
    return data, metrics


@torch.no_grad()
def apply_kl_penalty_to_scores(token_level_scores: torch.Tensor, old_log_prob: torch.Tensor,
                               ref_log_prob: torch.Tensor, response_mask: torch.Tensor, kl_ctrl,
                               kl_penalty: str = "kl"):
    """The tensor form of :func:`apply_kl_penalty`.

    Args:
        token_level_scores, old_log_prob, ref_log_prob, response_mask: [B, T].
        kl_ctrl: a Fixed/Adaptive controller; its ``value`` before the update is the beta used.
        kl_penalty: KL estimator name (see :func:`kl_penalty`).

    Returns:
        (token_level_rewards [B, T], metrics) with ``actor/reward_kl_penalty`` = mean over rows of the per-row masked
        mean KL, and ``actor/reward_kl_penalty_coeff`` = beta used. The controller is updated with ``n_steps = B``.
        Call it on the whole step batch: a per-shard call would update the controller once per shard.
    """
    kld = _kl_penalty(old_log_prob, ref_log_prob, kl_penalty)
    # where(): log-probs of padding may be -inf, and -inf * 0 would put NaN into the rewards
    kld = torch.where(response_mask != 0, kld, torch.zeros((), dtype=kld.dtype, device=kld.device)) * response_mask
    beta = kl_ctrl.value
    token_level_rewards = token_level_scores - beta * kld
    current_kl = masked_mean(kld, response_mask, axis=-1).mean().item()
    kl_ctrl.update(current_kl=current_kl, n_steps=token_level_scores.shape[0])
    return token_level_rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}


def compute_rewards(token_level_scores, old_log_prob, ref_log_prob, kl_ratio):
    """verl's helper: ``token_level_scores - kl_ratio * (old_log_prob - ref_log_prob)`` (k1 KL, no mask, no
    controller)."""
    return token_level_scores - (old_log_prob - ref_log_prob) * kl_ratio


_kl_penalty = kl_penalty  # apply_kl_penalty's argument named like verl's shadows the function
