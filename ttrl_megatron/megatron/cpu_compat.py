"""Compatibility layer that lets megatron-core 0.16.1 run on a CPU-only torch build (gloo).

megatron-core assumes CUDA throughout. On a machine without CUDA five things block it (found by ablation, see
shared/PLATFORM.md "megatron-core 0.16.1 on CPU"); each is one named piece here:

- ``current_device``: ~135 sites call ``torch.cuda.current_device()`` to place tensors -> the CPU device.
- ``synchronize``: ``torch.cuda.synchronize()`` after batched p2p (pipeline parallel) -> no-op.
- ``rng_tracker``: the model-parallel RNG tracker (``tensor_parallel.random``) saves/restores CUDA generator
  states around every attention forward and at seeding -> backed by the CPU generator.
- ``cuda_factories``: hard-coded ``device="cuda"`` in tensor factories (pipeline schedules, optimizer, clip_grads,
  grad scaler, default causal mask) and ``Tensor.cuda()`` (tied embeddings under PP) -> CPU.
- ``tensor_type``: ``Tensor.type()`` string checks against ``'torch.cuda.FloatTensor'`` (distributed optimizer,
  gradient clipping) -> CPU tensors report their CUDA type name, but only to callers inside megatron.core.

Scope, to keep the process-global footprint small: ``torch.cuda`` and the factories are replaced through a proxy
bound as the ``torch`` global of already-imported ``megatron.core`` modules only (user code keeps the real torch);
``Tensor.cuda``/``Tensor.type`` are patched on the class but change behaviour only when CUDA is unavailable
(``.cuda()`` would raise anyway) and, for ``type()``, only for callers in ``megatron.core``.

``apply_cpu_compat()`` is idempotent (a repeated call also covers megatron.core modules imported since the last one:
call it again after importing a megatron.core module that was not loaded yet), does nothing when CUDA is available (never active on a GPU run), and refuses
any megatron-core version other than the one it was written against. ``remove_cpu_compat()`` restores everything
(used by the tests that show each piece is still needed).

Imports: torch and megatron.core only; nothing from the rest of ttrl_megatron.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

SUPPORTED_MEGATRON_CORE = "0.16.1"
PIECES: Tuple[str, ...] = ("current_device", "synchronize", "rng_tracker", "cuda_factories", "tensor_type")

# Modules whose `torch` global is swapped for the proxy. Importing them up front makes sure lazily imported
# megatron code (schedules, optimizer) is patched too; every other already-imported megatron.core module is
# covered by the sys.modules walk in `_bind_proxy`.
_PRELOAD = (
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed",
    "megatron.core.transformer.utils",
    "megatron.core.dist_checkpointing",
)
_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "eye")

_state: Dict[str, object] = {"active": (), "undo": [], "proxy": None}


class _CudaNamespace:
    """Stands in for ``torch.cuda`` inside megatron.core modules; forwards everything not overridden."""

    def __init__(self, overrides: Dict[str, Callable]):
        self._overrides = overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(torch.cuda, name)


def _cpu_device(device):
    """Map a CUDA device spec (``"cuda"``, ``"cuda:0"``, ``torch.device("cuda")``) to the CPU; others unchanged."""
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    return device


def _wrap_factory(fn: Callable) -> Callable:
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        # pin_memory=True needs a CUDA runtime; on CPU it has no meaning.
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    factory.__wrapped__ = fn
    return factory


class _TorchProxy:
    """Stands in for the ``torch`` module inside megatron.core modules (see module docstring)."""

    def __init__(self, pieces: Iterable[str]):
        pieces = set(pieces)
        cuda_overrides: Dict[str, Callable] = {}
        if "current_device" in pieces:
            cuda_overrides["current_device"] = lambda: torch.device("cpu")
        if "synchronize" in pieces:
            cuda_overrides["synchronize"] = lambda *a, **k: None
        self.cuda = _CudaNamespace(cuda_overrides)
        self._factories = (
            {name: _wrap_factory(getattr(torch, name)) for name in _FACTORIES} if "cuda_factories" in pieces else {}
        )

    def __getattr__(self, name):
        if name in self._factories:
            return self._factories[name]
        return getattr(torch, name)


def _megatron_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def _bind_proxy(proxy: _TorchProxy, undo: List[Callable]) -> None:
    for name in _PRELOAD:
        importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and module is not None and getattr(module, "torch", None) is torch:
            module.torch = proxy
            undo.append(lambda m=module: setattr(m, "torch", torch))


def _patch_rng(undo: List[Callable]) -> None:
    """Back megatron's model-parallel RNG tracker by the CPU default generator."""
    from megatron.core.tensor_parallel import random as mrandom

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    def add(self, name, seed):
        # Same contract as CudaRNGStatesTracker.add: a fresh named state seeded with `seed`, caller state untouched.
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    tracker_cls = mrandom.CudaRNGStatesTracker
    originals = (mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state, tracker_cls.add)
    mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state, tracker_cls.add = get_state, set_state, add

    # The tracker warns when the CPU generator moves inside a fork; with a CPU-backed tracker that is expected.
    log_filter = _DropMessage("CPU RNG state changed within GPU RNG context")
    logger = logging.getLogger(mrandom.__name__)
    logger.addFilter(log_filter)

    def restore():
        mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state, tracker_cls.add = originals
        logger.removeFilter(log_filter)

    undo.append(restore)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _patch_tensor_cuda(undo: List[Callable]) -> None:
    """``Tensor.cuda()`` returns the tensor itself (CUDA is unavailable, so the original could only raise)."""
    original = torch.Tensor.cuda

    def cuda(self, *args, **kwargs):
        return self

    torch.Tensor.cuda = cuda
    undo.append(lambda: setattr(torch.Tensor, "cuda", original))


def _patch_tensor_type(undo: List[Callable]) -> None:
    """``Tensor.type()`` (no argument) called from megatron.core reports ``torch.cuda.*Tensor`` for CPU tensors."""
    original = torch.Tensor.type

    def type_(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not args and not kwargs and isinstance(result, str) and result.startswith("torch."):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core") and not result.startswith("torch.cuda."):
                return "torch.cuda." + result[len("torch."):]
        return result

    torch.Tensor.type = type_
    undo.append(lambda: setattr(torch.Tensor, "type", original))


def apply_cpu_compat(pieces: Optional[Iterable[str]] = None) -> Tuple[str, ...]:
    """Apply the CPU compatibility pieces (all by default) when CUDA is unavailable; idempotent.

    Args:
        pieces: subset of ``PIECES`` to apply (tests pass all but one to show that one is still needed).
    Returns the tuple of active pieces (empty on a CUDA machine).
    Raises RuntimeError on a megatron-core version other than ``SUPPORTED_MEGATRON_CORE``: the patches target
    that version's internals, and a silent mismatch would break in confusing ways.
    """
    if torch.cuda.is_available():
        return ()
    wanted = tuple(PIECES if pieces is None else pieces)
    unknown = sorted(set(wanted) - set(PIECES))
    if unknown:
        raise ValueError(f"apply_cpu_compat: unknown piece(s) {unknown}; known pieces are {list(PIECES)}")
    version = _megatron_version()
    if version != SUPPORTED_MEGATRON_CORE:
        raise RuntimeError(
            f"ttrl_megatron.megatron.cpu_compat targets megatron-core {SUPPORTED_MEGATRON_CORE} but "
            f"{version} is installed; install megatron-core=={SUPPORTED_MEGATRON_CORE} for CPU runs "
            "(or run on a CUDA machine, where this layer is not used)"
        )
    if _state["active"]:
        if set(_state["active"]) == set(wanted):
            # megatron.core modules imported since the last call get the proxy too
            _bind_proxy(_state["proxy"], _state["undo"])
            return _state["active"]
        remove_cpu_compat()
    undo: List[Callable] = []
    proxy = _TorchProxy(wanted)
    _bind_proxy(proxy, undo)
    if "rng_tracker" in wanted:
        _patch_rng(undo)
    if "cuda_factories" in wanted:
        _patch_tensor_cuda(undo)
    if "tensor_type" in wanted:
        _patch_tensor_type(undo)
    _state.update(active=tuple(p for p in PIECES if p in wanted), undo=undo, proxy=proxy)
    return _state["active"]


def remove_cpu_compat() -> None:
    """Undo every patch applied by ``apply_cpu_compat`` (in reverse order)."""
    for restore in reversed(_state["undo"]):
        restore()
    _state.update(active=(), undo=[], proxy=None)


def active_pieces() -> Tuple[str, ...]:
    """The pieces currently applied (empty when the layer is off)."""
    return _state["active"]
