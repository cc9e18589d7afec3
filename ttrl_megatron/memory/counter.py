"""Count the bytes of tensor storages alive while code runs, on any device (real CPU tensors, fake tensors).

``StorageCounter`` is a ``TorchDispatchMode``: every op output whose storage it has not seen is booked (its
``nbytes``) until the storage dies (a weak reference's callback unbooks it). An output that shares an input's storage
(a view, an in-place result) books nothing, also when that input existed before the counter (``weight.t()``); a fresh output (``clone``, ``float()``, a matmul) books its full size. It
keeps ``current`` (bytes alive now) and ``peak`` (highest ``current`` since the last ``reset_peak``): the same two
numbers ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` give on a GPU, without the CUDA allocator's
512-byte rounding.

Tensors that existed before the counter was entered (parameters, optimizer state) are not booked unless handed to
``track``. Under ``FakeTensorMode`` (measuring real shapes without memory, gpu-bringup-anchors.md §12) enter the
fake mode first and this counter second: the innermost mode sees the ops first, so both real and fake outputs reach
it (the reverse order would let the fake mode answer the ops and the counter book nothing).

``torch.UntypedStorage.resize_`` does not go through the dispatcher; megatron only uses it in offload paths that
the measured phases do not take (a resize would show up as a mismatch against the plan, not go silent: the test
compares every phase).

torch only.
"""
from __future__ import annotations

import weakref
from typing import Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary


class StorageCounter(TorchDispatchMode):
    """Live and peak bytes of the storages created while this mode is active (plus those handed to ``track``)."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()  # storage -> (nbytes, weakref keeping the unbook callback alive)

    # -- booking ------------------------------------------------------------------------------------------------
    def _book(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        ref = weakref.ref(storage, self._unbook_callback(nbytes))
        self._seen[storage] = (nbytes, ref)
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current

    def _unbook_callback(self, nbytes: int):
        def unbook(_ref) -> None:
            self.current -= nbytes
        return unbook

    def track(self, tensors: Iterable[torch.Tensor] | torch.Tensor) -> int:
        """Book already existing tensors (e.g. parameters); returns the bytes newly booked."""
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        before = self.current
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._book(t.untyped_storage())
        return self.current - before

    def nested(self) -> "TorchDispatchMode":
        """A mode that books into this counter: enter it INSIDE another mode (e.g. FakeTensorMode entered around a
        model forward) so the counter stays innermost and keeps seeing every op."""
        return _Forwarder(self)

    def largest(self, n: int = 10) -> list[int]:
        """Sizes (bytes) of the ``n`` largest booked storages still alive (for diagnosing a mismatch)."""
        return sorted((nbytes for nbytes, _ in self._seen.values()), reverse=True)[:n]

    def reset_peak(self) -> None:
        """Start a new peak window at the bytes alive now (``torch.cuda.reset_peak_memory_stats``)."""
        self.peak = self.current

    # -- the dispatch hook --------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._book_outputs(args, kwargs, out)
        return out

    def _book_outputs(self, args, kwargs, out) -> None:
        """Book the outputs whose storage is not one of the inputs' (a view or an in-place result of a tensor
        that existed before, e.g. ``weight.t()``, is not new memory)."""
        inputs = {t.untyped_storage()._cdata for t in _tensors(args)}
        if kwargs:
            inputs.update(t.untyped_storage()._cdata for t in _tensors(kwargs.values()))
        for t in _tensors((out,)):
            st = t.untyped_storage()
            if st._cdata not in inputs:
                self._book(st)


def _tensors(values) -> Iterator[torch.Tensor]:
    """Tensors among ``values`` and inside their lists/tuples (aten op arguments and results nest one level;
    a cheaper walk than a pytree flatten, which dominated the fake-tensor runs)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)

class _Forwarder(TorchDispatchMode):
    def __init__(self, counter: StorageCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.counter._book_outputs(args, kwargs, out)
        return out
