"""Step metrics with verl's names (reference/algorithms-semantics.md §1.9): data statistics of the trained batch,
timing (and, on GPU, peak memory) per phase, throughput and, on a GPU whose peak is known, the actor update's model
FLOPs utilization. (Rollout-vs-actor parity metrics come from bridge/sync.py.)

Pure torch; no torch.distributed, megatron or vllm. Every function returns ``{name: float}``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from ttrl_megatron.distributed.devices import compute_device
from ttrl_megatron.memory.recorder import phase_memory
from ttrl_megatron.perf.flops import DecoderShape, model_flops_utilization, peak_bf16_flops, training_flops
from ttrl_megatron.protocol import DataProto


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    values = values.to(torch.float64)
    if values.numel() == 0:
        return {f"{prefix}/mean": 0.0, f"{prefix}/max": 0.0, f"{prefix}/min": 0.0}
    return {f"{prefix}/mean": float(values.mean()), f"{prefix}/max": float(values.max()),
            f"{prefix}/min": float(values.min())}


def compute_data_metrics(batch: DataProto, response_length: int) -> dict[str, float]:
    """``critic/score|rewards|advantages|returns|values/*``, ``critic/vf_explained_var``, ``response_length/*``,
    ``prompt_length/*`` of the trained batch.

    Needs ``token_level_scores``, ``token_level_rewards``, ``advantages``, ``returns``, ``response_mask``,
    ``attention_mask`` ``[B, R]`` / ``[B, P+R]``; ``values`` is optional (critic runs only).
    Token-level tensors are summarised over valid tokens; scores and rewards are per-row sums.
    """
    t = batch.batch
    mask = t["response_mask"].bool()
    lengths = t["response_mask"].sum(dim=-1)
    prompt_lengths = t["attention_mask"].sum(dim=-1) - lengths
    out = {}
    out.update(_stats("critic/score", t["token_level_scores"].sum(dim=-1)))
    out.update(_stats("critic/rewards", t["token_level_rewards"].sum(dim=-1)))
    out.update(_stats("critic/advantages", t["advantages"][mask]))
    out.update(_stats("critic/returns", t["returns"][mask]))
    if "values" in t:
        values, returns = t["values"][mask].to(torch.float64), t["returns"][mask].to(torch.float64)
        out.update(_stats("critic/values", values))
        var_returns = returns.var(unbiased=False) if returns.numel() else torch.tensor(0.0)
        explained = 1.0 - (returns - values).var(unbiased=False) / (var_returns + 1e-5) if returns.numel() else 0.0
        out["critic/vf_explained_var"] = float(explained)
    out.update(_stats("response_length", lengths))
    out["response_length/clip_ratio"] = float((lengths >= response_length).to(torch.float64).mean())
    out.update(_stats("prompt_length", prompt_lengths))
    return out


def throughput_metrics(batch: DataProto, step_seconds: float, world_size: int) -> dict[str, float]:
    """``perf/total_num_tokens`` (prompt + response tokens trained on), ``perf/time_per_step``, ``perf/throughput``
    (tokens per second per process, verl's definition)."""
    tokens = float(batch.tensor("attention_mask").sum())
    return {"perf/total_num_tokens": tokens, "perf/time_per_step": step_seconds,
            "perf/throughput": tokens / max(step_seconds, 1e-9) / max(world_size, 1)}


def device_peak_flops(device: Optional[torch.device] = None) -> Optional[float]:
    """bf16 dense peak (FLOP/s) of ``device`` (default: this rank's compute device); None on the CPU or ``meta``
    and for a GPU not in perf/flops.py's table."""
    device = device if device is not None else compute_device()
    if device.type != "cuda":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


@dataclass(frozen=True)
class ActorUpdateCost:
    """What ``perf/mfu/actor`` needs besides the batch and the clock: the actor's architecture (a
    ``ModelArchConfig``), its PPO epochs (passes over the batch per update) and one device's peak FLOP/s."""

    arch: DecoderShape
    ppo_epochs: int
    peak_flops: float

    @classmethod
    def on_this_device(cls, arch: DecoderShape, ppo_epochs: int) -> Optional["ActorUpdateCost"]:
        """The cost model on this rank's compute device; None where no peak is known (CPU, an unlisted GPU), so
        such a run logs no MFU rather than a made-up one."""
        peak = device_peak_flops()
        return cls(arch, ppo_epochs, peak) if peak is not None else None


def actor_mfu_metrics(batch: DataProto, update_seconds: Optional[float], world_size: int,
                      cost: Optional[ActorUpdateCost]) -> dict[str, float]:
    """``perf/mfu/actor``: model FLOPs of the actor update (forward + backward over every row of ``batch``,
    ``attention_mask`` ``[B, P+R]`` row sums as the lengths, ``ppo_epochs`` times) over what ``world_size`` devices
    at ``cost.peak_flops`` could do in ``update_seconds`` (the ``update_actor`` phase). verl's definition
    (perf/flops.py). ``{}`` without a cost model (no known peak) or without a timed update.

    Padding rows of a filtered batch count: the update computes them like any other row."""
    if cost is None or not update_seconds:
        return {}
    lengths = batch.tensor("attention_mask").sum(dim=-1).tolist()
    flops = training_flops(cost.arch, lengths) * cost.ppo_epochs
    return {"perf/mfu/actor": model_flops_utilization(flops, update_seconds, cost.peak_flops, world_size)}


class PhaseTimer:
    """Accumulates wall time per phase: ``with timer("gen"): ...`` -> ``timing_s/gen``; on a CUDA run also the
    phase's peak memory, ``memory/peak_gib/gen`` (memory/recorder.py; max over ranks, so ``metrics()`` is then a
    collective: call it on every rank)."""

    def __init__(self, memory=None):
        self.seconds: dict[str, float] = {}
        self.memory = memory if memory is not None else phase_memory()

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        with self.memory(phase):
            try:
                yield
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {**{f"timing_s/{k}": v for k, v in self.seconds.items()}, **self.memory.metrics()}


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """``{prefix + key: value}``."""
    return {prefix + k: float(v) for k, v in metrics.items()}
