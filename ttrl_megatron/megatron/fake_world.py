"""One rank of a bigger parallel layout, played by this process with a FAKE process group, for measuring memory
at real shapes without GPUs (memory/measure.py; gpu-bringup-anchors.md §12).

``fake_world(tp, pp, rank, world)`` initialises torch.distributed with the ``fake`` backend (every collective is a
no-op: one process plays rank ``rank`` of ``world``) and megatron's TP x PP x DP groups for that rank, then undoes
both on exit. What the fake backend does not provide, and the stand-in used (each only while the block is active):

- gloo groups (megatron builds them over a real rendezvous): the distributed optimizer only asks for the DP gloo
  groups to hand to checkpointing; here they are the fake DP groups themselves.
- ``all_gather_object`` (used to agree on optimizer param-group keys) pickles through real tensors of other ranks:
  every rank holds the same object here, so the local object is copied into the list.
- pipeline shape exchange (``variable_seq_lengths``, which the engine switches on for PP > 1) would receive
  garbage shapes: the schedule's own ``tensor_shape`` is used (measurement batches are uniform, so it is right).
- megatron's model-parallel RNG tracker ``fork()`` reads the RNG state (a data-dependent host read under fake
  tensors): a null context (dropout is 0 in the supported models; memory is unaffected).

Only this module of the measurement tooling imports megatron.core (the import-boundary rule).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import p2p_communication

from ttrl_megatron.megatron.cpu_compat import apply_cpu_compat

_GLOO_ALIASES = (  # megatron's gloo-group globals -> the group they mirror
    ("_DATA_PARALLEL_GROUP_GLOO", "_DATA_PARALLEL_GROUP"),
    ("_DATA_PARALLEL_GROUP_WITH_CP_GLOO", "_DATA_PARALLEL_GROUP_WITH_CP"),
    ("_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP_GLOO", "_INTRA_PARTIAL_DATA_PARALLEL_GROUP_WITH_CP"),
    ("_EXPERT_DATA_PARALLEL_GROUP_GLOO", "_EXPERT_DATA_PARALLEL_GROUP"),
    ("_INTRA_PARTIAL_EXPERT_DATA_PARALLEL_GROUP_GLOO", "_INTRA_PARTIAL_EXPERT_DATA_PARALLEL_GROUP"),
)


def _local_all_gather_object(object_list, obj, group=None) -> None:
    object_list[:] = [obj] * len(object_list)


def _fixed_shape_communicate(communicate):
    def wrapped(self, *args, **kwargs):
        saved = self.config.variable_seq_lengths
        self.config.variable_seq_lengths = False
        try:
            return communicate(self, *args, **kwargs)
        finally:
            self.config.variable_seq_lengths = saved
    return wrapped


@contextlib.contextmanager
def fake_world(tp: int, pp: int, rank: int = 0, world: int | None = None, seed: int = 1) -> Iterator[None]:
    """Play ``rank`` of a ``world``-rank job (default tp x pp) laid out TP x PP x DP, with no-op collectives."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    world = tp * pp if world is None else world
    if dist.is_initialized() or parallel_state.model_parallel_is_initialized():
        raise RuntimeError("fake_world needs a process without torch.distributed / megatron state (use a subprocess)")
    apply_cpu_compat()  # no-op with CUDA
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    saved_gather = dist.all_gather_object
    communicator = p2p_communication.P2PCommunicator
    saved_communicate = communicator._communicate
    try:
        parallel_state.initialize_model_parallel(tp, pp, create_gloo_process_groups=False)
        for alias, source in _GLOO_ALIASES:
            setattr(parallel_state, alias, getattr(parallel_state, source))
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
        tracker.fork = lambda *args, **kwargs: contextlib.nullcontext()
        dist.all_gather_object = _local_all_gather_object
        communicator._communicate = _fixed_shape_communicate(saved_communicate)
        yield
    finally:
        tracker.__dict__.pop("fork", None)  # back to the class's method
        dist.all_gather_object = saved_gather
        communicator._communicate = saved_communicate
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
