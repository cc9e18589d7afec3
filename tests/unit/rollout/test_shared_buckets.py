"""rollout/shared_buckets.py on the host: buckets packed into one reused shared-memory buffer and read back by
ANOTHER process (the shm handle; a GPU uses the same code with a CUDA IPC handle, tests/gpu/test_weights_gpu.py)."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from ttrl_megatron.rollout.shared_buckets import ALIGN, MappedBucket, SharedBuffer, shared_buckets


def _modules(seed: int = 0) -> list[list[tuple[str, torch.Tensor]]]:
    """Whole modules of mixed dtypes and sizes (a fused qkv of three tensors, a 0-d scalar, an empty tensor)."""
    g = torch.Generator().manual_seed(seed)
    return [
        [("a.q", torch.randn(33, 7, generator=g)), ("a.k", torch.randn(5, 7, generator=g).bfloat16()),
         ("a.v", torch.randn(5, 7, generator=g).half())],
        [("b.scale", torch.tensor(3.5))],
        [("c.empty", torch.zeros(0, 4))],
        [("d.big", torch.randn(600, 10, generator=g))],  # 24,000 bytes: bigger than the 4 KiB buffer
        [("e.ids", torch.arange(100, dtype=torch.int64))],
    ]


def _reader(conn) -> None:
    """Child process: map each bucket it is sent, echo its tensors (copied) back, then acknowledge."""
    while True:
        msg = conn.recv()
        if msg is None:
            return
        handle, entries = msg
        with MappedBucket(handle, entries) as pairs:
            out = [(name, t.clone()) for name, t in pairs]
            del pairs
        conn.send((out, os.getpid()))


def test_buckets_reach_another_process_through_one_reused_buffer():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_reader, args=(child,), daemon=True)
    proc.start()
    try:
        sent, seen, names, buffers = {}, {}, [], set()
        for group in _modules():
            sent.update(group)
        for handle, entries in shared_buckets(_modules(), 4096, torch.device("cpu")):
            assert all(offset % ALIGN == 0 for *_, offset in entries)
            buffers.add((handle["name"], handle["nbytes"]))
            names.append([e[0] for e in entries])
            parent.send((handle, entries))
            out, pid = parent.recv()
            assert pid != os.getpid()
            seen.update(out)
        # Whole modules per bucket, in order; the oversize module grew the buffer once (a new segment).
        assert names == [["a.q", "a.k", "a.v", "b.scale", "c.empty"], ["d.big"], ["e.ids"]]
        assert sorted(n for _, n in buffers) == [4096, 24064]  # 24,000 bytes, aligned
        assert seen.keys() == sent.keys()
        for name, tensor in sent.items():
            assert seen[name].dtype == tensor.dtype and torch.equal(seen[name], tensor), name
        # The sender unlinked every segment it made.
        assert not any(os.path.exists(f"/dev/shm/{name}") for name, _ in buffers)
    finally:
        parent.send(None)
        proc.join(timeout=30)


def test_a_loader_that_keeps_a_view_is_found_and_a_full_buffer_raises():
    buffer = SharedBuffer(1024, torch.device("cpu"))
    try:
        entries = buffer.pack([("w", torch.ones(4, 4)), ("b", torch.ones(4))])
        bucket = MappedBucket(buffer.handle, entries)
        with bucket as pairs:
            copied = pairs[0][1].clone()
            kept = pairs[1][1]  # a loader that aliases instead of copying
            assert bucket.aliased([("w", copied), ("b", kept)]) == ["b"]
        assert torch.equal(kept, torch.ones(4))  # still valid memory after the with: the view holds the mapping
        with pytest.raises(ValueError, match="do not fit a 1024-byte buffer"):
            buffer.pack([("w", torch.ones(300))])
        del kept
    finally:
        buffer.close()


def test_devices_that_cannot_be_shared_are_refused():
    with pytest.raises(ValueError, match="'meta' buffer cannot be shared"):
        SharedBuffer(64, torch.device("meta"))
    with pytest.raises(ValueError, match="unknown handle kind"):
        MappedBucket({"kind": "tcp"}, []).__enter__()
