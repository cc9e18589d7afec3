"""The run's device policy, in one place: which device each kind of tensor lives on. Every module asks here; none
guesses with a bare ``torch.empty(...)`` (host by default) or a literal ``"cuda"``.

- compute device: this rank's models (actor, critic, reference), their activations, the log-prob math, and the
  weights streamed to the rollout engine. ``cuda:LOCAL_RANK`` on a GPU machine (``init_process_group`` selects it
  before NCCL starts), the CPU otherwise.
- collective device of a process group: where tensors handed to a collective on that group must live. NCCL groups
  take compute-device tensors; gloo groups (the CPU run, megatron's gloo DP groups) take host tensors.
- host device: the driver's batch, metrics, rollout outputs between phases, and offloaded state (always the CPU).

A dry run pins the compute device with ``use_compute_device(torch.device("meta"))``: a path run with the model on
``meta`` then fails at the first host/device mix, exactly where CUDA would (a meta tensor refuses to meet a host
tensor in ``index_copy_``, ``copy_``, ``cat``, arithmetic...).

torch only (no megatron, no vllm).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.distributed as dist

_PINNED: list[torch.device] = []  # stack of use_compute_device() pins (innermost last)


def compute_device() -> torch.device:
    """Where this rank's models compute: the pinned device inside ``use_compute_device``, else the current GPU
    when CUDA is available, else the CPU."""
    if _PINNED:
        return _PINNED[-1]
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def host_device() -> torch.device:
    """Where the driver's batch, metrics and offloaded state live."""
    return torch.device("cpu")


def collective_device(group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """Where a tensor passed to a collective on ``group`` (default: the world) must live.

    gloo-only groups need host tensors; NCCL (or mixed ``cpu:gloo,cuda:nccl``) groups take compute-device tensors.
    Without an initialised process group (one process) the compute device is returned.
    """
    if not dist.is_available() or not dist.is_initialized():
        return compute_device()
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend or "fake" in backend:
        return compute_device()
    return host_device()


@contextlib.contextmanager
def use_compute_device(device: torch.device | str) -> Iterator[torch.device]:
    """Pin ``compute_device()`` to ``device`` inside the block (dry runs on ``meta``, tests)."""
    device = torch.device(device)
    _PINNED.append(device)
    try:
        yield device
    finally:
        _PINNED.pop()
