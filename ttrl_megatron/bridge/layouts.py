"""Tensor layout math behind the HF <-> Megatron mapping: fused qkv / SwiGLU fc1, vocab padding, TP shard/gather.

Pure torch on plain integers (names.py supplies them from `ArchFacts`); the classic silent bugs live here, so each
rule is one small function with a round-trip test (tests/unit/bridge). Layout facts: PLATFORM.md "Weight layouts",
reference/megatron-rl-anchors.md §3.
Must not import torch.distributed, megatron, vllm, hydra or omegaconf.
"""

from __future__ import annotations

import torch

# TP kinds: how a full Megatron tensor is split across TP ranks.
VOCAB, QKV, FC1, COLUMN, ROW, REPLICATED = "vocab", "qkv", "fc1", "column", "row", "replicated"
SPLIT_DIM = {VOCAB: 0, QKV: 0, FC1: 0, COLUMN: 0, ROW: 1, REPLICATED: None}


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_groups: int) -> torch.Tensor:
    """HF q `[np*hd, ...]`, k/v `[ng*hd, ...]` -> Megatron `[ng*(np/ng+2)*hd, ...]` grouped per KV head:
    `[q heads of g0, k0, v0, q heads of g1, k1, v1, ...]`. Weights (`...` = hidden) and biases (no trailing dims)."""
    rest = q.shape[1:]
    parts = [t.reshape(num_groups, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def split_qkv(fused: torch.Tensor, num_groups: int, heads_per_group: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `merge_qkv`: `[ng*(np/ng+2)*hd, ...]` -> contiguous (q `[np*hd, ...]`, k, v `[ng*hd, ...]`)."""
    rest = fused.shape[1:]
    grouped = fused.reshape(num_groups, (heads_per_group + 2) * head_dim, *rest)
    q, k, v = torch.split(grouped, [heads_per_group * head_dim, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *rest).contiguous() for t in (q, k, v))


def qkv_local_rows(part: str, heads_per_group: int, head_dim: int, local_groups: int) -> torch.Tensor:
    """Row indices of `part` (q/k/v) inside a TP rank's local qkv shard of `local_groups` whole KV groups, in the
    order the HF rows of those groups come (group by group)."""
    block = (heads_per_group + 2) * head_dim
    start, length = {"q": (0, heads_per_group * head_dim), "k": (heads_per_group * head_dim, head_dim),
                     "v": ((heads_per_group + 1) * head_dim, head_dim)}[part]
    starts = [g * block + start for g in range(local_groups)]
    return torch.cat([torch.arange(s, s + length) for s in starts])  # host: row ids (the loader moves them)


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF gate/up `[ffn, h]` -> full Megatron `linear_fc1` `[2*ffn, h]` = `[gate; up]` (TP=1 layout)."""
    return torch.cat([gate, up], dim=0)


def split_fc1(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full `[gate; up]` `[2*ffn, h]` -> (gate, up), each `[ffn, h]`."""
    gate, up = torch.chunk(fused, 2, dim=0)
    return gate.contiguous(), up.contiguous()


def pad_vocab(t: torch.Tensor, padded_vocab_size: int) -> torch.Tensor:
    """`[V, h]` -> `[V_padded, h]` with zero rows appended (Megatron pads the vocab to a TP-friendly multiple)."""
    extra = padded_vocab_size - t.shape[0]
    if extra < 0:
        raise ValueError(f"vocab tensor has {t.shape[0]} rows, more than the padded vocab {padded_vocab_size}")
    return t if extra == 0 else torch.cat([t, t.new_zeros(extra, *t.shape[1:])], dim=0)


def strip_vocab(t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`[V_padded, h]` -> `[V, h]`: the shape HF files and vLLM must receive."""
    return t[:vocab_size].contiguous()


def tp_shard(name: str, kind: str, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Full tensor (TP=1 layout) -> TP rank `tp_rank`'s shard. Column kinds (vocab, qkv: whole KV groups) take a
    contiguous dim-0 chunk, row kinds a dim-1 chunk, fc1 takes `[gate_r; up_r]`, replicated returns `full`.
    `name` only labels the error."""
    dim = SPLIT_DIM[kind]
    if dim is None:
        return full
    size = full.shape[dim] // 2 if kind == FC1 else full.shape[dim]
    if size % tp_size:
        raise ValueError(f"{name}: size {size} along dim {dim} is not divisible by tensor parallel size {tp_size}")
    if kind == FC1:
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim)[tp_rank].contiguous()


def tp_gather(kind: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `tp_shard`: all TP ranks' shards in rank order -> the full tensor.

    fc1 is the classic trap (off by 1.34 in logits when done naively): split EACH shard into its gate/up halves,
    then concatenate all gates followed by all ups."""
    dim = SPLIT_DIM[kind]
    if dim is None:
        return shards[0]
    if kind == FC1:
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)
