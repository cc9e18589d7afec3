"""Log-probs and entropy of response tokens straight from the last hidden states, in sequence chunks, with the
vocabulary split over tensor-parallel ranks and never gathered.

The engines do not let the model's output layer run over the whole sequence (model.py ``emit_hidden``): the last
stage hands back hidden states, the caller picks the RESPONSE positions ``[n, h]`` and calls ``chunked_logprobs``,
which forms the logits of ``chunk_size`` positions at a time, ``z = hidden_c @ W^T / temperature`` (``W`` = this TP
rank's ``[V/tp, h]`` output weight, padded vocabulary rows left out), casts the chunk to fp32 inside the loop and
reduces it to

- log-prob ``log p(target) = z_t - m - log S`` with ``m`` the max, ``S = sum exp(z - m)`` (all-reduced over TP);
- entropy ``H = log S - Q / S`` with ``Q = sum exp(z - m)(z - m)`` (reference/algorithms-semantics.md §1.7).

Per chunk, one all-reduce MAX (``m``) and one all-reduce SUM (``z_t``, ``S``, ``Q`` together) over the TP group.
With gradients, ``_ChunkedLogprob`` saves only the inputs and the per-position ``lse = m + log S`` and ``H``
(``[n]`` each) and recomputes each chunk's logits in backward (NeMo-RL's ChunkedDistributedLogprob does the same
from saved logits; here even the logits are not kept), so the backward is chunked too:
``dz = g_logp (onehot - p) - g_H p (log p + H)``, divided by the temperature.

Memory of the computation, per chunk of ``c`` positions with ``V' = V/tp`` (the "log-prob path" of the memory
plan): ONE fp32 ``[c, V']`` buffer plus, for a bf16/fp16 model, the matmul's ``[c, V']`` output in that dtype
(forward: freed after the cast; backward: the gradient cast back for the two matmuls), plus ``[c, 8192]`` fp32
column-block temporaries; i.e. ``c * V' * 4`` bytes for an fp32 model and ``c * V' * 6`` bytes for bf16, in
forward and backward alike. The backward also holds an fp32 ``[V', h]`` accumulator of the weight gradient, for a
bf16 model one bf16 ``[V', h]`` product per chunk, and returns the ``[V', h]`` gradient in the parameter dtype
(megatron's own output layer returns that one as well). Nothing of size ``[n, V']`` or ``[B, T, V']`` exists.

``unchunked_logprobs`` is the previous computation from full ``[..., V/tp]`` logits (megatron's vocab-parallel
cross entropy + a vocab-parallel entropy); it is kept as the reference of the tests and the baseline of
bench/bench_logprob_memory.py, not used by the engines.

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

# Columns per block of the exp / entropy reductions inside a chunk (bounds their temporaries to [c, _BLOCK]).
_BLOCK = 8192
# Fill value for the logits of Megatron's padded vocabulary rows in the unchunked reference.
_PAD_LOGIT = -1.0e30


def _tp():
    """(TP group or None when TP = 1, TP rank)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return None, 0
    return parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_rank()


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """fp32 ``[c, V'']`` = ``hidden [c, h] @ weight[:V''] ^T / temperature`` (one fp32 buffer; the model-dtype
    matmul output is freed as soon as it is cast)."""
    z = torch.matmul(hidden.to(weight.dtype), weight.t())
    z = z.float() if z.dtype != torch.float32 else z
    return z.mul_(inv_temp)


def _blocks(width: int):
    return [(s, min(s + _BLOCK, width)) for s in range(0, width, _BLOCK)]


class _Ctx:
    """What forward and backward share: local vocabulary slice, targets on this rank, TP group."""

    def __init__(self, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int, temperature: float):
        self.group, rank = _tp()
        local = weight.shape[0]
        self.start = rank * local
        self.width = max(0, min(local, vocab_size - self.start))  # real (unpadded) vocabulary rows on this rank
        self.inv_temp = 1.0 / temperature
        local_t = targets - self.start
        self.owned = (local_t >= 0) & (local_t < self.width)
        self.local_t = torch.where(self.owned, local_t, torch.zeros_like(local_t))

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.group is not None:
            dist.all_reduce(t, op=op, group=self.group)
        return t


def _forward(hidden, weight, ctx: _Ctx, chunk: int, with_entropy: bool):
    """(logp [n], entropy [n] or None, lse [n]) in fp32, chunk by chunk (no autograd)."""
    n = hidden.shape[0]
    dev = hidden.device
    logp = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    ent = torch.empty(n, dtype=torch.float32, device=dev) if with_entropy else None
    w = weight[: ctx.width]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        z = _chunk_logits(hidden[s:e], w, ctx.inv_temp)  # [c, V''] fp32
        m = z.max(dim=-1).values if ctx.width else torch.full((e - s,), -torch.inf, device=dev)
        ctx.all_reduce(m, dist.ReduceOp.MAX)
        z.sub_(m[:, None])
        sums = torch.zeros(3, e - s, dtype=torch.float32, device=dev)  # target logit, S, Q
        owned = ctx.owned[s:e]
        if ctx.width:
            sums[0] = z.gather(1, ctx.local_t[s:e, None])[:, 0] * owned
        for b0, b1 in _blocks(z.shape[1]):
            ex = z[:, b0:b1].exp()
            sums[1] += ex.sum(-1)
            if with_entropy:
                sums[2] += (ex.mul_(z[:, b0:b1])).sum(-1)
        del z
        ctx.all_reduce(sums)
        log_s = sums[1].log()
        logp[s:e] = sums[0] - log_s
        lse[s:e] = m + log_s
        if with_entropy:
            ent[s:e] = log_s - sums[2] / sums[1]
    return logp, ent, lse


class _ChunkedLogprob(torch.autograd.Function):
    """Autograd of ``_forward``: inputs ``hidden [n, h]``, ``weight [V', h]``; outputs logp ``[n]``, entropy ``[n]``.

    The backward recomputes each chunk's logits; the incoming grads are replicated over TP (every TP rank holds
    the same loss), so each rank's hidden gradient is its vocabulary slice's share, summed over TP by the caller's
    region op (model.py ``emit_hidden``: megatron's copy-to-TP region / sequence-parallel gather).
    """

    @staticmethod
    def forward(c, hidden, weight, targets, vocab_size, temperature, chunk, with_entropy):
        ctx = _Ctx(weight, targets, vocab_size, temperature)
        logp, ent, lse = _forward(hidden, weight, ctx, chunk, with_entropy)
        c.save_for_backward(hidden, weight, lse, ent if ent is not None else lse)
        c.meta, c.chunk, c.with_entropy = ctx, chunk, with_entropy
        c.set_materialize_grads(False)
        return (logp, ent) if with_entropy else logp

    @staticmethod
    def backward(c, g_logp, g_ent=None):
        hidden, weight, lse, ent = c.saved_tensors
        ctx: _Ctx = c.meta
        n = hidden.shape[0]
        w = weight[: ctx.width]
        grad_h = torch.zeros_like(hidden) if c.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if c.needs_input_grad[1] else None
        if g_logp is None and g_ent is None:
            return grad_h, grad_w, None, None, None, None, None
        for s in range(0, n, c.chunk):
            e = min(s + c.chunk, n)
            z = _chunk_logits(hidden[s:e], w, ctx.inv_temp)
            z.sub_(lse[s:e, None])  # log p
            gl = g_logp[s:e, None].float() if g_logp is not None else None
            for b0, b1 in _blocks(z.shape[1]):
                blk = z[:, b0:b1]
                if g_ent is None:  # dz = -g_logp * p (the onehot term is added below)
                    blk.exp_().mul_(-gl)
                    continue
                p = blk.exp()
                blk.add_(ent[s:e, None]).mul_(-g_ent[s:e, None].float())  # -g_H (log p + H)
                if gl is not None:
                    blk.sub_(gl)
                blk.mul_(p)
            if g_logp is not None and ctx.width:  # + g_logp at the target column (rows whose target this rank owns)
                rows = torch.arange(e - s, device=z.device)
                z.index_put_((rows, ctx.local_t[s:e]), g_logp[s:e].float() * ctx.owned[s:e], accumulate=True)
            z.mul_(ctx.inv_temp)
            gz = z.to(weight.dtype)
            del z
            h = hidden[s:e].to(weight.dtype)
            if grad_h is not None:
                grad_h[s:e] = torch.matmul(gz, w).to(hidden.dtype)
            if grad_w is not None:  # fp32 accumulator: in place for fp32, one weight-dtype [V', h] temp otherwise
                if gz.dtype == grad_w.dtype:
                    grad_w[: ctx.width].addmm_(gz.t(), h)
                else:
                    grad_w[: ctx.width].add_(torch.matmul(gz.t(), h))
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None, None, None


def chunked_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    entropy_grad: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs ``[n]`` (and entropy ``[n]``) of ``targets [n]`` (global token ids) at ``n`` positions.

    hidden ``[n, h]``: the last hidden states at the positions that PREDICT the targets (prepared for the output
    layer: model.py ``emit_hidden``); weight ``[V/tp, h]``: this rank's output-layer (or tied embedding) shard;
    vocab_size: the HF vocabulary (ids >= it get zero probability: Megatron's padding rows). Gradients flow to
    ``hidden`` and ``weight`` through the log-probs, and through the entropy only with ``entropy_grad`` (otherwise
    the entropy is returned detached: a metric). Both outputs are fp32.
    """
    if chunk_size < 1:
        raise ValueError(f"logprob_chunk_size must be >= 1, got {chunk_size}")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not grad:
        with torch.no_grad():
            logp, ent, _ = _forward(hidden, weight, _Ctx(weight, targets, vocab_size, temperature), chunk_size,
                                    with_entropy)
        return logp, ent
    out = _ChunkedLogprob.apply(hidden, weight, targets, vocab_size, temperature, chunk_size, with_entropy)
    if not with_entropy:
        return out, None
    logp, ent = out
    # A detached entropy sends no gradient: the backward then skips the entropy term entirely.
    return logp, (ent if entropy_grad else ent.detach())


# ---------------------------------------------------------------------------------------------------------------
# the unchunked reference (full logits): tests and the memory benchmark's baseline


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

    ``reduce_from_tensor_model_parallel_region`` (all-reduce forward, identity backward) gives each rank's local
    logits exactly their own share of the gradient, as every TP rank holds the same downstream loss.
    """
    local_max = logits.detach().max(dim=-1, keepdim=True).values
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    shifted = logits - local_max
    exp = shifted.exp()
    s = tensor_parallel.reduce_from_tensor_model_parallel_region(exp.sum(dim=-1))
    q = tensor_parallel.reduce_from_tensor_model_parallel_region((exp * shifted).sum(dim=-1))
    return s.log() - q / s


def unchunked_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, temperature: float, with_entropy: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The previous path: log-probs ``[...]`` of ``targets`` under full ``logits [..., V/tp]`` / temperature (an fp32
    copy of them, megatron's vocab-parallel cross entropy on a clone when the entropy also needs them)."""
    scaled = mask_padded_vocab(logits.float() / temperature, vocab_size)
    entropy = vocab_parallel_entropy(scaled) if with_entropy else None
    ce_input = scaled.clone() if with_entropy else scaled
    return -tensor_parallel.vocab_parallel_cross_entropy(ce_input, targets), entropy
