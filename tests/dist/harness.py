"""Run a function in N spawned processes forming a gloo torch.distributed world (for tests/dist).

    from tests.dist.harness import run_distributed
    results = run_distributed(fn, 2, arg, timeout_s=120, key=value)   # -> [result of rank 0, result of rank 1]

Each child: CUDA hidden (CUDA_VISIBLE_DEVICES=""), OMP/MKL threads 1 and ``torch.set_num_threads(1)``, the torchrun
variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT with a free port picked in the parent), and
the default process group initialised with gloo before ``fn(*args, **kwargs)`` runs. ``fn`` must be importable
(module level) and its result picklable. The first rank to fail makes the call raise ``DistributedTestError`` with
that rank's traceback; the remaining ranks are terminated at once (no waiting for a hung collective).
Only the process group is created; megatron's parallel state is the test's job (``init_distributed``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
from typing import Any, Callable, List

from ttrl_megatron.distributed import free_port

_CHILD_ENV = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class DistributedTestError(RuntimeError):
    """A rank raised, died or timed out."""


def _child(fn, rank, world_size, port, args, kwargs, results, timeout_s):
    import faulthandler

    # A hung rank (e.g. waiting in a collective its peer never joins) prints every thread's stack to stderr
    # shortly before the parent gives up, so the timeout error can be diagnosed.
    faulthandler.dump_traceback_later(max(1.0, timeout_s - 3), exit=False)
    try:
        os.environ.update(_CHILD_ENV)
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )
        import datetime
        import warnings

        # megatron-core's import-time notes about missing Apex / Transformer Engine would bury real output
        warnings.filterwarnings(
            "ignore", message=".*(Apex|Transformer Engine|cuda_graph_scope|CUDA_DEVICE_MAX_CONNECTIONS|all_gather_into_tensor).*"
        )
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            value = fn(*args, **kwargs)
        finally:
            _teardown()
        results.put((rank, True, value))
    except BaseException:  # report everything, including SystemExit/KeyboardInterrupt, with the traceback
        results.put((rank, False, traceback.format_exc()))


def _teardown():
    import sys

    import torch.distributed as dist

    if "megatron.core.parallel_state" in sys.modules:
        ps = sys.modules["megatron.core.parallel_state"]
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 120, **kwargs: Any) -> List[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` gloo ranks; return the per-rank results in rank order."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    saved = {k: os.environ.get(k) for k in _CHILD_ENV}
    os.environ.update(_CHILD_ENV)  # children inherit it before importing torch
    try:
        procs = [
            ctx.Process(target=_child, args=(fn, r, world_size, port, args, kwargs, results, timeout_s), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        return _collect(procs, results, world_size, timeout_s)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def _collect(procs, results, world_size, timeout_s) -> List[Any]:
    """Gather one result per rank. On the first failure or death, keep listening for a short grace period so that
    the root cause (often a rank that died, which makes its peers' collectives fail) is reported too."""
    deadline = time.monotonic() + timeout_s
    out: dict = {}
    failed: dict = {}
    grace_end = None
    while len(out) + len(failed) < world_size:
        now = time.monotonic()
        if grace_end is not None and now > grace_end:
            break
        try:
            rank, ok, value = results.get(timeout=0.2)
        except queue_mod.Empty:
            if now > deadline:
                missing = sorted(set(range(world_size)) - set(out) - set(failed))
                raise DistributedTestError(
                    f"ranks {missing} did not finish within {timeout_s} s (their stacks are in the captured stderr)"
                    + _describe(failed)
                ) from None
            for r, p in enumerate(procs):
                if r not in out and r not in failed and not p.is_alive() and p.exitcode not in (None, 0):
                    if results.empty():  # its result may still be in flight through the queue's feeder thread
                        time.sleep(0.3)
                    if results.empty():
                        failed[r] = f"rank {r} died with exit code {p.exitcode} before reporting"
                        grace_end = grace_end or time.monotonic() + _GRACE_S
            continue
        if ok:
            out[rank] = value
        else:
            failed[rank] = f"rank {rank} of {world_size} failed:\n{value}"
            grace_end = grace_end or time.monotonic() + _GRACE_S
    if failed:
        raise DistributedTestError(_describe(failed).lstrip())
    return [out[r] for r in range(world_size)]


_GRACE_S = 2.0


def _describe(failed: dict) -> str:
    # deaths first: they are usually the cause of the peers' errors
    order = sorted(failed, key=lambda r: ("died" not in failed[r], r))
    return "".join("\n" + failed[r] for r in order)
