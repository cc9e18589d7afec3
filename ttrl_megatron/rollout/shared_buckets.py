"""Weight buckets shared with an engine in another process: one reused byte buffer the engine maps in place.

What crosses the process boundary per bucket is a handle and a table, never the tensors' bytes:
  handle   {"kind": "cuda", "ipc": <pickled torch reduce_tensor of the buffer>}   (CUDA IPC, GPU)
           {"kind": "shm", "name": <POSIX shared-memory segment>, "nbytes": N}    (host)
  entries  [(name, dtype name, shape, byte offset), ...]   whole vLLM modules, each tensor 256-byte aligned
The sender copies a bucket's tensors into the buffer (device to device on GPU), synchronizes its stream, and makes a
blocking call; the receiver maps the buffer, loads views of it, synchronizes, unmaps, and returns; only then is the
buffer refilled. So the extra memory of a refit is the buffer itself: about one bucket, grown only when one module is
bigger (then the buffer is that module's size). This is the anchors' colocated refit (verl's
BucketedWeightSender/update_weights_from_ipc, NeMo-RL's stream_weights_via_ipc_zmq; reference/gpu-bringup-anchors.md
section 9), done on the RPC vLLM already has (collective_rpc) instead of a ZMQ side channel. An engine in the caller's
process needs none of this: it takes the device tensors directly (vllm_engine.py, weight_transport="auto").

On CPU the same code runs on a /dev/shm segment, so everything but the handle's kind is tested without a GPU.
Pure torch + stdlib; no vllm, no torch.distributed.
"""

from __future__ import annotations

import gc
import mmap
import pickle
from collections.abc import Iterable, Iterator
from multiprocessing import shared_memory

import torch

ALIGN = 256  # byte alignment of every tensor in the buffer (vLLM's rlhf_colocate example; keeps views aligned)

Entry = tuple[str, str, list[int], int]  # name, dtype name ("bfloat16"), shape, byte offset


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class SharedBuffer:
    """A byte buffer ``[nbytes]`` uint8 on ``device`` that another process can map (see the module docstring)."""

    def __init__(self, nbytes: int, device: torch.device):
        device = torch.device(device)
        self.nbytes, self.device, self._shm = int(nbytes), device, None
        if device.type == "cuda":
            from torch.multiprocessing.reductions import reduce_tensor

            self.tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=device)
            self.handle = {"kind": "cuda", "ipc": pickle.dumps(reduce_tensor(self.tensor))}
        elif device.type == "cpu":
            self._shm = shared_memory.SharedMemory(create=True, size=self.nbytes)
            self.tensor = torch.frombuffer(self._shm.buf, dtype=torch.uint8, count=self.nbytes)
            self.handle = {"kind": "shm", "name": self._shm.name, "nbytes": self.nbytes}
        else:
            raise ValueError(f"SharedBuffer: a {device.type!r} buffer cannot be shared with another process "
                             "(CUDA IPC needs cuda, shared memory needs cpu)")

    def close(self) -> None:
        """Free the buffer (the receiver has unmapped it: every call returns only after unmapping)."""
        self.tensor = None
        if self._shm is not None:
            shm, self._shm = self._shm, None
            shm.unlink()  # first: the name goes even if a stray view keeps the mapping alive a while longer
            gc.collect()  # views made by pack() must be gone before the mapping can close
            shm.close()
        elif self.device.type == "cuda":
            torch.cuda.ipc_collect()  # release what the receiver's (now closed) mappings kept alive

    def pack(self, pairs: list[tuple[str, torch.Tensor]]) -> list[Entry]:
        """Copy ``pairs`` into the buffer from offset 0; returns their entries. Raises if they do not fit."""
        need = sum(_aligned(_nbytes(t)) for _, t in pairs)
        if need > self.nbytes:
            raise ValueError(f"SharedBuffer.pack: {need} bytes do not fit a {self.nbytes}-byte buffer")
        entries, offset = [], 0
        for name, tensor in pairs:
            size = _nbytes(tensor)
            target = self.tensor[offset:offset + size].view(tensor.dtype).view(tensor.shape)
            target.copy_(tensor.detach())
            entries.append((name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset))
            offset += _aligned(size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the receiver reads on its own stream, in another process
        return entries


def shared_buckets(groups: Iterable[list[tuple[str, torch.Tensor]]], limit: int,
                   device: torch.device) -> Iterator[tuple[dict, list[Entry]]]:
    """Whole modules (``groups``) packed into ONE reused buffer of ``limit`` bytes on ``device``; yields
    ``(handle, entries)`` per bucket. The consumer must be done with a bucket (the engine loaded it) before it asks
    for the next: the next bucket overwrites the same memory. A module bigger than the buffer grows it to that
    module's size. The buffer is freed when the generator finishes or is closed."""
    buffer: SharedBuffer | None = None
    pending: list[tuple[str, torch.Tensor]] = []
    used = 0
    try:
        for group in groups:
            need = sum(_aligned(_nbytes(t)) for _, t in group)
            if pending and used + need > buffer.nbytes:  # pending is non-empty only once a buffer exists
                yield buffer.handle, buffer.pack(pending)
                pending, used = [], 0
            if buffer is None or need > buffer.nbytes:
                if buffer is not None:
                    buffer.close()
                buffer = SharedBuffer(max(limit, need), device)
            pending += group
            used += need
        if pending:
            yield buffer.handle, buffer.pack(pending)
    finally:
        if buffer is not None:
            buffer.close()


class MappedBucket:
    """The receiver's side: ``with MappedBucket(handle, entries) as pairs`` gives (name, tensor view) pairs of the
    sender's buffer. The mapping is never closed explicitly: it goes with the last view of it (torch keeps the
    mapping object alive from every view), so a view kept by mistake stays valid memory instead of dangling; but the
    sender overwrites that memory with the next bucket, so ``aliased`` must find no loaded parameter inside it."""

    def __init__(self, handle: dict, entries: list[Entry]):
        self.handle, self.entries, self._buffer = handle, entries, None

    def __enter__(self) -> list[tuple[str, torch.Tensor]]:
        kind = self.handle.get("kind")
        if kind == "cuda":
            rebuild, args = pickle.loads(self.handle["ipc"])
            self._buffer = rebuild(*args)
        elif kind == "shm":
            # Mapped straight from /dev/shm rather than through SharedMemory(name=...): that would register the
            # segment with this process's resource tracker (Python < 3.13 has no track=False), which unlinks it, or
            # warns, at exit. The sender owns the segment and unlinks it.
            nbytes = int(self.handle["nbytes"])
            with open(f"/dev/shm/{self.handle['name']}", "r+b") as f:
                mapping = mmap.mmap(f.fileno(), nbytes)
            self._buffer = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes)
        else:
            raise ValueError(f"MappedBucket: unknown handle kind {kind!r}")
        pairs = []
        for name, dtype, shape, offset in self.entries:
            dt = getattr(torch, dtype)
            size = int(torch.Size(shape).numel()) * dt.itemsize
            pairs.append((name, self._buffer[offset:offset + size].view(dt).view(shape)))
        return pairs

    def aliased(self, named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
        """Names of ``named`` tensors whose memory lies inside the mapped buffer (a loader that kept a view)."""
        base = self._buffer.data_ptr()
        end = base + self._buffer.numel()
        return [name for name, t in named
                if t.device == self._buffer.device and t.numel() and base <= t.data_ptr() < end]

    def __exit__(self, *exc) -> None:
        if self._buffer is not None and self._buffer.is_cuda:
            torch.cuda.synchronize(self._buffer.device)  # every read of the buffer is done before the sender refills
        self._buffer = None
