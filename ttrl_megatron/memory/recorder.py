"""Peak memory per phase of a training step, next to its wall time: ``memory/peak_gib/<phase>`` (bytes allocated by
torch at the phase's peak), ``memory/peak_reserved_gib/<phase>`` (held by torch's caching allocator) and
``memory/device_used_gib/<phase>`` (the whole device's used memory when the phase ends, as ``nvidia-smi`` counts it:
CUDA context, NCCL, and vLLM's own allocator included), with the names of memory/plan.py's phases, so a GPU run's
metrics sit next to the plan (scripts/gpu_check.sh).

``PhaseMemory(backend)`` is a context manager per phase, like the trainer's ``PhaseTimer`` (which owns one:
trainer/metrics.py). Phases nest (``step`` holds ``gen`` ...): each phase start folds the backend's running peak
into every open phase and then resets it (``torch.cuda.reset_peak_memory_stats``), so an inner phase sees only its
own peak and an outer one the maximum over everything inside it.

Backends: ``CudaBackend`` (``torch.cuda.memory_allocated`` / ``max_memory_allocated`` / ``max_memory_reserved``,
this process's device) and ``CounterBackend`` (a ``StorageCounter``, for CPU tests). ``phase_memory()`` gives the
CUDA recorder when this process uses CUDA, else a recorder that records nothing (CPU runs log no memory metrics).

``metrics()`` reports the maximum over all ranks (an all-reduce, so call it on every rank: the trainer does, once
per step), because pipeline stages differ and the plan's figure is the worst rank.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch

GIB = float(1 << 30)
SERIES = ("peak_gib", "peak_reserved_gib", "device_used_gib")


class CudaBackend:
    """torch's CUDA caching-allocator statistics of the current device."""

    def allocated(self) -> Tuple[int, int]:
        return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

    def peak(self) -> Tuple[int, int]:
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def device_used(self) -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free


class CounterBackend:
    """A ``StorageCounter``'s live/peak bytes (no allocator: reserved = allocated)."""

    def __init__(self, counter):
        self.counter = counter

    def allocated(self) -> Tuple[int, int]:
        return self.counter.current, self.counter.current

    def peak(self) -> Tuple[int, int]:
        return self.counter.peak, self.counter.peak

    def reset_peak(self) -> None:
        self.counter.reset_peak()

    def device_used(self) -> int:
        return self.counter.current


class PhaseMemory:
    """Per-phase peaks from ``backend`` (``None``: record nothing)."""

    def __init__(self, backend=None, reduce_over_ranks: bool = True):
        self.backend = backend
        self.reduce_over_ranks = reduce_over_ranks
        self.peaks: Dict[str, Tuple[int, int, int]] = {}
        self._open: List[list] = []  # [phase, (allocated peak, reserved peak)] of the phases entered, outermost first

    def _fold(self) -> None:
        peak = self.backend.peak()
        for entry in self._open:
            entry[1] = tuple(max(a, b) for a, b in zip(entry[1], peak))

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.backend is None:
            yield
            return
        self._fold()
        self.backend.reset_peak()
        self._open.append([phase, self.backend.allocated()])
        try:
            yield
        finally:
            self._fold()
            name, peak = self._open.pop()
            old = self.peaks.get(name, (0, 0, 0))
            self.peaks[name] = tuple(max(a, b) for a, b in zip(old, (*peak, self.backend.device_used())))

    def metrics(self) -> Dict[str, float]:
        """``memory/{peak_gib,peak_reserved_gib,device_used_gib}/<phase>``, max over ranks ({} when off)."""
        if self.backend is None or not self.peaks:
            return {}
        names = sorted(self.peaks)
        values = [float(v) for name in names for v in self.peaks[name]]
        if self.reduce_over_ranks:
            values = _max_over_ranks(values)
        out = {}
        for i, name in enumerate(names):
            for j, series in enumerate(SERIES):
                out[f"memory/{series}/{name}"] = values[len(SERIES) * i + j] / GIB
        return out


def _max_over_ranks(values: List[float]) -> List[float]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    from ttrl_megatron.distributed.devices import collective_device

    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def phase_memory(backend: Optional[object] = None) -> PhaseMemory:
    """The recorder for this process: ``backend`` if given, CUDA's statistics when this process has initialised
    CUDA, else a recorder that records nothing."""
    if backend is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        backend = CudaBackend()
    return PhaseMemory(backend)
