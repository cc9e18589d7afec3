"""How losses and estimators read the ``config`` argument, verl's way, and the actor config our update passes.

verl hands its policy losses the actor config (``verl.workers.config.ActorConfig``, a dataclass that also answers
``.get``) and its estimators the algorithm config (``AlgoConfig``, or an OmegaConf ``DictConfig``), and reads them with
attribute access (``config.clip_ratio``, ``config.policy_loss.clip_cov_ratio``) or ``config.get(key, default)``.
:func:`config_get` does both, so any of these work as ``config``: verl's own config objects, an OmegaConf
``DictConfig``, a plain ``dict``, our typed sections (``ttrl_megatron.config.ActorConfig`` / ``AlgorithmConfig``)
and :class:`ActorLossConfig`, the object our actor passes.

:class:`ActorLossConfig` has the fields verl's policy losses read, under verl's names, plus two runtime fields:
``global_batch_info`` (verl's: the whole-mini-batch counts ``dp_size`` / ``batch_num_tokens`` / ``global_batch_size``
/ ``loss_scale_factor`` that losses pass on to ``agg_loss(**config.global_batch_info)``; the actor fills it per
micro-batch, as verl's ``ppo_loss`` does) and ``generator`` (ours: the random source of clip_cov's token choice, on
the device of the log-probs; verl draws from the global host RNG). It has no defaults for the settings: their one
default lives on the config dataclasses.

Pure python; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

_MISSING = object()


def config_get(config, key: str, default: Any = _MISSING, *, who: str = "") -> Any:
    """``config.<key>`` for attribute-style configs, ``config.get(key)`` for mappings; ``default`` when absent.

    Without a default a missing key (or ``config=None``) raises ValueError naming ``who`` (the caller) and the key.
    """
    value = _MISSING
    if config is not None:
        value = config.get(key, _MISSING) if isinstance(config, Mapping) else getattr(config, key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            held = "config=None" if config is None else f"the {type(config).__name__} passed as config"
            raise ValueError(f"{who or 'this function'} reads config key {key!r}, but {held} has none; pass the "
                             f"actor/algorithm config (verl's, ours, a DictConfig or a dict)")
        return default
    return value


def clip_ratios(config, who: str) -> tuple[float, float]:
    """(clip_ratio_low, clip_ratio_high), each falling back to ``clip_ratio`` when None (verl's rule)."""
    if config is None:
        config_get(config, "clip_ratio", who=who)  # raises: verl's losses require the actor config
    clip_ratio = config_get(config, "clip_ratio", None, who=who)
    low = config_get(config, "clip_ratio_low", None, who=who)
    high = config_get(config, "clip_ratio_high", None, who=who)
    low = clip_ratio if low is None else low
    high = clip_ratio if high is None else high
    if low is None or high is None:
        raise ValueError(f"{who} needs actor.clip_ratio (or both clip_ratio_low and clip_ratio_high) in its config")
    return float(low), float(high)


def policy_loss_value(config, key: str, fallback, who: str):
    """``config.policy_loss.<key>``, or ``fallback`` when the section or the key is missing or None (verl's rule)."""
    section = config_get(config, "policy_loss", None, who=who)
    value = config_get(section, key, None, who=who) if section is not None else None
    return fallback if value is None else value


def global_batch_info(config) -> dict:
    """verl's ``config.global_batch_info`` (the keyword arguments of agg_loss), or {} (local normalization)."""
    info = config_get(config, "global_batch_info", None)
    return dict(info) if info else {}


class _Readable:
    """verl's ``BaseConfig`` read interface on a dataclass: ``.get(key, default)``, ``[key]`` and ``key in cfg``."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)


@dataclass
class PolicyLossSettings(_Readable):
    """verl's ``actor.policy_loss`` section as the policy losses read it."""

    loss_mode: str
    clip_cov_ratio: float
    clip_cov_lb: float
    clip_cov_ub: float
    kl_cov_ratio: float
    ppo_kl_coef: float


@dataclass
class ActorLossConfig(_Readable):
    """The ``config`` our actor passes to every policy loss: verl's ``ActorConfig`` fields that losses read."""

    clip_ratio: float
    clip_ratio_low: Optional[float]
    clip_ratio_high: Optional[float]
    clip_ratio_c: float
    loss_agg_mode: str
    loss_scale_factor: Optional[float]
    tau_pos: float
    tau_neg: float
    policy_loss: PolicyLossSettings
    global_batch_info: dict = field(default_factory=dict)  # set per micro-batch by the actor (verl's ppo_loss)
    generator: Any = None  # torch.Generator on the log-probs' device for clip_cov (None: the global RNG there)
