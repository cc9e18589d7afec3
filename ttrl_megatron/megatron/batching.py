"""Split a verl-layout batch into mini-batches and micro-batches, and trim padding columns from a micro-batch.

Batch layout (verl, as the rollout returns it): ``input_ids [B, P+R]`` = left-padded prompt (P columns) followed by
the right-padded response (R columns); ``attention_mask [B, P+R]`` marks real tokens; response-aligned tensors
(``responses``, ``response_mask``, ``old_log_probs``, ``advantages`` ...) are ``[B, R]``.

- ``mini_batch_rows``: the rows of global mini-batch ``k`` that belong to one DP rank. The global mini-batch is the
  same set of rows whatever the DP size (so an update does not depend on how it is split over ranks).
- ``split_fixed``: micro-batches of a fixed row count.
- ``split_by_token_budget`` / ``plan_token_budget``: micro-batches by a token budget (``use_dynamic_bsz``), counted
  as the model processes them (``layout_tokens``): with packing (THD) the REAL tokens of each row, each rounded up
  to the pack alignment; without packing ``rows x`` the longest row (rows are right-aligned, packing.py). Packed
  micro-batches are balanced by greedy longest-first assignment into the fewest bins that all fit the budget;
  padded ones group rows of similar length (longest first) to waste little padding. ``plan_token_budget`` gives
  every DP rank the SAME number of micro-batches (the max any rank needs, verl's ``same_micro_num_in_dp``): every
  rank holds the whole batch, so each computes every rank's need locally, with no collective.
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


def aligned(lengths: torch.Tensor, align: int) -> torch.Tensor:
    """``lengths`` rounded up to a multiple of ``align`` (per-sequence padding of a pack, e.g. to the TP size)."""
    return (lengths + align - 1) // align * align


def layout_tokens(lengths: torch.Tensor, packed: bool, align: int = 1) -> int:
    """Tokens the model processes for rows of real lengths ``lengths [b]``: packed = sum of aligned lengths; padded
    (right-aligned rows) = rows x the aligned longest row."""
    if lengths.numel() == 0:
        return 0
    if packed:
        return int(aligned(lengths, align).sum())
    return int(lengths.numel() * int(aligned(lengths.max(), align)))


def _check_longest(lengths: torch.Tensor, max_token_len: int, align: int) -> None:
    longest = int(aligned(lengths.max(), align)) if lengths.numel() else 0
    if longest > max_token_len:
        raise ValueError(
            f"a sequence of {longest} tokens exceeds the token budget {max_token_len} "
            "(ppo_max_token_len_per_gpu / log_prob_max_token_len_per_gpu); raise it to at least the longest "
            "prompt + response length"
        )


def _balanced_bins(cost: List[int], bins: int) -> List[List[int]]:
    """Longest-processing-time greedy: items (by cost, longest first) each to the currently lightest bin."""
    groups: List[List[int]] = [[] for _ in range(bins)]
    sums = [0] * bins
    for i in sorted(range(len(cost)), key=lambda j: (-cost[j], j)):
        b = min(range(bins), key=lambda k: (sums[k], k))
        groups[b].append(i)
        sums[b] += cost[i]
    return [g for g in groups if g]


def _similar_length_groups(lengths: List[int], max_token_len: int) -> List[List[int]]:
    """Rows sorted longest first, cut greedily so that ``rows x longest`` stays within the budget."""
    groups: List[List[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        cur = groups[-1]
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * longest > max_token_len:
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if g]


def _partition(lengths: torch.Tensor, max_token_len: int, packed: bool, align: int,
               count: int) -> Optional[List[List[int]]]:
    """Exactly ``count`` non-empty groups of item positions that each fit the budget, or None if not found."""
    n = int(lengths.numel())
    if count > n or count < 1:
        return None
    if packed:
        cost = aligned(lengths, align).clamp(min=1).tolist()
        groups = _balanced_bins(cost, count)
        if len(groups) == count and max(sum(cost[i] for i in g) for g in groups) <= max_token_len:
            return groups
        return None
    lens = aligned(lengths, align).tolist()
    groups = _similar_length_groups(lens, max_token_len)
    if len(groups) > count:
        return None
    while len(groups) < count:  # split the group with the most rows (halves still fit the budget)
        k = max(range(len(groups)), key=lambda j: (len(groups[j]), -j))
        g = groups.pop(k)
        groups[k:k] = [g[: len(g) // 2], g[len(g) // 2:]]
    return groups


def _min_count(lengths: torch.Tensor, max_token_len: int, packed: bool, align: int) -> int:
    if lengths.numel() == 0:
        return 0
    count = max(1, -(-layout_tokens(lengths, True, align) // max_token_len)) if packed else 1
    while count < lengths.numel() and _partition(lengths, max_token_len, packed, align, count) is None:
        count += 1
    return count  # at the row count every row is alone, which fits (checked by _check_longest)


def plan_token_budget(
    shares: Sequence[torch.Tensor], lengths: torch.Tensor, rank: int, max_token_len: int, *, packed: bool,
    align: int = 1,
) -> List[torch.Tensor]:
    """Micro-batches of DP share ``shares[rank]`` as POSITIONS into that share, with the same count on every share.

    ``shares``: the row ids of every DP rank's share (all ranks hold the whole batch); ``lengths [B]``: real tokens
    of each row (indexed by row id). The count is the smallest one with which EVERY share fits the budget.
    Inside a micro-batch rows keep their original order. Raises ValueError when one row alone exceeds the budget.
    """
    for share in shares:
        _check_longest(lengths[share], max_token_len, align)
    mine = shares[rank]
    if mine.numel() == 0:
        return []
    own = _min_count(lengths[mine], max_token_len, packed, align)
    count = max(_min_count(lengths[s], max_token_len, packed, align) for s in shares)
    limit = min(int(s.numel()) for s in shares if s.numel())
    while count < limit and any(
            s.numel() and _partition(lengths[s], max_token_len, packed, align, count) is None for s in shares):
        count += 1
    # Equal counts are for balance only (correctness does not need them): should no common count exist (shares of
    # different sizes), this share falls back to its own smallest count.
    groups = (_partition(lengths[mine], max_token_len, packed, align, count)
              or _partition(lengths[mine], max_token_len, packed, align, own))
    return [torch.tensor(sorted(g), dtype=torch.long) for g in groups]  # host: positions in the host batch


def split_by_token_budget(
    rows: torch.Tensor, lengths: torch.Tensor, max_token_len: int, *, packed: bool, align: int = 1
) -> List[torch.Tensor]:
    """Micro-batches (row ids) of ``rows`` within the token budget (``layout_tokens``); one DP share (see
    ``plan_token_budget``)."""
    return [rows[p] for p in plan_token_budget([rows], lengths, 0, max_token_len, packed=packed, align=align)]


@dataclass
class MicroBatch:
    """One micro-batch: ``rows`` (indices into the source batch) and its trimmed tensors.

    ``tensors``: sequence tensors ``[b, P' + R']`` and response tensors ``[b, R']``; ``prompt_width`` = P' (the
    response starts at column P'), ``response_width`` = R' (<= R, the columns cut on the right are padding in
    every row, so results there are zero-filled by the caller). ``layout``: the model inputs and response slots
    (packing.py ``Layout``), set by the engine before the schedule runs.
    """

    rows: torch.Tensor
    tensors: Dict[str, torch.Tensor]
    prompt_width: int
    response_width: int
    layout: Optional[object] = None

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
    out = torch.zeros(num_rows, width, dtype=dtype)  # host: results are gathered on the host
    for mb, v in zip(parts, values):
        out[mb.rows, : v.shape[1]] = v
    return out
