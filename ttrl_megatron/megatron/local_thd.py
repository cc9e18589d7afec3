"""Packed (THD) sequences through megatron-core's LOCAL layer spec, so that CPU runs take the same packed path as GPU.

On GPU the packed micro-batch goes through megatron's THD path: ``PackedSeqParams(qkv_format="thd", cu_seqlens)``
reaches the attention, RoPE is applied per sequence from ``cu_seqlens`` (``rope_utils._apply_rotary_pos_emb_thd``
or TE's fused kernel) and Transformer Engine's attention runs ``padding_causal`` over the packed tokens.

The local spec's ``DotProductAttention`` asserts ``packed_seq_params is None`` (megatron-core 0.16.1
``transformer/dot_product_attention.py``). ``PackedDotProductAttention`` accepts THD: it receives the packed
``[t, heads, dim]`` query/key/value (attention.py squeezes the batch dim for THD, after the per-sequence RoPE), puts
the batch dim back and runs the local attention with a ``[1, 1, t, t]`` block-diagonal causal mask built from
``cu_seqlens`` (True = masked, the local convention), so a token attends to the earlier tokens of its own sequence
only. Everything else (embedding, RoPE per sequence, layers, output) is megatron's own THD code path. Its memory is
the local attention's ``t x t`` scores, which flash attention on GPU does not have: a CPU proxy, not a GPU kernel.

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
        mask = block_causal_mask(cu, query.shape[0])
        # [t, np, hn] -> [t, 1, np, hn]; the output [t, 1, hp] is what attention.py expects back for THD
        return super().forward(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), mask, attn_mask_type,
                               attention_bias, None)
