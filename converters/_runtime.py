"""Process set-up for the converters: a private 1-process gloo group, or N spawned ranks, for megatron's state.

The converters need megatron's parallel state (the model and dist_checkpointing are collective) but must run as a
plain `python -m ...` command: no torchrun. `megatron_group(tp, pp)` provides it in-process for TP=PP=1;
`spawn_ranks(fn, world, ...)` runs `fn` on `world` gloo ranks for a multi-rank conversion.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ttrl_megatron.distributed import free_port

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def group_is_running() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextmanager
def megatron_group(tp: int = 1, pp: int = 1) -> Iterator[None]:
    """Megatron parallel state for (tp, pp): reuse a running torch.distributed group of exactly tp*pp ranks
    (torchrun), else create a private 1-process gloo group on a free port (only for tp = pp = 1) and tear it down."""
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import destroy_distributed, init_distributed

    layout = ParallelLayout(tp=tp, pp=pp, dp=1)
    if group_is_running():
        from megatron.core import parallel_state

        ours = not parallel_state.model_parallel_is_initialized()  # else it must already be this layout
        init_distributed(layout, seed=0)
        try:
            yield
        finally:
            if ours:
                parallel_state.destroy_model_parallel()
        return
    if tp * pp != 1:
        raise RuntimeError(f"tp*pp={tp * pp} ranks need spawn_ranks() or torchrun, not an in-process group")
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        init_distributed(layout, backend="gloo", seed=0)
        try:
            yield
        finally:
            destroy_distributed()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rank_main(fn: Callable, rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    import torch
    import torch.distributed as dist

    from ttrl_megatron.distributed import init_process_group

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    init_process_group(backend="gloo")
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn_ranks(fn: Callable, world: int, *args) -> None:
    """Run `fn(*args)` on `world` spawned gloo ranks (fn must be importable); raise if any rank fails."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, args)) for r in range(world)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:  # the others would wait for the failed rank in a collective until the timeout
                p.terminate()
        time.sleep(0.2)
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"conversion rank(s) {failed} failed (exit codes "
                           f"{[procs[r].exitcode for r in failed]}); see the traceback printed above")
