"""Start-up check that the directories every rank writes into and reads back are one shared directory.

Under Slurm each node runs in its own container; a relative ``trainer.default_local_dir`` (the default is
``checkpoints/<project>/<experiment>``) resolved against the launch script's ``cd`` lands inside each node's container,
so every node would write its own partial checkpoint that no requeued job can find. The test is direct: rank 0 writes
a fresh token file into each directory, and every rank must read it back (waiting briefly for network-filesystem
caches); otherwise every rank raises the same ``SharedDirError`` naming the field, the resolved path and the ranks /
hosts that cannot see it. A ConfigError, so main.py prints it as one line.

torch.distributed only.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import torch.distributed as dist

from ttrl_megatron.config import ConfigError

VISIBILITY_WAIT_S = 10.0  # NFS/Lustre attribute caches: how long a rank waits for rank 0's token to appear


class SharedDirError(ConfigError):
    """A directory that must be shared by all ranks is not (or cannot be written)."""


def check_shared_dirs(dirs: dict[str, str], wait_s: float = VISIBILITY_WAIT_S) -> None:
    """Collectively check every ``{config field: directory}``; raises SharedDirError on every rank if any fails."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    name = f".ttrl-shared-check-{token[0]}"
    problems = []
    if rank == 0:
        for field, folder in dirs.items():
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / name).write_text(token[0])
            except OSError as exc:
                problems.append(f"{field}={folder!r}: rank 0 cannot write into {os.path.abspath(folder)} ({exc})")
    dist.barrier()
    mine = {}
    for field, folder in dirs.items():
        path = Path(folder) / name
        deadline = time.monotonic() + wait_s
        while not _holds(path, token[0]) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _holds(path, token[0]):
            mine[field] = os.path.abspath(folder)
    everyone: list = [None] * world
    dist.all_gather_object(everyone, (socket.gethostname(), mine))
    dist.barrier()  # every rank has looked before rank 0 removes the tokens
    if rank == 0:
        for folder in dirs.values():
            (Path(folder) / name).unlink(missing_ok=True)
    for field, folder in dirs.items():
        blind = [(r, host, seen[field]) for r, (host, seen) in enumerate(everyone) if field in seen]
        if blind:
            shown = ", ".join(f"rank {r} on {host} (looked in {path})" for r, host, path in blind[:4])
            more = f" and {len(blind) - 4} more" if len(blind) > 4 else ""
            problems.append(
                f"{field}={folder!r} is not one directory shared by all ranks: a file rank 0 wrote into "
                f"{os.path.abspath(folder)} on {everyone[0][0]} is not visible to {shown}{more}; give an absolute "
                f"path on a filesystem every node mounts (a relative path follows each node's working directory, "
                f"inside its container under Slurm)")
    if problems:
        raise SharedDirError(problems)


def _holds(path: Path, token: str) -> bool:
    try:
        return path.read_text() == token
    except OSError:
        return False
