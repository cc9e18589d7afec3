"""Helpers for dry runs of the weight paths with the model on the ``meta`` device (run inside ranks).

Why meta: a meta tensor refuses to meet a host tensor in ``index_copy_``, ``cat``, arithmetic..., exactly where a
CUDA parameter would, so a path that runs with the model on meta has no host/device mix (the item-1 bug class).
Collectives cannot run on meta, and on this machine every group is gloo (host tensors), so the item-2 bug class
(a host buffer handed to an NCCL group) needs a second tool: ``NcclDeviceChecker`` makes the model-parallel groups
(and the world) report backend ``nccl`` to ``distributed/devices.collective_device`` and checks every tensor handed
to a tensor collective of ``torch.distributed`` on those groups: it must live on ``collective_device(group)`` (the
compute device, here meta), as NCCL requires. Tensors on meta carry no data, so the checked call is then skipped; a
host tensor raises ``CollectiveDeviceError`` naming the call and the device, which is what NCCL would refuse on a GPU.
Object collectives (``all_gather_object``...) and megatron's own gloo groups are left alone (host by design).

Not a mock of what is tested: the code under test (load, export, sync) runs unchanged; only the transport below it
is replaced, and only for the dry run.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.distributed as dist

# tensor collectives / p2p of torch.distributed that take tensors that NCCL needs on the GPU
TENSOR_COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                      "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
                      "send", "recv", "isend", "irecv")


class CollectiveDeviceError(RuntimeError):
    """A tensor handed to a (simulated) NCCL collective lives on the wrong device."""


@contextlib.contextmanager
def meta_build() -> Iterator[torch.device]:
    """Build models on meta: pin the compute device and make megatron's host-default factories (CPU
    initialisation) allocate there too."""
    from ttrl_megatron.distributed.devices import use_compute_device

    with use_compute_device("meta") as dev, torch.device("meta"):
        yield dev


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def model_parallel_groups() -> list:
    """The groups a GPU run builds with NCCL: the world (None), TP, PP, DP, model-parallel and embedding groups."""
    from megatron.core import parallel_state as ps

    groups = [None, dist.group.WORLD, ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group(),
              ps.get_data_parallel_group(), ps.get_model_parallel_group()]
    embedding = getattr(ps, "_EMBEDDING_GROUP", None)
    return groups + ([embedding] if embedding is not None else [])


class NcclDeviceChecker:
    """Context manager: the given groups behave as NCCL groups for device checks (module doc).

    ``calls`` records ``(name, device)`` of every checked call; ``violations`` the refused ones (each also raised).
    """

    def __init__(self, groups: list):
        self.groups = groups
        self.calls: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self._saved: dict[str, Callable] = {}

    def _is_nccl(self, group) -> bool:
        return any(group is g for g in self.groups)

    def __enter__(self) -> "NcclDeviceChecker":
        from ttrl_megatron.distributed.devices import collective_device

        real_backend = dist.get_backend
        self._saved["get_backend"] = real_backend

        def get_backend(group=None):
            return "nccl" if self._is_nccl(group) else real_backend(group)

        dist.get_backend = get_backend
        for name in TENSOR_COLLECTIVES:
            real = getattr(dist, name)
            self._saved[name] = real
            setattr(dist, name, self._checked(name, real, collective_device))
        return self

    def _checked(self, name: str, real: Callable, collective_device: Callable) -> Callable:
        def call(*args, **kwargs):
            group = kwargs.get("group")
            if group is None:
                group = next((a for a in args if isinstance(a, dist.ProcessGroup)), None)
            if not self._is_nccl(group):
                return real(*args, **kwargs)
            want = collective_device(group)
            tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
            wrong = [t for t in tensors if t.device != want]
            if wrong:
                msg = (f"torch.distributed.{name} on an NCCL group got a tensor on {wrong[0].device} "
                       f"{tuple(wrong[0].shape)}; NCCL needs it on {want}")
                self.violations.append(msg)
                raise CollectiveDeviceError(msg)
            self.calls.append((name, str(want)))
            if all(t.device.type == "meta" for t in tensors):
                return None  # nothing to move: meta tensors carry no data
            return real(*args, **kwargs)

        return call

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(dist, name, fn)
