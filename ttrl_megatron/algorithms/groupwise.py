"""Vectorized per-group statistics for outcome advantage estimators (no Python loop over rows or groups).

Rows that share a group id (verl's per-prompt ``uid``) form a group. ``factorize_index`` turns any id array into
dense group numbers ``0..G-1``; the statistics then use ``bincount`` / ``index_add_`` / ``scatter_reduce_`` segment
operations. Statistics are computed in float64 (the inputs are only N scalars, so this is cheap) and the group rules of
reference/algorithms-semantics.md §1.4 apply: a singleton group has mean 0 and std 1; otherwise the std is unbiased
(N-1). A group whose scores are all identical gets exactly its common value as mean (so ``s - mean`` is exactly 0,
independent of float rounding of the sum) and std 0.

Pure torch/numpy; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio); multiplication wraps mod 2**64


def _bucket(digest: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(dense ids of equal digests [N], row index of the first row of each row's bucket [N])."""
    _, group_ids = torch.unique(torch.from_numpy(digest.view(np.int64)), return_inverse=True)
    first_row = torch.full((int(group_ids.max()) + 1,), digest.shape[0], dtype=torch.int64).scatter_reduce_(
        0, group_ids, torch.arange(digest.shape[0]), "amin")
    return group_ids, first_row[group_ids].numpy()


def _factorize_by_hash(arr: np.ndarray) -> torch.Tensor | None:
    """Dense group ids by hashing each id instead of sorting the ids (np.unique sorts N strings: several times
    slower), or None if two different ids share a hash.

    The hash is only a bucketing key: every row is compared with the first row of its bucket and any collision
    returns None (use the exact fallback), so the result is exact. Object arrays use Python's ``hash``/``==`` (cached
    for str; equal ids are those a dict would merge); fixed-width 'S'/'U' arrays hash their raw bytes.
    """
    if arr.dtype.kind == "O":
        digest = np.fromiter(map(hash, arr), dtype=np.int64, count=arr.shape[0])
        group_ids, first = _bucket(digest)
        return group_ids if bool(np.all(arr == arr[first])) else None
    width = arr.dtype.itemsize
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(arr.shape[0], width)
    if width % 8:
        raw = np.pad(raw, ((0, 0), (0, 8 - width % 8)))
    words = raw.view(np.uint64)  # [N, W]; the loop below runs over the W word columns, not over rows
    digest = np.zeros(arr.shape[0], dtype=np.uint64)
    for col in range(words.shape[1]):
        digest = digest * _HASH_MULT ^ words[:, col]
    group_ids, first = _bucket(digest)
    return group_ids if np.array_equal(words, words[first]) else None


def _factorize_numpy(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype.kind in "biu":
        return torch.from_numpy(arr.astype(np.int64, copy=False))
    if arr.dtype.kind in "OSU" and arr.shape[0] and arr.dtype.itemsize:
        try:
            group_ids = _factorize_by_hash(arr)
        except TypeError as exc:  # unhashable ids
            raise ValueError(f"index holds unhashable group ids ({exc}); use strings or integers") from exc
        if group_ids is not None:
            return group_ids
    try:
        _, inverse = np.unique(arr, return_inverse=True)
    except TypeError as exc:  # object arrays mixing e.g. str and int cannot be ordered
        raise ValueError(f"index holds group ids of mixed, non-comparable types ({exc}); use one id type") from exc
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64, copy=False))


def factorize_index(index, num_rows: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """Map group ids to dense group numbers.

    Args:
        index: [N] group ids: a torch tensor of integers, a numpy array (ints, strings, or object dtype holding
            comparable values such as uuid strings), or a list/tuple of them.
        num_rows: N, the expected number of rows (the batch size of the tensors the ids belong to).
        device: device of the returned tensor (default: the tensor's own device, or CPU).

    Returns:
        (group_ids [N] int64 with values in [0, G), G). Equal ids get equal numbers. The numbering order is
        unspecified (string ids are bucketed by hash, which Python salts per process); no estimator's result depends
        on it.
    """
    if isinstance(index, torch.Tensor):
        ids = index
        if device is None:
            device = ids.device
    else:
        arr = np.asarray(index)
        if arr.ndim != 1:
            raise ValueError(f"index must be one-dimensional with one group id per row, got shape {arr.shape}")
        ids = _factorize_numpy(arr)
        if arr.dtype.kind not in "biu" and ids.shape[0] == num_rows:
            return ids.to(device=device), (int(ids.max()) + 1 if ids.numel() else 0)  # already dense
    if ids.dim() != 1 or ids.shape[0] != num_rows:
        raise ValueError(f"index must have shape [{num_rows}] (one group id per row), got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"index tensor must hold integer group ids, got dtype {ids.dtype}")
    uniques, group_ids = torch.unique(ids, return_inverse=True)
    return group_ids.to(device=device, dtype=torch.int64), int(uniques.numel())


def segment_sum(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[G] sum of ``values`` [N] per group."""
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_ids, values)


@dataclass(frozen=True)
class GroupStats:
    """Per-row view of per-group statistics (all [N], float64 except count)."""

    count: torch.Tensor  # [N] int64 size n_g of the row's group
    mean: torch.Tensor  # [N] group mean (0 for singletons; the exact common value for uniform groups)
    std: torch.Tensor  # [N] unbiased group std (1 for singletons; 0 for uniform groups)
    uniform: torch.Tensor  # [N] bool: every score of the row's group is identical (singletons included)


def group_stats(scores: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> GroupStats:
    """Group mean/std of ``scores`` [N] under the singleton and uniform-group rules of the module docstring."""
    s = scores.to(torch.float64)
    count_g = torch.bincount(group_ids, minlength=num_groups)
    n = count_g.to(torch.float64)
    mean_g = segment_sum(s, group_ids, num_groups) / n.clamp_min(1)
    lo = torch.full((num_groups,), float("inf"), dtype=s.dtype, device=s.device)
    lo.scatter_reduce_(0, group_ids, s, "amin")
    hi = torch.full((num_groups,), float("-inf"), dtype=s.dtype, device=s.device)
    hi.scatter_reduce_(0, group_ids, s, "amax")
    uniform = lo == hi
    mean_g = torch.where(uniform, lo, mean_g)
    # Two-pass variance (deviations from the group mean): stable for large scores, unlike E[x^2] - E[x]^2.
    dev = s - mean_g[group_ids]
    var_g = segment_sum(dev * dev, group_ids, num_groups) / (n - 1).clamp_min(1)
    std_g = torch.where(uniform, torch.zeros_like(var_g), var_g.sqrt())
    single = count_g == 1
    mean_g = torch.where(single, torch.zeros_like(mean_g), mean_g)
    std_g = torch.where(single, torch.ones_like(std_g), std_g)
    return GroupStats(count=count_g[group_ids], mean=mean_g[group_ids], std=std_g[group_ids],
                      uniform=uniform[group_ids])


def broadcast_rows(row_values: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype,
                   out: torch.Tensor | None = None, inputs: tuple = ()) -> torch.Tensor:
    """``row_values[:, None] * response_mask`` as a [N, T] tensor of ``dtype``, optionally written into ``out``.

    Passing a reused ``out`` buffer avoids the page faults of a fresh [N, T] allocation, which dominate the cost of an
    outcome estimator at large N x T (see bench/bench_advantages.py). ``out`` may not share memory with
    ``response_mask`` or any tensor in ``inputs`` (inputs are never modified).
    """
    col = row_values.to(dtype).unsqueeze(-1)
    if out is None:
        out = torch.empty(response_mask.shape, dtype=dtype, device=response_mask.device)
    else:
        if out.shape != response_mask.shape or out.dtype != dtype or out.device != response_mask.device:
            raise ValueError(
                f"out must be a {dtype} tensor of shape {tuple(response_mask.shape)} on {response_mask.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        for tensor in (response_mask, *inputs):
            if tensor is not None and out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
                raise ValueError("out must not share memory with an input tensor (inputs are never modified)")
    if response_mask.dtype == torch.bool:
        torch.where(response_mask, col, torch.zeros((), dtype=dtype, device=col.device), out=out)
    else:
        torch.mul(col, response_mask, out=out)
    return out
