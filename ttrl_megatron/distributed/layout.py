"""The TP x PP x DP parallel layout of a run, and its validation against the world size and a model.

Rank order follows megatron-core's default ("tp-cp-ep-dp-pp"): TP is the fastest-varying index, PP the slowest.
Pure python: imports nothing from torch.distributed or megatron (usable from config validation).
"""
from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """A parallel layout that cannot work; the message names the offending setting."""


@dataclass(frozen=True)
class ParallelLayout:
    """World = tp * pp * dp. ``field_prefix`` only shapes error messages (e.g. ``actor_rollout_ref.actor.megatron``)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1

    def __post_init__(self):
        for name in ("tp", "pp", "dp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LayoutError(f"ParallelLayout.{name} must be a positive integer, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @classmethod
    def from_world(cls, world_size: int, tp: int = 1, pp: int = 1, *, field_prefix: str = "") -> "ParallelLayout":
        """Derive dp = world_size / (tp * pp); raise LayoutError naming the field when it does not divide."""
        tp_field, pp_field = _field(field_prefix, "tensor_model_parallel_size"), _field(
            field_prefix, "pipeline_model_parallel_size"
        )
        for field, value in ((tp_field, tp), (pp_field, pp)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LayoutError(f"{field} must be a positive integer, got {value!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise LayoutError(f"world size must be a positive integer, got {world_size!r}")
        if world_size % (tp * pp) != 0:
            raise LayoutError(
                f"world size {world_size} is not divisible by {tp_field} * {pp_field} = {tp} * {pp} = {tp * pp}; "
                "change the parallel sizes or the number of processes (nnodes * nproc_per_node)"
            )
        return cls(tp=tp, pp=pp, dp=world_size // (tp * pp))

    def validate_model(
        self,
        *,
        num_layers: int,
        num_attention_heads: int,
        num_query_groups: int,
        field_prefix: str = "",
        model_name: str = "model",
    ) -> None:
        """Check that the model splits evenly: heads and KV groups over TP, layers over PP."""
        tp_field = _field(field_prefix, "tensor_model_parallel_size")
        pp_field = _field(field_prefix, "pipeline_model_parallel_size")
        if num_attention_heads % self.tp:
            raise LayoutError(
                f"{tp_field}={self.tp} does not divide num_attention_heads={num_attention_heads} of {model_name}"
            )
        if num_query_groups % self.tp:
            raise LayoutError(
                f"{tp_field}={self.tp} does not divide num_key_value_heads={num_query_groups} of {model_name} "
                "(each TP rank must own whole query groups)"
            )
        if num_layers % self.pp:
            raise LayoutError(
                f"{pp_field}={self.pp} does not divide num_hidden_layers={num_layers} of {model_name}"
            )

    def coords(self, rank: int) -> dict:
        """(tp_rank, dp_rank, pp_rank) of a global rank in megatron's default order (tp fastest, pp slowest)."""
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} outside world of size {self.world_size}")
        return {"tp": rank % self.tp, "dp": (rank // self.tp) % self.dp, "pp": rank // (self.tp * self.dp)}


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
