"""``trainer.balance_batch``: reorder rows so every data-parallel rank gets about the same number of tokens.

The actor/critic give DP rank r the r-th contiguous share of each global mini-batch (megatron/batching.py), so the
reordering is done INSIDE each mini-batch: the set of rows of every mini-batch, and therefore the update itself, is
unchanged; only which rank computes which row changes. (verl balances the whole batch, which also changes the
mini-batch composition.) Partitioning: longest-processing-time greedy with equal part sizes (each row goes to the
lightest part that still has room), a 4/3-approximation of the optimal makespan.

Pure torch; no torch.distributed.
"""

from __future__ import annotations

import torch


def equal_size_partitions(lengths: list[int], parts: int) -> list[list[int]]:
    """Split item ids into ``parts`` groups of exactly len/parts items with near-equal length sums (greedy LPT)."""
    if parts < 1 or len(lengths) % parts:
        raise ValueError(f"cannot split {len(lengths)} rows into {parts} equal parts")
    size = len(lengths) // parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    sums = [0] * parts
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        open_parts = [p for p in range(parts) if len(groups[p]) < size]
        target = min(open_parts, key=lambda p: (sums[p], p))
        groups[target].append(i)
        sums[target] += lengths[i]
    return [sorted(g) for g in groups]


def balance_permutation(seq_lengths: torch.Tensor, dp_size: int, mini_batch_rows: int) -> torch.Tensor:
    """Permutation ``[B]`` that balances tokens over ``dp_size`` contiguous shares within each mini-batch.

    seq_lengths: ``[B]`` tokens per row (attention_mask sums). mini_batch_rows: rows per global mini-batch (must
    divide B and be divisible by dp_size). Returns row ids: new row k = old row perm[k].
    """
    num_rows = seq_lengths.shape[0]
    if mini_batch_rows < 1 or num_rows % mini_batch_rows or mini_batch_rows % dp_size:
        raise ValueError(f"balance_batch: {num_rows} rows, mini-batches of {mini_batch_rows}, DP size {dp_size} "
                         f"do not divide")
    order = []
    for start in range(0, num_rows, mini_batch_rows):
        lengths = seq_lengths[start:start + mini_batch_rows].tolist()
        for group in equal_size_partitions(lengths, dp_size):
            order.extend(start + i for i in group)
    return torch.tensor(order, dtype=torch.long)  # host: a permutation of the host batch


def seqlen_metrics(seq_lengths: torch.Tensor, dp_size: int, perm: torch.Tensor | None, mini_batch_rows: int
                   ) -> dict[str, float]:
    """verl's ``global_seqlen/*``: tokens per DP rank before (min/max/minmax_diff/mean) and after balancing."""
    def per_rank(lengths: torch.Tensor) -> torch.Tensor:
        shares = lengths.reshape(-1, dp_size, mini_batch_rows // dp_size)  # [mini-batches, dp, rows]
        return shares.sum(dim=(0, 2)).to(torch.float64)

    before = per_rank(seq_lengths)
    out = {"global_seqlen/min": float(before.min()), "global_seqlen/max": float(before.max()),
           "global_seqlen/minmax_diff": float(before.max() - before.min()), "global_seqlen/mean": float(before.mean())}
    if perm is not None:
        after = per_rank(seq_lengths[perm])
        out.update({"global_seqlen/balanced_min": float(after.min()), "global_seqlen/balanced_max": float(after.max())})
    return out
