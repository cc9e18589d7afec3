"""A tiny name -> function registry shared by the advantage-estimator and policy-loss registries, and the import of
the user's modules that register more (``import_external_libs``).

Pure python. Must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import importlib
import inspect
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


def import_external_libs(external_libs) -> list[str]:
    """Import the user's modules so that their ``register_adv_est`` / ``register_policy_loss`` decorators run
    (verl's ``import_external_libs``; our config field ``actor_rollout_ref.model.external_lib``).

    ``external_libs``: None, a module name (``my_pkg.my_algos``), a comma-separated string of names, or a list of
    names; each must be importable (on PYTHONPATH) in every training process. Returns the names imported. An import
    failure raises ImportError naming the module and the config field.
    """
    if not external_libs:
        return []
    names = external_libs.split(",") if isinstance(external_libs, str) else list(external_libs)
    names = [str(n).strip() for n in names if str(n).strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the user's module may fail in any way while importing
            raise ImportError(f"actor_rollout_ref.model.external_lib: cannot import {name!r} "
                              f"({type(exc).__name__}: {exc}); it must be a module on PYTHONPATH") from exc
    return names


def accepts_call(fn: Callable, positional: int, keywords) -> str | None:
    """None if ``fn`` can be called with ``positional`` positional arguments and the given keywords, else why not."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins without a signature: let the call decide
    try:
        sig.bind(*([None] * positional), **{k: None for k in keywords})
    except TypeError as exc:
        return str(exc)
    return None
