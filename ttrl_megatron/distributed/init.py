"""torch.distributed set-up from the torchrun environment, and tear-down.

Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (set by torchrun / srun wrappers); picks NCCL when
CUDA is available and gloo otherwise. Megatron's model-parallel groups are built on top of this by
``ttrl_megatron.megatron.parallel`` (this package must not import megatron.core).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as dist

_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """The launcher-provided identity of this process."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def read_dist_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Parse the torchrun variables; a missing or malformed one raises an error naming it."""
    env = os.environ if environ is None else environ
    missing = [k for k in _REQUIRED_ENV if k not in env]
    if missing:
        raise RuntimeError(
            f"torch.distributed environment variable(s) {missing} not set; launch with torchrun "
            "(or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
        )
    values = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        raw = env.get(key, env["RANK"] if key == "LOCAL_RANK" else None)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise RuntimeError(f"environment variable {key}={raw!r} is not an integer") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise RuntimeError(f"RANK={values['RANK']} outside WORLD_SIZE={values['WORLD_SIZE']}")
    return DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], env["MASTER_ADDR"], values["MASTER_PORT"])


def default_backend() -> str:
    """NCCL on CUDA machines, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: Optional[str] = None, timeout_s: float = 600.0) -> DistEnv:
    """Initialise the default process group from the environment (no-op if already initialised).

    On CUDA it also selects the local device (LOCAL_RANK) before creating NCCL communicators.
    Returns the parsed environment.
    """
    env = read_dist_env()
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size:
            raise RuntimeError(
                f"torch.distributed already initialised with world size {dist.get_world_size()}, "
                f"but WORLD_SIZE={env.world_size}"
            )
        return env
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return env


def destroy_process_group() -> None:
    """Tear down the default process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port the OS reports free on localhost right now (for MASTER_PORT; never derived from hashes, which
    differ between spawned processes)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
