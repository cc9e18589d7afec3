"""Data-parallel rollout over rollout groups, gathered as tensors, so every rank holds the identical batch.

Rollout groups: the world is cut into `world / tp` groups of `tp` consecutive ranks (rollout TP =
`actor_rollout_ref.rollout.tensor_model_parallel_size`; vLLM's external_launcher builds its TP groups the same
way). Group g generates prompts `split_evenly(P, groups)[g]`: every rank of the group calls its engine with the same
prompts and the same seed (the group's engines are one sharded model, so they return the same rows), then each rank
keeps its own contiguous slice of the group's rows (chunk `tp_rank`, as verl's SPMD rollout and TRL's colocate mode
do). One all-gather over the world in rank order then yields group 0's chunks, group 1's chunks, ...: the
prompt-major batch, each row sent once.

The gather moves tensors (`rollout/packed.py`: one int32 word buffer per rank with bit-packed token ids, lengths,
finish codes and, when other ranks need them, log-prob bits) rather than pickled Python lists:
bench/bench_rollout_gather.py measures both. The trainer leaves the log-probs on the rank that sampled them unless
rollout correction needs them on every rank (trainer/corrections.py).

Seeds: each call passes an explicit sampling seed derived from (base seed, step, purpose, rollout group), so a rerun
-- or a resumed run, whose engines restart their call counters -- draws exactly the same samples at the same step,
and the ranks of a TP group draw alike. torch.distributed only (no megatron, no vllm).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ttrl_megatron.distributed.devices import collective_device
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.rollout.base import SamplingConfig, derive_seed
from ttrl_megatron.rollout.packed import HEADER_WORDS, PackedRollout

from .assemble import assemble_batch, prompt_uids, split_evenly

TRAIN, VALIDATION = 0, 1  # the "purpose" key of the derived seeds


@dataclasses.dataclass(frozen=True)
class RolloutGroups:
    """Where this rank sits among the rollout groups: `groups` groups of `tp` consecutive ranks."""

    rank: int
    world: int
    tp: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1 or self.world % self.tp:
            raise ValueError(f"rollout tensor_model_parallel_size={self.tp} must divide the world size {self.world}")

    @classmethod
    def current(cls, tp: int = 1) -> "RolloutGroups":
        if not dist.is_initialized():
            return cls(0, 1, tp)
        return cls(dist.get_rank(), dist.get_world_size(), tp)

    @property
    def groups(self) -> int:
        return self.world // self.tp

    @property
    def group(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp


def sampling_for(base: SamplingConfig, seed: int, step: int, purpose: int, groups: RolloutGroups) -> SamplingConfig:
    """``base`` with this rollout group's seed for (step, purpose); the same on every rank of the group."""
    return dataclasses.replace(base, seed=derive_seed(seed, step, purpose, groups.group))


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


def all_gather_packed(local: PackedRollout, group=None, logprobs_everywhere: bool = True) -> PackedRollout:
    """Every rank's rows, in rank order, on every rank: a header all-gather (rows, tokens, id bits) then one
    all-gather of the int32 word buffers (ids packed at the batch's largest id width) padded to the longest
    (collective over ``group``, default the world).

    ``logprobs_everywhere=False``: the log-probs stay on the rank that sampled them (nothing but their rank needs
    them unless rollout correction reweights every row: the mismatch metrics are reduced from per-rank sums); the
    result then holds this rank's log-probs, zeros for the other ranks' rows, and ``logprob_rank`` says whose are
    real (global ranks)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return local
    device = collective_device(group)  # NCCL takes device tensors, gloo host tensors
    world = dist.get_world_size(group)
    header = local.header(with_logprobs=logprobs_everywhere).to(device)
    headers = [torch.empty(HEADER_WORDS, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    headers = [h.tolist() for h in headers]
    bits = max(h[3] for h in headers)  # one id width for every part: the largest id of the whole batch
    width = max(PackedRollout.words(h, bits) for h in headers)
    words = local.encode(bits, with_logprobs=logprobs_everywhere)
    buffer = torch.zeros(width, dtype=torch.int32, device=device)
    buffer[:words.numel()] = words.to(device)
    buffers = [torch.empty(width, dtype=torch.int32, device=device) for _ in range(world)]
    dist.all_gather(buffers, buffer, group=group)
    parts = [PackedRollout.decode(local.n, h, b, bits) for h, b in zip(headers, buffers)]
    if not logprobs_everywhere and local.logprobs is not None:
        me = dist.get_rank(group)
        parts = [dataclasses.replace(
            part, logprobs=local.logprobs if i == me else torch.zeros(part.token_ids.numel()),  # host: rollout batch
            logprob_rank=torch.full((len(part),), i if group is None else dist.get_global_rank(group, i),  # host: rows
                                    dtype=torch.long)) for i, part in enumerate(parts)]
    return PackedRollout.concat(parts)


def generate_dp(engine, prompts: dict, n: int, sampling: SamplingConfig, groups: RolloutGroups,
                logprobs_everywhere: bool = True) -> PackedRollout:
    """``n`` samples for every prompt of the collated batch, generated per rollout group and gathered as tensors
    (prompt-major; identical on every rank, but for the log-probs of other ranks' rows when not
    ``logprobs_everywhere``: see ``all_gather_packed``)."""
    start, end = split_evenly(prompts["input_ids"].shape[0], groups.groups)[groups.group]
    ids = prompts["raw_prompt_ids"][start:end]
    if ids:  # the same on every rank of the group: they all call their (shared) engine, or none does
        local = PackedRollout.from_output(engine.generate([list(p) for p in ids], n, sampling))
    else:
        local = PackedRollout.empty(n, sampling.logprobs)
    lo, hi = split_evenly(len(local), groups.tp)[groups.tp_rank]
    return all_gather_packed(local.rows(lo, hi), logprobs_everywhere=logprobs_everywhere)


def generate_batch(engine, tokenizer, prompts: dict, n: int, sampling: SamplingConfig, *, step: int,
                   groups: RolloutGroups, response_length: int, logprobs_everywhere: bool = True) -> DataProto:
    """Generate and assemble the step batch (B = prompts x n rows, identical on every rank; with
    ``logprobs_everywhere=False`` each rank holds only its own rows' rollout_log_probs, and rollout_log_probs_rank
    ``[B]`` says which rank holds each row's)."""
    rollout = generate_dp(engine, prompts, n, sampling, groups, logprobs_everywhere)

    def decode(token_ids):
        return tokenizer.decode(token_ids, skip_special_tokens=True)

    return assemble_batch(prompts, rollout, uids=prompt_uids(step, prompts["input_ids"].shape[0]),
                          pad_token_id=tokenizer.pad_token_id, response_length=response_length, decode=decode)
