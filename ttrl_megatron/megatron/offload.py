"""Move a trained role's parameters / gradient buffers / optimizer state to host memory around generation.

verl's `actor_rollout_ref.actor.megatron.{param,grad,optimizer}_offload` (and the critic's): while vLLM generates
on the same GPU, the trainer's state does not need to be there. verl (`verl/utils/megatron_utils.py`
offload_megatron_model_to_cpu / offload_megatron_optimizer) and megatron-core (`_ParamAndGradBuffer.offload_to_cpu`)
free the device memory by shrinking each tensor's STORAGE to zero bytes after copying it to host memory, and grow it
back before use. The tensor objects (and every view of them: megatron DDP's bucket views, `main_grad`, the
distributed optimizer's shards) stay valid, so nothing that holds a reference has to be rebuilt. We do the same,
acting on a `RoleEngine` (megatron/engine.py) from outside:

- params: every storage behind the model's parameters (megatron DDP's contiguous `param_data` buffer with the
  distributed optimizer, else each parameter's own storage), copied to host and freed; restored bit for bit.
- grads: DDP's `grad_data` buffers are freed WITHOUT a copy: megatron zeroes them at the start of every update
  (`zero_grad_buffer`), so there is nothing to keep; they come back zeroed.
- optimizer: every tensor the optimizer holds that is not model-owned: Adam moments, fp32 main parameters of a
  bf16 model (those of an fp32 model are views of the model's own parameters and are handled by `params`).

Host copies are allocated once (pinned with CUDA, so copies run at PCIe speed) and reused at every offload.
On CPU the "host" is the compute device: the code path runs (storages really are freed and restored, which the
CPU tests check) but saves no memory, so validate() refuses the knobs with trainer.device=cpu.
Imports torch and distributed/devices.py only; the RoleEngine is duck-typed (``model``, ``optimizer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import torch

from ttrl_megatron.distributed.devices import host_device

PARTS = ("params", "grads", "optimizer")


@dataclasses.dataclass
class _Slot:
    """One device storage and its host copy (None for grads: they are not copied)."""

    storage: torch.UntypedStorage
    nbytes: int
    host: torch.Tensor | None


def _unique_storages(tensors: Iterable[torch.Tensor], skip: set[int] = frozenset()) -> list[torch.UntypedStorage]:
    seen, out = set(skip), []
    on_gpu = torch.cuda.is_available()
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in seen or (on_gpu and storage.device.type == "cpu"):
            continue  # empty (offloaded), shared, or already in host memory (e.g. Adam's step counters)
        seen.add(key)
        out.append(storage)
    return out


def _ddp_buffers(model_chunks) -> Iterator:
    for chunk in model_chunks:
        yield from getattr(chunk, "buffers", [])
        yield from getattr(chunk, "expert_parallel_buffers", [])


def _optimizer_tensors(optimizer) -> Iterator[torch.Tensor]:
    """Every tensor of a megatron optimizer (chained or not): its torch optimizers' state and param groups."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        for state in inner.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        for group in inner.param_groups:
            yield from group["params"]


class RoleOffloader:
    """Offloads the chosen parts of a RoleEngine's state to host memory and brings them back.

    ``engine``: a RoleEngine (``model``: DDP-wrapped chunks, ``optimizer``). ``params`` / ``grads`` / ``optimizer``:
    which parts the config enables (verl's ``*_offload`` keys). ``offload(parts)`` frees the enabled parts among
    ``parts`` (default: all enabled), ``load()`` restores everything offloaded. Both are idempotent per part.
    """

    def __init__(self, engine, *, params: bool = False, grads: bool = False, optimizer: bool = False,
                 name: str = "role"):
        self.engine, self.name = engine, name
        self.enabled = {p for p, on in zip(PARTS, (params, grads, optimizer)) if on}
        if self.enabled - {"params"} and getattr(engine, "optimizer", None) is None:
            raise ValueError(f"{name}: grad/optimizer offload needs a trained model (this one has no optimizer)")
        self._slots: dict[str, list[_Slot]] = {}
        self.offloaded: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.enabled)

    # ------------------------------------------------------------------ what belongs to which part
    def _storages(self, part: str) -> list[torch.UntypedStorage]:
        chunks = self.engine.model
        params = _unique_storages(p for chunk in chunks for p in chunk.parameters())
        if part == "params":
            return params
        grads = _unique_storages(b.grad_data for b in _ddp_buffers(chunks) if b.grad_data is not None)
        if part == "grads":
            return grads
        owned = {s.data_ptr() for s in params + grads}  # fp32 models: main params are views of the model's
        return _unique_storages(_optimizer_tensors(self.engine.optimizer), skip=owned)

    def _device_bytes(self, part: str) -> int:
        return sum(s.nbytes() for s in self._storages(part))

    # ------------------------------------------------------------------ offload / load
    def offload(self, parts: Iterable[str] | None = None) -> dict[str, float]:
        """Free the enabled ``parts`` (default all enabled) on the device; returns bytes freed per part."""
        freed = {}
        for part in self.enabled if parts is None else set(parts) & self.enabled:
            if part in self.offloaded:
                continue
            pin = torch.cuda.is_available()
            slots = self._slots.get(part)
            if slots is None:  # first offload: one host buffer per storage, reused afterwards
                slots = [_Slot(s, s.nbytes(), None if part == "grads" else torch.empty(
                    s.nbytes(), dtype=torch.uint8, device=host_device(), pin_memory=pin)) for s in self._storages(part)]
                self._slots[part] = slots
            for slot in slots:
                if slot.host is not None:
                    slot.host.untyped_storage().copy_(slot.storage, non_blocking=pin)
            if pin:
                torch.cuda.synchronize()  # the copies must land before the device memory is released
            for slot in slots:
                slot.storage.resize_(0)
            self.offloaded.add(part)
            freed[f"offload/{self.name}_{part}_bytes"] = float(sum(s.nbytes for s in slots))
        return freed

    def load(self) -> None:
        """Bring back every offloaded part (params bit for bit, grads zeroed, optimizer state bit for bit)."""
        pin = torch.cuda.is_available()
        for part in sorted(self.offloaded):
            for slot in self._slots[part]:
                slot.storage.resize_(slot.nbytes)
                if slot.host is None:
                    slot.storage.fill_(0)
                else:
                    slot.storage.copy_(slot.host.untyped_storage(), non_blocking=pin)
        if pin and self.offloaded:
            torch.cuda.synchronize()
        self.offloaded.clear()

    def device_bytes(self) -> dict[str, int]:
        """Bytes each enabled part holds on the device now (0 while offloaded)."""
        return {part: self._device_bytes(part) for part in sorted(self.enabled)}


class Offloaders:
    """The offloaders of several roles (actor, critic) behind one offload()/load() (what the rollout side calls)."""

    def __init__(self, offloaders: Iterable[RoleOffloader]):
        self.items = [o for o in offloaders if o]

    def __bool__(self) -> bool:
        return bool(self.items)

    def offload(self, parts: Iterable[str] | None = None) -> dict[str, float]:
        parts = None if parts is None else tuple(parts)
        out: dict[str, float] = {}
        for o in self.items:
            out.update(o.offload(parts))
        return out

    def load(self) -> None:
        for o in self.items:
            o.load()
