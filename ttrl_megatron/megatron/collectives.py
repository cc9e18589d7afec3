"""Collectives that put an engine's results on every rank, and the device they run on.

Every rank holds the same full batch and works on its data-parallel share (``dp_shard_rows``); results come from
the last pipeline stage (``broadcast_from_last_stage``) and are concatenated over DP (``all_gather_dp_rows``).
Tensors travel on ``device()`` (the current GPU for NCCL, the CPU for gloo) and come back on the CPU.

Imports megatron.core's parallel_state and torch.distributed; nothing else of the project.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ttrl_megatron.distributed.devices import compute_device


def device() -> torch.device:
    """Where the model computes and where collectives run: the current GPU with CUDA (NCCL), else the CPU (gloo).
    The policy itself lives in ``ttrl_megatron.distributed.devices``."""
    return compute_device()


def dp_shard_rows(num_rows: int, dp_rank: int, dp_size: int, what: str = "batch") -> torch.Tensor:
    """Row ids ``[num_rows / dp_size]`` of this DP rank's contiguous share; sizes must divide."""
    if num_rows % dp_size:
        raise ValueError(f"{what} of {num_rows} rows is not divisible by the data-parallel size {dp_size}")
    share = num_rows // dp_size
    return torch.arange(dp_rank * share, (dp_rank + 1) * share)  # host: row ids of the host batch



def broadcast_from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    """Copy the last pipeline stage's ``tensor`` to every stage (same shape and dtype expected everywhere)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    tensor = tensor.to(device()).contiguous()
    dist.broadcast(
        tensor,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return tensor.cpu()


def all_gather_dp_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each DP rank's ``[B/dp, ...]`` share in DP-rank order -> ``[B, ...]`` on every rank."""
    dp_size = parallel_state.get_data_parallel_world_size()
    if dp_size == 1:
        return tensor
    tensor = tensor.to(device()).contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dp_size)]
    dist.all_gather(parts, tensor, group=parallel_state.get_data_parallel_group())
    return torch.cat(parts, dim=0).cpu()


def sum_over_dp_last_stage(values: torch.Tensor) -> torch.Tensor:
    """Sum a vector of last-stage values over DP ranks and hand the result to every rank.

    One all-reduce over the whole world: non-last stages contribute zeros and every TP rank holds the same
    values, so the world sum divided by the TP size is the DP sum of the last stage.
    """
    values = values.to(device(), torch.float64)
    if not parallel_state.is_pipeline_last_stage():
        values = torch.zeros_like(values)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values.cpu() / parallel_state.get_tensor_model_parallel_world_size()


def all_reduce_dp_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over the data-parallel group (e.g. token counts of each rank's share of a mini-batch)."""
    values = values.to(device()).clone()
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
    return values.cpu()
