"""A tiny name -> function registry shared by the advantage-estimator and policy-loss registries.

Pure python. Must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


def _key(name_or_enum) -> str:
    """Accept a plain string or an Enum member (verl registers with ``AdvantageEstimator.GRPO``)."""
    key = getattr(name_or_enum, "value", name_or_enum)
    if not isinstance(key, str) or not key:
        raise TypeError(f"registry names must be non-empty strings (or Enum members with a str value), "
                        f"got {name_or_enum!r}")
    return key


class Registry(Generic[F]):
    """Maps names to functions. Registering a name twice raises; an unknown name raises listing the valid ones."""

    def __init__(self, kind: str, config_key: str):
        self._kind = kind  # e.g. "advantage estimator", used in error messages
        self._config_key = config_key  # the config field a user would change, e.g. "algorithm.adv_estimator"
        self._fns: dict[str, F] = {}

    def register(self, name_or_enum) -> Callable[[F], F]:
        key = _key(name_or_enum)

        def decorator(fn: F) -> F:
            if key in self._fns and self._fns[key] is not fn:
                raise ValueError(f"{self._kind} {key!r} is already registered (by {self._fns[key].__qualname__})")
            self._fns[key] = fn
            return fn

        return decorator

    def get(self, name_or_enum) -> F:
        key = _key(name_or_enum)
        if key not in self._fns:
            raise ValueError(
                f"unknown {self._kind} {key!r} (set {self._config_key} to one of: {', '.join(sorted(self._fns))})"
            )
        return self._fns[key]

    def names(self) -> list[str]:
        return sorted(self._fns)
