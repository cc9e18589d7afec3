"""Packed (THD) sequences through megatron-core's LOCAL layer spec, so that CPU runs take the same packed path as GPU.

On GPU the packed micro-batch goes through megatron's THD path: ``PackedSeqParams(qkv_format="thd", cu_seqlens)``
reaches the attention, RoPE is applied per sequence from ``cu_seqlens`` (``rope_utils._apply_rotary_pos_emb_thd``
or TE's fused kernel) and Transformer Engine's attention runs ``padding_causal`` over the packed tokens.

The local spec's ``DotProductAttention`` asserts ``packed_seq_params is None`` (megatron-core 0.16.1
``transformer/dot_product_attention.py``). ``PackedDotProductAttention`` accepts THD: it receives the packed
``[t, heads, dim]`` query/key/value (attention.py squeezes the batch dim for THD, after the per-sequence RoPE) and
runs the local attention on each ``[cu[i], cu[i+1])`` segment with a causal mask (True = masked, the local
convention), so a token attends to the earlier tokens of its own sequence only. That is exactly the
``[1, 1, t, t]`` block-diagonal causal mask over the pack (``block_causal_mask``, which the tests compare against),
computed segment by segment so that the cost is ``sum len_i^2`` as with Transformer Engine's varlen kernels, not
``t^2``. Everything else (embedding, RoPE per sequence, layers, output) is megatron's own THD code path. A CPU
proxy, not a GPU kernel.

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention


def block_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``[1, 1, total, total]`` bool, True = masked: causal within each ``[cu[i], cu[i+1])`` segment, masked across
    segments. Tokens past ``cu[-1]`` (none in our packs) form one more segment."""
    dev = cu_seqlens.device
    seg = torch.zeros(total, dtype=torch.long, device=dev)
    starts = cu_seqlens[1:].long()
    starts = starts[starts < total]
    seg.index_add_(0, starts, torch.ones_like(starts))
    seg = seg.cumsum(0)
    idx = torch.arange(total, device=dev)
    allowed = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None])
    return (~allowed)[None, None]


class PackedDotProductAttention(DotProductAttention):
    """megatron's local ``DotProductAttention`` that also takes THD packed sequences (see the module docstring)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params: Optional[PackedSeqParams] = None):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, None)
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"PackedDotProductAttention: qkv_format {packed_seq_params.qkv_format!r}; only 'thd'")
        cu = packed_seq_params.cu_seqlens_q_padded
        if cu is None:
            cu = packed_seq_params.cu_seqlens_q
        total = query.shape[0]
        bounds = [int(x) for x in cu.tolist()]
        if bounds[-1] < total:  # tokens past the last sequence (none in our packs) form one more segment
            bounds.append(total)
        outs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end <= start:
                continue
            n = end - start
            causal = torch.ones(n, n, dtype=torch.bool, device=query.device).triu(1)[None, None]
            # [n, np, hn] -> [n, 1, np, hn]; each output is [n, 1, hp], what attention.py expects back for THD
            outs.append(super().forward(query[start:end].unsqueeze(1), key[start:end].unsqueeze(1),
                                        value[start:end].unsqueeze(1), causal, attn_mask_type, attention_bias, None))
        return torch.cat(outs, dim=0)
