"""Megatron model-parallel state for a ParallelLayout: init, seeding, tear-down.

``init_distributed`` = torch.distributed from the torchrun environment (``ttrl_megatron.distributed``) + the CPU
compatibility layer when CUDA is absent + ``parallel_state.initialize_model_parallel(tp, pp)``.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from ttrl_megatron.distributed import ParallelLayout, destroy_process_group, init_process_group
from ttrl_megatron.megatron.cpu_compat import apply_cpu_compat


def init_distributed(
    layout: ParallelLayout,
    backend: Optional[str] = None,
    timeout_s: float = 600.0,
    seed: Optional[int] = None,
) -> ParallelLayout:
    """Initialise torch.distributed (torchrun env) and megatron's TP x PP x DP groups for ``layout``.

    ``layout.world_size`` must equal WORLD_SIZE. When ``seed`` is given, also seeds every RNG (see ``seed_all``).
    Returns the layout. Idempotent for the same layout; a different layout while initialised raises.
    """
    apply_cpu_compat()  # no-op with CUDA
    init_process_group(backend=backend, timeout_s=timeout_s)
    world = dist.get_world_size()
    if world != layout.world_size:
        raise RuntimeError(
            f"parallel layout tp={layout.tp} x pp={layout.pp} x dp={layout.dp} = {layout.world_size} "
            f"does not match WORLD_SIZE={world}"
        )
    if parallel_state.model_parallel_is_initialized():
        current = current_layout()
        if current != layout:
            raise RuntimeError(f"megatron parallel state already initialised with {current}, asked for {layout}")
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tp,
            pipeline_model_parallel_size=layout.pp,
            distributed_timeout_minutes=max(1, int(timeout_s // 60)),
        )
    if seed is not None:
        seed_all(seed)
    return layout


def current_layout() -> ParallelLayout:
    """The layout megatron's parallel_state was initialised with."""
    return ParallelLayout(
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        pp=parallel_state.get_pipeline_model_parallel_world_size(),
        dp=parallel_state.get_data_parallel_world_size(),
    )


def seed_all(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker (CUDA or CPU-backed).

    Same seed on every rank for the default/data-parallel state; megatron offsets the TP-region state by tp_rank
    (``model_parallel_cuda_manual_seed``). ``torch.cuda.manual_seed`` is a silent no-op on CPU, hence the explicit
    ``torch.manual_seed``.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_distributed() -> None:
    """Destroy megatron's groups and the default process group (safe to call when not initialised)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    destroy_process_group()
