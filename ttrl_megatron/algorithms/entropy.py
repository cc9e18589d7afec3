"""Per-token entropy of a categorical distribution given by logits: plain and a chunked, memory-light variant.

``H = logsumexp(z) - sum_v softmax(z)_v z_v`` (reference/algorithms-semantics.md §1.7). The chunked variant processes
rows in chunks and has a hand-written backward, ``dH/dz = -p * (z - sum_v p_v z_v)``, that recomputes the softmax
chunk by chunk instead of keeping [*, V] intermediates for autograd: peak extra memory is one chunk.

Pure torch; must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] logits -> [...] entropy (differentiable through autograd)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
        flat = logits.reshape(-1, logits.shape[-1])
        out = torch.empty(flat.shape[0], dtype=logits.dtype, device=logits.device)
        for start in range(0, flat.shape[0], chunk_size):
            out[start:start + chunk_size] = entropy_from_logits(flat[start:start + chunk_size])
        ctx.save_for_backward(logits)
        ctx.chunk_size = chunk_size
        return out.reshape(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (logits,) = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        grad_flat = grad_out.reshape(-1)
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_size):
            z = flat[start:start + ctx.chunk_size]
            p = torch.softmax(z, dim=-1)
            mean_z = (p * z).sum(dim=-1, keepdim=True)
            grad[start:start + ctx.chunk_size] = -p * (z - mean_z) * grad_flat[start:start + ctx.chunk_size, None]
        return grad.reshape(logits.shape), None


def entropy_from_logits_chunked(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Same values as :func:`entropy_from_logits`, computed ``chunk_size`` rows (positions) at a time."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return _ChunkedEntropy.apply(logits, chunk_size)
