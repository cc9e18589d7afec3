"""Log-probs and entropy of response tokens from TENSOR-PARALLEL logits, without gathering the full vocabulary.

Each TP rank holds logits ``[..., V/tp]`` for its vocabulary slice (megatron's ``parallel_output=True``).
- log-prob = -(megatron's vocab-parallel cross entropy): all-reduces of the max, the sum of exp and the target
  logit over the TP group.
- entropy ``H = log S - Q / S`` with ``S = sum exp(z - m)``, ``Q = sum exp(z - m)(z - m)``, all-reduced over TP
  (reference/algorithms-semantics.md §1.7; the same value as ``algorithms.entropy_from_logits`` on full logits).
Megatron pads the vocabulary to a multiple of 128 x TP; those padded columns get zero probability here so the
results equal a model with the HF vocabulary (as vLLM samples it).

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

# Fill value for the logits of Megatron's padded vocabulary rows: exp() underflows to exactly 0, while
# 0 * (fill - max) stays finite (with -inf the entropy would be 0 * inf = NaN).
_PAD_LOGIT = -1.0e30


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Give Megatron's padded vocabulary columns (ids >= ``vocab_size``) zero probability; ``[..., V/tp]``."""
    local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * local
    if start + local <= vocab_size:
        return logits
    pad = torch.arange(start, start + local, device=logits.device) >= vocab_size
    return logits.masked_fill(pad, _PAD_LOGIT)


def vocab_parallel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``[...]`` of softmax over the TP-sharded last dim of ``logits [..., V/tp]`` (differentiable).

    ``H = log S - Q / S`` with ``S = sum_v exp(z_v - m)``, ``Q = sum_v exp(z_v - m)(z_v - m)`` (both all-reduced
    over TP) and ``m`` the global max (a constant shift, so no gradient flows through it). The sums use
    ``reduce_from_tensor_model_parallel_region`` (all-reduce forward, identity backward): every TP rank holds the
    same downstream loss, so each rank's local logits get exactly their own share of the gradient.
    """
    local_max = logits.detach().max(dim=-1, keepdim=True).values
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    shifted = logits - local_max
    exp = shifted.exp()
    s = tensor_parallel.reduce_from_tensor_model_parallel_region(exp.sum(dim=-1))
    q = tensor_parallel.reduce_from_tensor_model_parallel_region((exp * shifted).sum(dim=-1))
    return s.log() - q / s


def response_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    temperature: float,
    with_entropy: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs ``[b, R]`` of ``targets [b, R]`` under ``logits [b, R, V/tp]`` / temperature, and entropy ``[b, R]``.

    Uses megatron's vocab-parallel cross entropy (log p = -CE). That kernel subtracts the max from its input in
    place, so it gets its own copy whenever the entropy also needs the logits.
    """
    scaled = mask_padded_vocab(logits.float() / temperature, vocab_size)
    entropy = vocab_parallel_entropy(scaled) if with_entropy else None
    ce_input = scaled.clone() if with_entropy else scaled
    log_probs = -tensor_parallel.vocab_parallel_cross_entropy(ce_input, targets)
    return log_probs, entropy
