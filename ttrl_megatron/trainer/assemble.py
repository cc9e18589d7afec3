"""Rollout outputs -> the step's ``DataProto`` in verl's layout (left-padded prompt + right-padded response).

Rows are prompt-major: the n responses of prompt i are rows i*n .. i*n+n-1 (the order ``RolloutOutput`` uses), so
per-prompt grouping (majority vote, GRPO uid groups) needs no reordering.

Tensors (B = prompts x n rows, P = data.max_prompt_length, R = data.max_response_length):
  prompts [B, P] (left-padded), responses [B, R] (right-padded with the pad id), input_ids [B, P+R],
  attention_mask [B, P+R] (1 on real prompt and response tokens), position_ids [B, P+R] (0 at the first real token,
  counting on through the response, as HF), response_mask [B, R] (1 on generated tokens incl. EOS),
  rollout_log_probs [B, R] (vLLM's sampled-token log-probs, 0 on padding), and rollout_log_probs_rank [B] (the rank
  holding the row's real log-probs) when they were left on the rank that sampled them (trainer/generation.py).
Per-row objects: uid (one per prompt, shared by its n rows), response_text (decoded, special tokens skipped),
finish_reason, and every per-prompt field of the prompt batch (reward_model, data_source, extra_info, ...).

Torch + numpy only (no torch.distributed, megatron, vllm).
"""

from __future__ import annotations

import copy

import torch

from ttrl_megatron.protocol import DataProto, to_object_array
from ttrl_megatron.rollout.base import RolloutOutput
from ttrl_megatron.rollout.packed import LOGPROB_RANK, PackedRollout

PROMPT_TENSORS = ("input_ids", "attention_mask", "position_ids")
# Per-prompt fields of a collated prompt batch that are not carried into the rollout batch.
_DROPPED = ("raw_prompt_ids",)


def prompt_uids(step: int, num_prompts: int) -> list[str]:
    """Deterministic group ids ``"<step>:<i>"`` (verl uses uuid4; a reproducible id keeps resumed runs identical)."""
    return [f"{step}:{i}" for i in range(num_prompts)]


def assemble_batch(prompts: dict, rollout: RolloutOutput | PackedRollout, *, uids: list[str], pad_token_id: int,
                   response_length: int, decode) -> DataProto:
    """Build the B = P_n x n row batch of one generate call.

    Args:
        prompts: a collated prompt batch (``collate_prompts``): ``input_ids/attention_mask [Np, P]`` plus lists.
        rollout: the engine's output for those Np prompts (any n; rows prompt-major), as lists or packed tensors
            (the packed form pads without a Python loop).
        uids: one group id per prompt.
        pad_token_id: id used for right padding of the responses.
        response_length: R, the fixed response width (data.max_response_length); longer responses raise.
        decode: ``list[int] -> str`` (the tokenizer's decode with special tokens skipped).
    """
    num_prompts, n = prompts["input_ids"].shape[0], rollout.n
    if rollout.num_prompts != num_prompts or len(uids) != num_prompts:
        raise ValueError(f"assemble_batch: {num_prompts} prompts, {rollout.num_prompts} in the rollout output and "
                         f"{len(uids)} uids")
    padded = rollout.to_padded(pad_token_id, response_length)
    responses, response_mask = padded["responses"], padded["response_mask"]
    rows = torch.arange(num_prompts).repeat_interleave(n)  # host: the driver batch
    prompt_ids, prompt_mask = prompts["input_ids"][rows], prompts["attention_mask"][rows]
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    tensors = {
        "prompts": prompt_ids,
        "responses": responses,
        "input_ids": torch.cat([prompt_ids, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0),
        "response_mask": response_mask,
    }
    for key in ("rollout_log_probs", LOGPROB_RANK):
        if key in padded:
            tensors[key] = padded[key]
    row_ids = rows.tolist()
    objects = {k: [copy.deepcopy(v[i]) for i in row_ids] for k, v in prompts.items()
               if k not in PROMPT_TENSORS and k not in _DROPPED}
    objects["uid"] = [uids[i] for i in row_ids]
    objects["response_text"] = [decode(ids) for ids in rollout.response_ids]
    objects["finish_reason"] = list(rollout.finish_reasons)
    return DataProto.from_dict(tensors, {k: to_object_array(v) for k, v in objects.items()})


def split_evenly(num_items: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of ``parts`` contiguous slices covering ``range(num_items)``; sizes differ by at most 1."""
    base, extra = divmod(num_items, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def merge_rollouts(parts: list[RolloutOutput]) -> RolloutOutput:
    """Concatenate per-rank outputs (same n) in rank order -> one prompt-major output. Empty parts are allowed."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("merge_rollouts: no rollout output")
    n = parts[0].n
    if any(p.n != n for p in parts):
        raise ValueError(f"merge_rollouts: parts have different n {[p.n for p in parts]}")
    with_lp = all(p.logprobs is not None for p in parts)
    return RolloutOutput(
        n=n,
        response_ids=[r for p in parts for r in p.response_ids],
        logprobs=[lp for p in parts for lp in p.logprobs] if with_lp else None,
        finish_reasons=[f for p in parts for f in p.finish_reasons],
    )
