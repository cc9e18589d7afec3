"""Split a verl-layout batch into mini-batches and micro-batches, and trim padding columns from a micro-batch.

Batch layout (verl, as the rollout returns it): ``input_ids [B, P+R]`` = left-padded prompt (P columns) followed by
the right-padded response (R columns); ``attention_mask [B, P+R]`` marks real tokens; response-aligned tensors
(``responses``, ``response_mask``, ``old_log_probs``, ``advantages`` ...) are ``[B, R]``.

- ``mini_batch_rows``: the rows of global mini-batch ``k`` that belong to one DP rank. The global mini-batch is the
  same set of rows whatever the DP size (so an update does not depend on how it is split over ranks).
- ``split_fixed`` / ``split_by_token_budget``: micro-batches of row indices, by a fixed row count or by a token
  budget (``use_dynamic_bsz``). The budget counts PADDED tokens of a micro-batch after trimming
  (``rows * (max prompt length + max response length)``), i.e. what the model really processes, so it is a hard
  bound on activation memory. verl (with remove-padding) counts unpadded tokens; ours is never looser.
- ``trim_columns``: cut the prompt columns that are padding in every row of a micro-batch (left) and the response
  columns that are padding in every row (right); the model then runs on ``[b, P' + R']`` instead of ``[b, P + R]``.

Pure torch: must not import torch.distributed, megatron or anything else of ttrl_megatron.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

# Tensors laid out over the full sequence [B, P+R]; everything else with a second dim is response-aligned [B, R].
SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids")


def mini_batch_rows(
    num_rows: int, mini_batch_size: int, dp_rank: int, dp_size: int, order: Optional[torch.Tensor] = None
) -> List[torch.Tensor]:
    """Row indices (into the full batch) of each global mini-batch held by ``dp_rank``.

    Global mini-batch ``k`` = rows ``order[k*M:(k+1)*M]`` (M = ``mini_batch_size`` rows, ``order`` = identity or a
    shuffle shared by all ranks); DP rank ``r`` gets its ``r``-th contiguous ``M/dp_size`` share.
    Raises ValueError naming the setting when the sizes do not divide.
    """
    if mini_batch_size < 1 or num_rows % mini_batch_size:
        raise ValueError(
            f"batch of {num_rows} rows is not divisible into mini-batches of {mini_batch_size} rows "
            "(ppo_mini_batch_size * rows per prompt); change ppo_mini_batch_size or the train batch size"
        )
    if mini_batch_size % dp_size:
        raise ValueError(
            f"mini-batch of {mini_batch_size} rows (ppo_mini_batch_size * rows per prompt) is not divisible by the "
            f"data-parallel size {dp_size}; change ppo_mini_batch_size or the parallel layout"
        )
    order = torch.arange(num_rows) if order is None else order  # host: row ids of the host batch
    share = mini_batch_size // dp_size
    return [
        order[start + dp_rank * share : start + (dp_rank + 1) * share]
        for start in range(0, num_rows, mini_batch_size)
    ]


def split_fixed(rows: torch.Tensor, micro_batch_size: int) -> List[torch.Tensor]:
    """Consecutive micro-batches of ``micro_batch_size`` rows (the last may be shorter)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro batch size must be >= 1, got {micro_batch_size}")
    return [rows[i : i + micro_batch_size] for i in range(0, rows.numel(), micro_batch_size)]


def sequence_lengths(attention_mask: torch.Tensor, response_width: int) -> tuple:
    """(prompt lengths ``[B]``, response lengths ``[B]``) = real tokens left / right of column ``P = T - R``."""
    prompt_width = attention_mask.shape[1] - response_width
    return attention_mask[:, :prompt_width].sum(-1), attention_mask[:, prompt_width:].sum(-1)


def split_by_token_budget(
    rows: torch.Tensor, prompt_lens: torch.Tensor, response_lens: torch.Tensor, max_token_len: int
) -> List[torch.Tensor]:
    """Micro-batches whose padded size ``rows * (max prompt len + max response len)`` stays within ``max_token_len``.

    Rows are sorted by total length (longest first) and packed greedily, so rows of similar length share a
    micro-batch and little padding is processed. ``prompt_lens``/``response_lens`` are indexed by row id
    (``[B]`` of the full batch). Raises ValueError when one row alone exceeds the budget.
    """
    if rows.numel() == 0:
        return []
    p, r = prompt_lens[rows], response_lens[rows]
    longest = int((p + r).max())
    if longest > max_token_len:
        raise ValueError(
            f"a sequence of {longest} tokens exceeds the token budget {max_token_len} "
            "(ppo_max_token_len_per_gpu / log_prob_max_token_len_per_gpu); raise it to at least the longest "
            "prompt + response length"
        )
    order = torch.argsort(p + r, descending=True, stable=True)
    groups: List[List[int]] = []
    cur: List[int] = []
    max_p = max_r = 0
    for i in order.tolist():
        new_p, new_r = max(max_p, int(p[i])), max(max_r, int(r[i]))
        if cur and (len(cur) + 1) * (new_p + new_r) > max_token_len:
            groups.append(cur)
            cur, new_p, new_r = [], int(p[i]), int(r[i])
        cur.append(i)
        max_p, max_r = new_p, new_r
    groups.append(cur)
    # Inside a micro-batch keep the original row order (deterministic, easier to read when debugging).
    return [rows[torch.tensor(sorted(g), dtype=torch.long)] for g in groups]  # host: row ids of the host batch


@dataclass
class MicroBatch:
    """One micro-batch: ``rows`` (indices into the source batch) and its trimmed tensors.

    ``tensors``: sequence tensors ``[b, P' + R']`` and response tensors ``[b, R']``; ``prompt_width`` = P' (the
    response starts at column P'), ``response_width`` = R' (<= R, the columns cut on the right are padding in
    every row, so results there are zero-filled by the caller).
    """

    rows: torch.Tensor
    tensors: Dict[str, torch.Tensor]
    prompt_width: int
    response_width: int

    @property
    def num_rows(self) -> int:
        return int(self.rows.numel())


def trim_columns(
    batch: Dict[str, torch.Tensor], rows: torch.Tensor, response_width: int, keys: Sequence[str]
) -> MicroBatch:
    """Select ``rows`` of the named tensors and cut the columns that are padding in every selected row.

    ``batch`` holds full-width tensors (``attention_mask [B, P+R]`` is required); ``keys`` names the tensors to
    carry (sequence keys are cut on both sides, response-aligned ones on the right only). The response block
    always keeps at least one column so that shapes stay non-empty.
    """
    mask = batch["attention_mask"][rows]
    prompt_width = mask.shape[1] - response_width
    prompt_lens, resp_lens = sequence_lengths(mask, response_width)
    keep_p = max(int(prompt_lens.max()), 1) if rows.numel() else prompt_width
    keep_r = max(int(resp_lens.max()), 1) if rows.numel() else response_width
    keep_p, keep_r = min(keep_p, prompt_width), min(keep_r, response_width)
    seq_cols = slice(prompt_width - keep_p, prompt_width + keep_r)
    out: Dict[str, torch.Tensor] = {}
    for key in keys:
        t = batch[key][rows]
        if key in SEQUENCE_KEYS:
            out[key] = t[:, seq_cols]
        elif t.dim() >= 2:
            if t.shape[1] != response_width:
                raise ValueError(
                    f"batch['{key}'] has {t.shape[1]} columns, expected the response width {response_width}"
                )
            out[key] = t[:, :keep_r]
        else:
            out[key] = t
    return MicroBatch(rows=rows, tensors=out, prompt_width=keep_p, response_width=keep_r)


def scatter_rows(parts: Sequence[MicroBatch], values: Sequence[torch.Tensor], num_rows: int, width: int) -> torch.Tensor:
    """Put per-micro-batch results ``[b_i, R'_i]`` back at their rows of a zero ``[num_rows, width]`` tensor."""
    dtype = values[0].dtype if values else torch.float32
    out = torch.zeros(num_rows, width, dtype=dtype)  # host: results return to the host batch
    for mb, v in zip(parts, values):
        out[mb.rows, : v.shape[1]] = v
    return out
