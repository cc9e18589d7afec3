"""Data-parallel rollout: every rank's engine generates for its slice of the prompts; the outputs are all-gathered
(gloo object all-gather) so every rank then holds the identical prompt-major batch.

Seeds: each call passes an explicit sampling seed derived from (base seed, step, purpose, rank), so a rerun -- or a
resumed run, whose engines restart their call counters -- draws exactly the same samples at the same step.
torch.distributed only (no megatron, no vllm).
"""

from __future__ import annotations

import dataclasses

import torch.distributed as dist

from ttrl_megatron.protocol import DataProto
from ttrl_megatron.rollout.base import RolloutOutput, SamplingConfig, derive_seed

from .assemble import assemble_batch, merge_rollouts, prompt_uids, split_evenly

TRAIN, VALIDATION = 0, 1  # the "purpose" key of the derived seeds


def sampling_for(base: SamplingConfig, seed: int, step: int, purpose: int, rank: int) -> SamplingConfig:
    """``base`` with this rank's seed for (step, purpose)."""
    return dataclasses.replace(base, seed=derive_seed(seed, step, purpose, rank))


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (identity when not distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def generate_dp(engine, prompts: dict, n: int, sampling: SamplingConfig, rank: int, world: int) -> RolloutOutput:
    """``n`` samples for every prompt of the collated batch, generated DP-style and gathered (prompt-major)."""
    start, end = split_evenly(prompts["input_ids"].shape[0], world)[rank]
    ids = prompts["raw_prompt_ids"][start:end]
    local = engine.generate([list(p) for p in ids], n, sampling) if ids else RolloutOutput(n, [], [], [])
    return merge_rollouts(all_gather_objects(local))


def generate_batch(engine, tokenizer, prompts: dict, n: int, sampling: SamplingConfig, *, step: int, rank: int,
                   world: int, response_length: int) -> DataProto:
    """Generate and assemble the step batch (B = prompts x n rows, identical on every rank)."""
    rollout = generate_dp(engine, prompts, n, sampling, rank, world)

    def decode(token_ids):
        return tokenizer.decode(token_ids, skip_special_tokens=True)

    return assemble_batch(prompts, rollout, uids=prompt_uids(step, prompts["input_ids"].shape[0]),
                          pad_token_id=tokenizer.pad_token_id, response_length=response_length, decode=decode)
