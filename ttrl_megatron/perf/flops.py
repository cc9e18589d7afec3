"""Model FLOPs of a training pass over a dense decoder-only transformer, the bf16 dense peak of common accelerators,
and the model FLOPs utilization (MFU) they give. Pure python (no torch, no project infrastructure): the trainer
supplies the sequence lengths, the seconds and the device name (trainer/metrics.py: ``perf/mfu/actor``).

Convention: verl's FlopsCounter (verl/utils/flops_counter.py, the estimator it uses for qwen2 and llama), so a run's
``perf/mfu/actor`` is comparable with verl's on the same model, batch and GPUs. Per sequence of ``s`` tokens:

- Weight matmuls: 2 FLOPs per multiply-add, and the backward pass costs twice the forward (input and weight
  gradients), so forward + backward = ``6 * N * s``. ``N`` = the weights that take part in matmuls:
  per layer, the attention projections ``H * (q + k + v + o)`` with ``q = o = heads * head_dim`` and
  ``k = v = kv_heads * head_dim`` (GQA shrinks only k and v), plus the SwiGLU MLP ``3 * H * F`` (gate, up, down);
  over all layers, plus ``2 * V * H`` for the embedding and the output layer.
- The embedding and output layer count twice whether or not they are tied (verl's rule): tying shares storage, and
  the output projection runs either way. The embedding *lookup* does no matmul, so this overstates the work by
  ``6 * V * H`` per token (about 13% for Qwen2.5-1.5B); kept for comparability with verl. ``V`` is the HF vocabulary,
  not Megatron's padded one: padding columns are not model work.
- Attention core: ``Q K^T`` and ``P V`` are each ``2 * s^2 * heads * head_dim`` forward per layer (all query heads:
  GQA shares k/v, not the scores), so forward + backward = ``12 * s^2 * heads * head_dim`` per layer. Causal masking
  is NOT halved: like verl, the full ``s x s`` square is counted, although causal kernels (flash attention) skip
  about half of it.
- Not counted: biases, norms, RoPE, softmax, the loss, and recomputation (activation checkpointing re-runs forwards:
  hardware FLOPs, not model FLOPs, so MFU does not rise when recompute is switched on).

Lengths are the real tokens of each sequence (``attention_mask`` row sums): a padded batch and the same sequences
packed (THD) give the same figure, as padding is not model work.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Protocol

MLP_MATRICES = 3  # SwiGLU: gate, up and down projections (megatron/arch.py accepts only silu -> SwiGLU)


class DecoderShape(Protocol):
    """The fields of ``megatron.arch.ModelArchConfig`` used here (any object with them will do)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int  # key/value heads
    head_dim: int


def matmul_params(arch: DecoderShape) -> int:
    """``N``: the weights that take part in matmuls, embedding and output layer counted separately (module doc)."""
    h, d = arch.hidden_size, arch.head_dim
    q = o = arch.num_attention_heads * d
    k = v = arch.num_query_groups * d
    per_layer = h * (q + k + v + o) + MLP_MATRICES * h * arch.intermediate_size
    return per_layer * arch.num_layers + 2 * arch.vocab_size * h


def training_flops(arch: DecoderShape, seqlens: Iterable[int]) -> int:
    """Forward + backward model FLOPs of one pass over sequences of ``seqlens`` real tokens each (module doc):
    ``6 * N * sum(s) + 12 * layers * heads * head_dim * sum(s^2)``. Exact integer arithmetic."""
    lengths = [int(s) for s in seqlens]
    if any(s < 0 for s in lengths):
        raise ValueError(f"sequence lengths must be >= 0, got {lengths}")
    dense = 6 * matmul_params(arch) * sum(lengths)
    attention = 12 * arch.num_layers * arch.num_attention_heads * arch.head_dim * sum(s * s for s in lengths)
    return dense + attention


# bf16 dense tensor-core peak per device (FLOP/s, no 2:4 sparsity), from the vendors' datasheets. Keys are the
# words of ``torch.cuda.get_device_name()`` that identify the part; the entry matching the most words wins, so
# "NVIDIA H100 PCIe" gets the PCIe figure and "NVIDIA H100 80GB HBM3" (SXM) the H100 one. Whole words, not
# substrings: "A10" must not match "A100", nor "L4" "L40S", nor "H200" "GH200" (which is its own entry anyway).
PEAK_BF16_FLOPS: dict[tuple[str, ...], float] = {
    ("H100",): 989e12,  # SXM
    ("H100", "PCIe"): 756e12,
    ("H100", "NVL"): 835e12,
    ("H800",): 989e12,
    ("H800", "PCIe"): 756e12,
    ("H200",): 989e12,  # SXM: the H100's tensor cores with more, faster memory
    ("H200", "NVL"): 835e12,
    ("GH200",): 989e12,
    ("H20",): 148e12,
    ("A100",): 312e12,
    ("A800",): 312e12,
    ("A40",): 149.7e12,
    ("A10",): 125e12,
    ("L40S",): 362e12,
    ("L40",): 181e12,
    ("L4",): 121e12,
    ("B200",): 2250e12,
    ("GB200",): 2500e12,
    ("MI300X",): 1307e12,
}


def peak_bf16_flops(device_name: Optional[str]) -> Optional[float]:
    """The bf16 dense peak (FLOP/s) of the device called ``device_name`` (``torch.cuda.get_device_name()``);
    ``None`` for ``None`` (a CPU run) and for a device not in ``PEAK_BF16_FLOPS``: no guessed figure."""
    if not device_name:
        return None
    words = {w.upper() for w in re.split(r"[\s\-_/]+", device_name) if w}
    best, best_len = None, 0
    for key, peak in PEAK_BF16_FLOPS.items():
        if len(key) > best_len and all(k.upper() in words for k in key):
            best, best_len = peak, len(key)
    return best


def model_flops_utilization(flops: float, seconds: float, peak_flops: float, world_size: int) -> float:
    """``flops`` done by ``world_size`` devices in ``seconds``, as a fraction of their combined peak."""
    if seconds <= 0 or peak_flops <= 0 or world_size < 1:
        raise ValueError(f"MFU needs seconds > 0, a peak > 0 and world_size >= 1; got {seconds}, {peak_flops}, "
                         f"{world_size}")
    return flops / (seconds * peak_flops * world_size)
