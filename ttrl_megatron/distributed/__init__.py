"""Process-level parallelism: the TP x PP x DP layout and torch.distributed set-up (no megatron.core here)."""
from ttrl_megatron.distributed.init import (
    DistEnv,
    default_backend,
    destroy_process_group,
    free_port,
    init_process_group,
    read_dist_env,
)
from ttrl_megatron.distributed.layout import LayoutError, ParallelLayout

__all__ = [
    "DistEnv",
    "LayoutError",
    "ParallelLayout",
    "default_backend",
    "destroy_process_group",
    "free_port",
    "init_process_group",
    "read_dist_env",
]
