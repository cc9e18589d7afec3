"""Model inputs of one micro-batch without padding inside sequences, and where its response tokens sit.

Two layouts of the rows of a micro-batch (verl layout in: left-padded prompt of ``P'`` columns + right-padded
response, ``attention_mask`` marks real tokens):

- ``packed`` (THD, ``use_remove_padding=True``): the real tokens of every row end to end in ONE row ``[1, T]``,
  each sequence padded at its end to a multiple of ``align`` (the TP size under sequence parallelism, as verl's
  ``preprocess_packed_seqs`` and NeMo-RL's ``_get_pack_sequence_parameters_for_megatron`` do; 1 otherwise);
  ``cu_seqlens [n_seq + 1]`` (int32) are the cumulative PADDED lengths, given to megatron as both ``cu_seqlens_q``
  and ``cu_seqlens_kv`` (verl's convention: a sequence's pad tokens come after its real ones, so causal attention
  keeps them out of every real token's context). Position ids restart at 0 for every sequence.
- padded (BSHD, ``use_remove_padding=False``): every row right-aligned, ``[b, T]`` with ``T`` the longest row
  (aligned): the real tokens start at column 0, so a plain causal mask is exact (no padding mask is needed, which
  Transformer Engine's ``causal`` attention would ignore anyway) and positions are 0..T-1 as HF derives them.

Response slots: the valid response tokens ``(row, column)`` of the micro-batch (``rows``/``cols`` into the ``[b, R']``
response tensors) and, for each, ``index``: the flat position in the model output (``[r * T]``, row-major) of the
token BEFORE it, whose output predicts it (log-probs) or values the state before it (critic). Engines compute only
at these positions. A response token must follow at least one real token (a prompt token) in its row.

Pure torch: imports only batching.py of this package.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ttrl_megatron.megatron.batching import aligned


@dataclass
class Layout:
    """Model inputs and response slots of one micro-batch (see the module docstring).

    inputs: ``input_ids`` / ``position_ids`` ``[r, T]`` (r = 1 when packed), and ``cu_seqlens`` ``[n + 1]`` int32
    when packed. max_seqlen: the longest aligned sequence (packed) else None. index/rows/cols: ``[n_slots]`` long.
    tokens: ``r * T``, what the model processes.
    """

    inputs: Dict[str, torch.Tensor]
    max_seqlen: Optional[int]
    index: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    tokens: int

    @property
    def packed(self) -> bool:
        return "cu_seqlens" in self.inputs

    def to(self, device: torch.device) -> "Layout":
        """The same layout with its tensors on ``device`` (the model's compute device)."""
        return Layout({k: v.to(device, non_blocking=True) for k, v in self.inputs.items()}, self.max_seqlen,
                      self.index.to(device), self.rows.to(device), self.cols.to(device), self.tokens)


def build_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int, *, packed: bool,
                 align: int = 1) -> Layout:
    """Layout of a (trimmed) micro-batch ``input_ids / attention_mask [b, P' + R']`` whose response starts at
    column ``prompt_width``. Tensors stay on the inputs' device."""
    mask = attention_mask.bool()
    b, width = mask.shape
    dev = input_ids.device
    lens = mask.sum(dim=1)
    rank = mask.long().cumsum(dim=1) - 1  # index of each real token within its row's real tokens
    inputs: Dict[str, torch.Tensor] = {}
    max_seqlen = None
    if packed:
        seq = aligned(lens, align)
        starts = seq.cumsum(0) - seq
        total = int(seq.sum())
        flat = starts[:, None] + rank  # [b, P'+R'] packed position of every real token
        ids = torch.zeros(total, dtype=input_ids.dtype, device=dev)
        ids[flat[mask]] = input_ids[mask]
        pos = torch.arange(total, device=dev) - torch.repeat_interleave(starts, seq, output_size=total)
        cu = torch.zeros(b + 1, dtype=torch.int32, device=dev)
        cu[1:] = seq.cumsum(0)
        inputs = {"input_ids": ids[None], "position_ids": pos[None], "cu_seqlens": cu}
        max_seqlen = int(seq.max()) if b else 0
        tokens = total
    else:
        t = int(aligned(lens.max(), align)) if b else 0
        flat = torch.arange(b, device=dev)[:, None] * t + rank
        ids = torch.zeros(b * t, dtype=input_ids.dtype, device=dev)
        ids[flat[mask]] = input_ids[mask]
        inputs = {"input_ids": ids.view(b, t),
                  "position_ids": torch.arange(t, device=dev)[None].expand(b, t).contiguous()}
        tokens = b * t
    resp = mask[:, prompt_width:]
    rows, cols = torch.nonzero(resp, as_tuple=True)
    before = rank[:, prompt_width:][rows, cols]
    if bool((before < 1).any()):
        raise ValueError("a response token is the first real token of its row (empty prompt): no position "
                         "predicts it; every row needs at least one prompt token")
    index = flat[:, prompt_width:][rows, cols] - 1
    return Layout(inputs, max_seqlen, index, rows, cols, tokens)


def gather_slots(output: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``output [r, T, d]`` (last-stage model output) -> ``[n_slots, d]`` at the slot positions (differentiable)."""
    return output.reshape(-1, output.shape[-1]).index_select(0, layout.index)


def scatter_slots(values: torch.Tensor, layout: Layout, shape) -> torch.Tensor:
    """Per-slot ``values [n_slots]`` -> ``shape`` = ``[b, R']`` with zeros outside the slots (differentiable)."""
    out = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return out.index_put((layout.rows, layout.cols), values)
