"""Micro-batches through megatron-core's pipeline schedule (``run_schedule``), and the model call of one micro-batch.

Each micro-batch carries its ``Layout`` (packing.py): packed (THD) micro-batches call the model with
``PackedSeqParams(qkv_format="thd")`` built from the layout's ``cu_seqlens`` (every pipeline stage builds the same
params from the same micro-batch: all ranks hold the whole batch); padded ones are right-aligned and need only the
causal mask (``attention_mask=None``: megatron's causal attention, local or Transformer Engine). Policy models run
under ``emit_hidden`` (model.py): the last stage returns hidden states ``[r, T, h]`` and the loss function forms
logits only at the response positions (logprobs.py); value models return ``[r, T, 1]``.

Loss scaling, stated once (reference/algorithms-semantics.md §1.6, PLATFORM.md): megatron-core's schedule divides
the loss returned by the loss function IN PLACE by ``num_microbatches`` (the 2-tuple loss path), and megatron DDP
pre-multiplies gradients by ``1/dp_size`` before summing them over DP (``average_in_collective=False``). Our
losses are already additive shares of the global mini-batch loss (global token/sequence counts), so
``run_schedule`` hands the schedule ``share * num_microbatches * dp_size``: after both divisions the accumulated
gradient is exactly d(global loss)/d(theta). Logged values are detached clones taken before the schedule touches
the tensor.

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from ttrl_megatron.megatron.batching import MicroBatch
from ttrl_megatron.megatron.collectives import device
from ttrl_megatron.megatron.model import emit_hidden

# A loss function of one micro-batch: (micro-batch, last-stage model output) -> (loss share or None, outputs).
LossFn = Callable[[MicroBatch, torch.Tensor], Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Ranks:
    """This process's coordinates in megatron's parallel state (read once per call)."""

    tp: int
    tp_size: int
    pp_size: int
    dp: int
    dp_size: int
    is_last_stage: bool

    @classmethod
    def current(cls) -> "Ranks":
        ps = parallel_state
        return cls(
            tp=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
            pp_size=ps.get_pipeline_model_parallel_world_size(),
            dp=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
            is_last_stage=ps.is_pipeline_last_stage(),
        )


def model_call(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    """Forward of one micro-batch (its layout already on the compute device); policy models emit hidden states."""
    lay = mb.layout
    kwargs = {}
    if lay.packed:
        cu = lay.inputs["cu_seqlens"]
        # verl's convention: cu_seqlens (and their *_padded twins) are the cumulative ALIGNED lengths, so a
        # sequence's alignment pads are part of it, after its real tokens (causal attention keeps them out).
        kwargs["packed_seq_params"] = PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu, cu_seqlens_kv_padded=cu,
            max_seqlen_q=lay.max_seqlen, max_seqlen_kv=lay.max_seqlen)
    with emit_hidden(model):
        return model(lay.inputs["input_ids"], lay.inputs["position_ids"], None, **kwargs)


def _forward_step(loss_fn: LossFn, scale: float, data_iterator, model):
    mb: MicroBatch = next(data_iterator)
    dev = device()
    mb.tensors = {k: v.to(dev, non_blocking=True) for k, v in mb.tensors.items()}
    mb.layout = mb.layout.to(dev)
    output = model_call(model, mb)

    def loss_func(output_tensor):
        loss, outputs = loss_fn(mb, output_tensor)
        if loss is None:  # forward-only: the schedule still wants a scalar it can divide in place
            return torch.zeros((), device=output_tensor.device), outputs
        outputs = dict(outputs)
        outputs["_loss"] = loss.detach().clone()
        return loss * scale, outputs

    return output, loss_func


def run_schedule(
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: List[MicroBatch],
    loss_fn: LossFn,
    forward_only: bool,
    dp_size: int = 1,
) -> List[Dict[str, torch.Tensor]]:
    """Run ``micro_batches`` through megatron's forward(-backward) schedule; per-micro-batch outputs on the last stage.

    ``loss_fn`` returns this micro-batch's additive share of the global loss (None when forward-only); the
    share is multiplied by ``num_microbatches * dp_size`` to undo the schedule's and DDP's averaging (module
    docstring). Non-last pipeline stages get ``[]``. Shapes vary between micro-batches (packs and token budgets):
    with PP > 1 ``variable_seq_lengths`` is switched on so that stages exchange activation shapes per micro-batch
    (verl's choice; NeMo-RL pads every pack to one length instead).
    """
    if not micro_batches:
        return []
    config = get_model_config(model_chunks[0])
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        config.variable_seq_lengths = True
    n = len(micro_batches)
    first = micro_batches[0].layout.inputs["input_ids"]
    out = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, loss_fn, float(n * dp_size)),
        data_iterator=iter(micro_batches),
        model=list(model_chunks),
        num_microbatches=n,
        seq_length=first.shape[1],
        micro_batch_size=first.shape[0],
        forward_only=forward_only,
    )
    return list(out) if parallel_state.is_pipeline_last_stage() else []
