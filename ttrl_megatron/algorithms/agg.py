"""``agg_loss``: reduce a per-token loss [B, T] to a scalar, optionally as a shard of a larger batch.

Modes (reference/algorithms-semantics.md §1.6; masks are 0/1):

- ``token-mean``: ``sum_{b,t} loss * mask / N_tok``.
- ``seq-mean-token-sum``: ``sum_b (sum_t loss * mask) / N_seq``.
- ``seq-mean-token-mean``: ``sum_b (sum_t loss * mask / max(sum_t mask, 1)) / N_seq``.
- ``seq-mean-token-sum-norm`` (Dr.GRPO): ``sum_b sum_t loss * mask / loss_scale_factor`` -- a SUM over sequences
  divided by a constant (default: this tensor's padded length T).

What "global" means. By default ``N_tok`` / ``N_seq`` are counted in the tensor passed in: the valid tokens
(``sum(mask)``) and the sequences with at least one valid token. When one optimizer step's batch (a mini-batch) is
split into micro-batches and data-parallel shards, pass instead:

- ``global_num_tokens``: the number of valid tokens (``sum(mask)``) in the WHOLE mini-batch, over all micro-batches
  and all DP ranks (token-mean);
- ``global_num_seqs``: the number of sequences with >= 1 valid token in the whole mini-batch (both seq-mean modes).

Then each call returns its shard's additive share, and the SUM of agg_loss over all micro-batches and ranks equals
agg_loss of the whole mini-batch, however it is split. ``seq-mean-token-sum-norm`` is additive already; it only needs
the same ``loss_scale_factor`` on every shard (pass it explicitly when shards are padded to different T). The engine
must therefore sum shard losses, not average them: megatron's pipeline schedule divides each micro-batch loss by
num_microbatches and DDP averages gradients over DP ranks, so the engine multiplies by num_microbatches * dp_size.
A zero denominator (an all-padding batch) is replaced by 1, so such a shard contributes 0 instead of NaN.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _denominator(global_count, local_count: torch.Tensor) -> torch.Tensor:
    count = local_count if global_count is None else torch.as_tensor(global_count, dtype=local_count.dtype,
                                                                     device=local_count.device)
    return count.clamp_min(1)


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str, loss_scale_factor=None, *,
             global_num_tokens=None, global_num_seqs=None) -> torch.Tensor:
    """Aggregate ``loss_mat`` [B, T] over the valid entries of ``loss_mask`` [B, T]; see the module docstring.

    Args:
        loss_agg_mode: one of LOSS_AGG_MODES (``actor.loss_agg_mode``).
        loss_scale_factor: divisor of seq-mean-token-sum-norm (default T); not used by the other modes.
        global_num_tokens / global_num_seqs: whole-mini-batch counts (int, float or 0-dim tensor), see above.
    Returns: a 0-dim tensor (float32 for half-precision inputs, else the input dtype).
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r} (actor.loss_agg_mode); "
                         f"valid: {', '.join(LOSS_AGG_MODES)}")
    if loss_mat.shape != loss_mask.shape or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat and loss_mask must both be [B, T], got {tuple(loss_mat.shape)} and "
                         f"{tuple(loss_mask.shape)}")
    # Sums and counts in at least float32: a bf16 token count of ~1e5 would be off by up to 0.4%.
    dtype = torch.promote_types(loss_mat.dtype, torch.float32)
    mask = loss_mask.to(dtype)
    # where() first: padding positions may hold inf/NaN (e.g. logprobs of pad tokens) and 0 * inf is NaN.
    zero = torch.zeros((), dtype=dtype, device=loss_mat.device)
    masked = torch.where(loss_mask != 0, loss_mat.to(dtype), zero) * mask
    if loss_agg_mode == "token-mean":
        return masked.sum() / _denominator(global_num_tokens, mask.sum())
    seq_sums = masked.sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        scale = loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return seq_sums.sum() / scale
    seq_tokens = mask.sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_sums = seq_sums / seq_tokens.clamp_min(1)
    nonempty = (seq_tokens > 0).to(dtype)
    return (seq_sums * nonempty).sum() / _denominator(global_num_seqs, nonempty.sum())
