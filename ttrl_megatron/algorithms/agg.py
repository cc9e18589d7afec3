"""``agg_loss``: reduce a per-token loss [B, T] to a scalar, optionally as a shard of a larger batch.

Signature and modes are verl's (``verl/trainer/ppo/core_algos.py::agg_loss``; masks are 0/1):

    agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
             loss_scale_factor=None)

- ``token-mean``: ``sum_{b,t} loss * mask / N_tok * dp_size``.
- ``token-sum``: ``sum_{b,t} loss * mask * dp_size``.
- ``seq-mean-token-sum``: ``sum_b (sum_t loss * mask) / N_seq * dp_size``.
- ``seq-mean-token-mean``: ``sum_b (sum_t loss * mask / sum_t mask) / N_seq * dp_size`` (empty rows count 0).
- ``seq-mean-token-sum-norm`` (Dr.GRPO, Liu et al. 2025, arXiv 2503.20783): ``seq-mean-token-sum / loss_scale_factor``
  -- the mean over sequences of the token SUMS divided by a constant (default: this tensor's padded length T). This
  is current verl's definition (verl PRs #5366/#5417); verl <= 0.7 and the TTRL fork summed over sequences instead
  (no division by N_seq).

What "global" means. By default ``N_tok`` / ``N_seq`` are counted in the tensor passed in: the valid tokens
(``sum(mask)``) and the sequences with at least one valid token. When one optimizer step's batch (a mini-batch) is
split into micro-batches and data-parallel shards, pass instead (verl's ``config.global_batch_info`` holds them):

- ``batch_num_tokens``: the number of valid tokens in the WHOLE mini-batch, over all micro-batches and DP ranks;
- ``global_batch_size``: the number of sequences with >= 1 valid token in the whole mini-batch;
- ``dp_size``: the data-parallel size. Data-parallel training AVERAGES gradients over the DP ranks; multiplying each
  rank's share by dp_size cancels that average (verl's FSDP convention; verl refuses dp_size > 1 without the global
  counts, and so do we).

Then each call returns its shard's additive share, and the SUM of agg_loss over all micro-batches and ranks equals
agg_loss of the whole mini-batch, however it is split (times dp_size). Our Megatron engine passes ``dp_size=1`` and
scales by num_microbatches * dp_size itself (megatron's schedule divides each micro-batch loss by num_microbatches).
A zero denominator (an all-padding batch) is replaced by 1, so such a shard contributes 0 instead of verl's NaN.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import numbers

import torch

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _denominator(global_count, local_count: torch.Tensor) -> torch.Tensor:
    count = local_count if global_count is None else torch.as_tensor(global_count, dtype=local_count.dtype,
                                                                     device=local_count.device)
    return count.clamp_min(1)


def _check_dp_size(dp_size) -> int:
    # verl's 4th positional argument is dp_size; ours used to be loss_scale_factor (a float such as the response
    # width). Refusing non-integers turns a stale positional call into an error instead of a silently wrong loss.
    if isinstance(dp_size, bool) or not isinstance(dp_size, numbers.Integral) or dp_size < 1:
        raise TypeError(f"agg_loss: dp_size (4th positional argument, verl's order) must be an int >= 1, got "
                        f"{dp_size!r}; pass the seq-mean-token-sum-norm divisor as loss_scale_factor=")
    return int(dp_size)


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str, dp_size: int = 1,
             batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None) -> torch.Tensor:
    """Aggregate ``loss_mat`` [B, T] over the valid entries of ``loss_mask`` [B, T]; see the module docstring.

    Args:
        loss_agg_mode: one of LOSS_AGG_MODES (``actor.loss_agg_mode``).
        dp_size: data-parallel size the share is scaled by (int >= 1).
        batch_num_tokens / global_batch_size: whole-mini-batch counts (int, float or 0-dim tensor); required when
            dp_size > 1 by the modes that use them.
        loss_scale_factor: divisor of seq-mean-token-sum-norm (default T); not used by the other modes.
    Returns: a 0-dim tensor (float32 for half-precision inputs, else the input dtype).
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r} (actor.loss_agg_mode); "
                         f"valid: {', '.join(LOSS_AGG_MODES)}")
    if loss_mat.shape != loss_mask.shape or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat and loss_mask must both be [B, T], got {tuple(loss_mat.shape)} and "
                         f"{tuple(loss_mask.shape)}")
    dp_size = _check_dp_size(dp_size)
    # Sums and counts in at least float32: a bf16 token count of ~1e5 would be off by up to 0.4%.
    dtype = torch.promote_types(loss_mat.dtype, torch.float32)
    mask = loss_mask.to(dtype)
    # where() first: padding positions may hold inf/NaN (e.g. logprobs of pad tokens) and 0 * inf is NaN.
    zero = torch.zeros((), dtype=dtype, device=loss_mat.device)
    masked = torch.where(loss_mask != 0, loss_mat.to(dtype), zero) * mask
    if loss_agg_mode in ("token-mean", "token-sum"):
        if loss_agg_mode == "token-sum":
            total = masked.sum()
        else:
            if batch_num_tokens is None and dp_size > 1:
                raise ValueError("agg_loss: token-mean with dp_size > 1 needs batch_num_tokens (the whole "
                                 "mini-batch's valid-token count)")
            total = masked.sum() / _denominator(batch_num_tokens, mask.sum())
        return total * dp_size if dp_size != 1 else total
    if global_batch_size is None and dp_size > 1:
        raise ValueError(f"agg_loss: {loss_agg_mode} with dp_size > 1 needs global_batch_size (the whole "
                         f"mini-batch's count of sequences with a valid token)")
    seq_sums = masked.sum(dim=-1)
    seq_tokens = mask.sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_sums = seq_sums / seq_tokens.clamp_min(1)
    nonempty = (seq_tokens > 0).to(dtype)
    loss = (seq_sums * nonempty).sum() / _denominator(global_batch_size, nonempty.sum())
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss * dp_size if dp_size != 1 else loss
