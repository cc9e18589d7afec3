"""Masked reductions over token tensors: masked_sum / masked_mean / masked_var / masked_whiten.

Semantics follow verl's torch_functional helpers (reference/algorithms-semantics.md §1.4): the mean divides by
``sum(mask) + 1e-8``; the variance is Bessel-corrected and refuses masks with one or zero valid entries; whitening adds
1e-8 inside the square root and does not re-mask its output. Pure torch; must not import torch.distributed, megatron,
vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

_MEAN_EPS = 1e-8  # keeps an all-masked mean at 0 instead of NaN
_WHITEN_EPS = 1e-8  # added to the variance, not the std


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where first so that inf/NaN in padding positions cannot leak through 0 * inf = NaN.
    return torch.where(mask != 0, values, torch.zeros((), dtype=values.dtype, device=values.device)) * mask


def masked_sum(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Sum of ``values * mask`` over ``axis`` (all elements if None). values, mask: same shape, e.g. [B, T]."""
    masked = _masked(values, mask)
    return masked.sum() if axis is None else masked.sum(dim=axis)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """``sum(values * mask) / (sum(mask) + 1e-8)`` over ``axis`` (all elements if None); all-masked gives 0."""
    total = mask.sum() if axis is None else mask.sum(dim=axis)
    return masked_sum(values, mask, axis) / (total + _MEAN_EPS)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``values`` (scalar). Unbiased (N-1) by default.

    Raises ValueError if the mask has no valid entry, or exactly one when ``unbiased`` (N-1 would be 0).
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError("masked_var: the mask has no valid entry (sum(mask) == 0)")
        if count == 1:
            raise ValueError("masked_var: the mask has exactly one valid entry; the unbiased variance is undefined")
        var = var * (count / (count - 1))
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(values - mean) * rsqrt(var + 1e-8)`` with mean/var over the valid entries; output is NOT re-masked.

    With ``shift_mean=False`` the mean is added back (scale only). values, mask: same shape, e.g. [B, T].
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + _WHITEN_EPS)
    return whitened if shift_mean else whitened + mean
