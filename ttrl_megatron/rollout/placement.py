"""Where a vLLM engine runs inside this process: the executor backend, and the process-global state it shares.

vLLM's parallel state (its world and TP groups) and torch.distributed are process-global. Inside a torchrun world
(torch.distributed initialised by the launcher) every rank's engine uses the `external_launcher` executor: vLLM
joins that world instead of making one, its single worker runs in this process on `cuda:LOCAL_RANK`, and a rollout
TP group is `tensor_parallel_size` consecutive ranks (vLLM lays ranks out ExternalDP x DP x PP x TP). A standalone
engine (no launcher world) uses the "uni" executor, which initialises a one-process world of its own: that world
must not be mistaken for a launcher's by the next engine of the process (`SHARED_STATE["vllm_world"]`).

Also: vLLM seeds torch's global RNGs at start-up; `global_rng_state` / `set_global_rng_state` let the caller keep
its own stream. torch + torch.distributed only; must not import vllm.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ttrl_megatron.rollout.config import VLLMEngineConfig

# Live in-process engines of this process: they share vLLM's process-global parallel state.
LIVE_IN_PROCESS: set[int] = set()
# external_dist: torch.distributed was initialised by someone else (a trainer) before the first engine.
# vllm_world: a standalone (uni) engine initialised a one-process world itself; it is not a launcher's world.
SHARED_STATE = {"external_dist": False, "vllm_world": False}


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def launcher_world() -> bool:
    """torch.distributed is initialised by the launcher (not by a standalone vLLM engine of this process)."""
    return dist_ready() and not SHARED_STATE["vllm_world"]


def resolve_backend(config: VLLMEngineConfig) -> str:
    """The executor to use ("external_launcher" or "uni"), refusing combinations vLLM cannot run."""
    backend = config.distributed_executor_backend
    if backend == "auto":
        backend = "external_launcher" if launcher_world() and config.in_process else "uni"
    if backend == "external_launcher":
        if not config.in_process:
            raise ValueError("VLLMEngineConfig: distributed_executor_backend=external_launcher runs the engine core "
                             "in this process; set in_process=True")
        if not launcher_world():
            raise ValueError("VLLMEngineConfig: distributed_executor_backend=external_launcher joins the launcher's "
                             "torch.distributed world; initialise it first (torchrun + init_process_group)")
        missing = [v for v in ("RANK", "LOCAL_RANK") if v not in os.environ]
        if missing:
            raise ValueError(f"VLLMEngineConfig: external_launcher reads {missing} from the environment (torchrun "
                             "sets them)")
        world, tp = dist.get_world_size(), config.tensor_parallel_size
        if world % tp:
            raise ValueError(f"VLLMEngineConfig.tensor_parallel_size={tp} does not divide the world size {world}")
    elif config.tensor_parallel_size > 1:
        raise ValueError(f"VLLMEngineConfig.tensor_parallel_size={config.tensor_parallel_size} needs the "
                         "external_launcher backend (an engine spanning consecutive ranks of a torchrun world)")
    return backend


def global_rng_state() -> tuple:
    """torch's global RNG states that vLLM's start-up reseeds: the host generator and, with CUDA, this rank's
    device's (only the current device: asking for every device's would create a CUDA context on each GPU)."""
    if not torch.cuda.is_available():
        return torch.get_rng_state(), None, None
    device = torch.cuda.current_device()
    return torch.get_rng_state(), device, torch.cuda.get_rng_state(device)


def set_global_rng_state(state: tuple) -> None:
    host, device, cuda = state
    torch.set_rng_state(host)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
