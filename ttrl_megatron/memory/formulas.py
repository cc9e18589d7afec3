"""Bytes of one rank's tensors for one micro-batch: parameters per pipeline stage, decoder activations, the log-prob
path. Pure python (no torch): ``validate()`` calls the plan.

Where the constants come from. Each was read off the code path and then checked against ``memory/measure.py`` (a
storage counter over the real engine, on fake tensors at the Qwen2.5-Math-1.5B shapes and on real tensors at tiny
shapes; tests/unit/memory): megatron-core 0.16.1's local layer spec (unfused attention, what the CPU runs) is
measured; the flash variant (Transformer Engine spec, what a GPU runs) is the same accounting with the attention
replaced by what flash attention keeps (q, k, v, output and the fp32 log-sum-exp, no ``[s, s]`` scores, no GQA
expansion) and is the one part only a GPU can confirm (scripts/gpu_check.sh prints measured next to planned).

Notation (per rank, one micro-batch): ``b`` rows of ``s`` tokens (``r`` of them response tokens), ``n = b * s``;
``h`` hidden, ``A``/``G`` query heads / KV groups on this TP rank, ``d`` head dim, ``F`` FFN width on this TP rank,
``Vl`` padded vocabulary rows on this TP rank, ``w`` bytes per parameter/activation element (bf16: 2).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

ATTENTION_KINDS = ("flash", "unfused")
FP32 = 4


@dataclasses.dataclass(frozen=True)
class StageParams:
    """Parameter counts (elements) of one pipeline stage on one TP rank."""

    layers: int  # decoder layers on this stage
    embedding: int  # word embedding rows x hidden (first stage)
    per_layer: int  # one decoder layer
    head: int  # output layer (untied, or tied under PP: a copy of the embedding) or value head; last stage
    final_norm: int
    largest: int  # largest single parameter on this rank (optimizer-step and weight-grad transients)

    @property
    def total(self) -> int:
        return self.embedding + self.layers * self.per_layer + self.head + self.final_norm


def stage_params(arch, tp: int, pp: int, stage: int, value_head: bool = False) -> StageParams:
    """Parameters of pipeline stage ``stage`` (0-based) on one TP rank of a ``tp`` x ``pp`` layout.

    ``arch``: ``ModelArchConfig``. Megatron splits the layers evenly over stages, column-parallel weights (qkv, fc1,
    embedding/output rows) over TP, row-parallel ones (proj, fc2) along their input; norms are replicated. Tied
    embeddings under PP keep a copy on the last stage. A value model's head is ``Linear(h, 1)`` (TP-replicated).
    """
    h, d, f = arch.hidden_size, arch.head_dim, arch.intermediate_size
    qkv_rows = (arch.num_attention_heads + 2 * arch.num_query_groups) * d // tp
    weights = {"qkv": qkv_rows * h, "qkv_bias": qkv_rows if arch.add_qkv_bias else 0,
               "proj": h * arch.num_attention_heads * d // tp, "fc1": 2 * f // tp * h, "fc2": h * f // tp,
               "norms": 2 * h}
    vocab_rows = arch.padded_vocab_size(tp) // tp
    first, last = stage == 0, stage == pp - 1
    embedding = vocab_rows * h if first else 0
    if not last:
        head = 0
    elif value_head:
        head = h
    else:
        head = vocab_rows * h if (not arch.tie_word_embeddings or pp > 1) else 0
    largest = max([weights["fc1"], weights["qkv"], weights["fc2"], weights["proj"], embedding, head])
    return StageParams(layers=arch.num_layers // pp, embedding=embedding, per_layer=sum(weights.values()), head=head,
                       final_norm=h if last else 0, largest=largest)


def hf_params(arch) -> int:
    """Parameters of the whole HF model (unpadded vocabulary): what vLLM holds at rollout TP 1."""
    p = stage_params(arch, 1, 1, 0)
    vocab_fix = (arch.vocab_size - arch.padded_vocab_size(1)) * arch.hidden_size
    untied_head = 0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size - p.head
    return p.total + vocab_fix + untied_head


@dataclasses.dataclass(frozen=True)
class Dims:
    """One micro-batch on one rank (see the module notation)."""

    b: int
    s: int
    r: int
    h: int
    A: int
    G: int
    d: int
    F: int
    Vl: int
    w: int
    pad_on_rank: bool  # this TP rank's vocabulary slice holds padded rows (they get masked: one more copy)

    @property
    def n(self) -> int:
        return self.b * self.s

    @classmethod
    def of(cls, arch, tp: int, b: int, s: int, r: int, w: int, tp_rank: int) -> "Dims":
        padded = arch.padded_vocab_size(tp)
        vl = padded // tp
        return cls(b=b, s=s, r=r, h=arch.hidden_size, A=max(1, arch.num_attention_heads // tp),
                   G=max(1, arch.num_query_groups // tp), d=arch.head_dim, F=arch.intermediate_size // tp, Vl=vl,
                   w=w, pad_on_rank=(tp_rank + 1) * vl > arch.vocab_size)


# ---------------------------------------------------------------------------------------------------------------
# decoder activations


def layer_activation_bytes(x: Dims, attention: str) -> int:
    """Bytes one decoder layer keeps for backward (no recompute).

    Per token (local spec, measured): 10 hidden-sized tensors (norm inputs and outputs, residual stream pieces),
    q + expanded k + expanded v + attention output (4 A d), fc1 output + its SiLU + the gated product (5 F), the RoPE
    cos/sin of q and k (4 d), two fp32 norm statistics (8 bytes); plus the fp32 softmax and its ``w``-byte copy per
    ``[s, s]`` score of each head. Flash attention keeps q, k, v (unexpanded) and the output (2A + 2G) d, an fp32
    log-sum-exp per head, and no ``[s, s]`` tensor.
    """
    per_token_common = (10 * x.h + 5 * x.F + 4 * x.d) * x.w + 8
    if attention == "unfused":
        per_token = per_token_common + 4 * x.A * x.d * x.w
        scores = (FP32 + (x.w if x.w != FP32 else 0)) * x.A * x.b * x.s * x.s
        return per_token * x.n + scores
    per_token = per_token_common + (2 * x.A + 2 * x.G) * x.d * x.w + FP32 * x.A
    return per_token * x.n


def model_level_activation_bytes(x: Dims, recompute: bool) -> int:
    """Tensors kept once per stage (not per layer): the stage output and the final norm's input and statistics
    (measured: 5 hidden-sized per token without recompute, 4 with)."""
    return ((4 if recompute else 5) * x.h * x.w + 4) * x.n


def stored_activation_bytes(x: Dims, layers: int, attention: str, recompute: bool) -> int:
    """Activations one micro-batch leaves alive between its forward and its backward on a stage of ``layers``.

    Full recompute (megatron ``recompute_granularity=full``, uniform, one layer per checkpoint, verl's
    ``enable_gradient_checkpointing``) keeps only each layer's input ``[s, b, h]``.
    """
    per_layer = x.h * x.w * x.n if recompute else layer_activation_bytes(x, attention)
    return layers * per_layer + model_level_activation_bytes(x, recompute)


def forward_working_bytes(x: Dims, attention: str) -> int:
    """Peak of one layer's forward without autograd (forward-only passes), above its input.

    Unfused (measured): three fp32 ``[s, s]`` score tensors per head at the softmax (scores, masked, probabilities)
    and 11 hidden-sized tensors per token. Flash: the MLP dominates: norm output, fc1 output (2F), SiLU and the gated
    product, plus the hidden in/out.
    """
    if attention == "unfused":
        return 11 * x.h * x.n + 3 * FP32 * x.A * x.b * x.s * x.s
    return (4 * x.h + 4 * x.F) * x.w * x.n


def forward_end_bytes(x: Dims, attention: str, recompute: bool) -> int:
    """Extra at the end of a training forward, above the stored activations: with recompute the layers run without
    autograd (their forward working set); without, what a layer makes is mostly what it stores, and three
    hidden-sized tensors per token are transient (measured)."""
    return forward_working_bytes(x, attention) if recompute else 3 * x.h * x.w * x.n


def layer_largest_weight(arch, tp: int) -> int:
    """Elements of a decoder layer's largest weight on one TP rank (fc1: ``2 F x h``, or qkv)."""
    qkv = (arch.num_attention_heads + 2 * arch.num_query_groups) * arch.head_dim // tp * arch.hidden_size
    return max(2 * arch.intermediate_size // tp * arch.hidden_size, qkv)


def backward_start_bytes(x: Dims, attention: str, recompute: bool, layer_weight: int) -> int:
    """Extra at the first layer's backward, above the stored activations (measured): the recomputed layer's
    activations with recompute, and the ``w``-byte gradient of the layer's largest weight, which megatron computes
    before adding it into the fp32 grad buffer (activation gradients replace the activations they consume)."""
    return (layer_activation_bytes(x, attention) if recompute else 0) + layer_weight * x.w


def batch_input_bytes(x: Dims) -> int:
    """Per micro-batch tensors built by the engine: the boolean ``[b, 1, s, s]`` attention mask, int64 position ids
    and input ids, and the stage's hidden input ``[s, b, h]`` (received from the previous stage, or embedded)."""
    return x.b * x.s * x.s + 2 * 8 * x.n + x.h * x.w * x.n


def attention_scratch_bytes(x: Dims, attention: str) -> int:
    """megatron's global ``[b*A, s, s]`` score buffer of the unfused attention: allocated at the first forward and
    kept for the process (``get_global_memory_buffer``). Flash attention has none."""
    return x.w * x.A * x.b * x.s * x.s if attention == "unfused" else 0


# ---------------------------------------------------------------------------------------------------------------
# the log-prob path (the ONE place to update when the engine's log-prob computation changes)


def logprob_path_bytes(x: Dims, *, grad: bool, entropy: bool, entropy_grad: bool = False,
                       chunk: Optional[int] = None, host_casts: bool = False) -> int:
    """Peak bytes of the output layer + log-prob (+ entropy) computation of one micro-batch on the last stage, above
    the decoder's output. ``grad``: inside a training forward (the loss path); ``entropy``: entropy computed too;
    ``entropy_grad``: with gradient (``entropy_coeff != 0``: its exp and shifted logits stay for backward).

    ``chunk=None`` is today's path (megatron/actor.py + logprobs.py, measured): the output layer gives ``w``-byte
    logits ``[s, b, Vl]``, transposed into a contiguous copy, cast to fp32 ``[b, s, Vl]`` by ``Float16Module``
    (peak: one ``w``-byte copy + the fp32 copy, ``(w + 4) s b Vl``); the response slice is divided by the
    temperature (a new fp32 ``[b, r, Vl]``), masked again where this rank holds padded vocabulary rows (a
    transient second copy), and megatron's cross entropy works in place on it (and keeps it as its softmax for backward). The entropy
    computes on yet another fp32 copy: its shifted logits, their exp and the product (3 more). In the update the fp32
    logits stay alive through the loss (the schedule holds them) and the entropy is computed there without gradient
    when ``entropy_coeff`` is 0 (the same transient); the backward then materializes the fp32 gradient of the whole
    ``[b, s, Vl]`` logits next to the response-slice gradient, then its ``w``-byte cast and contiguous copy.

    ``chunk=C`` (``actor_rollout_ref.model.logprob_chunk_size`` response tokens per chunk; the compute helper's
    megatron/logprobs.py ``chunked_logprobs``, NeMo-RL's ChunkedDistributedLogprob pattern, gpu-bringup-anchors.md
    §3): the output layer never runs over the sequence; the response positions' hidden states ``[n, h]`` (n = b r,
    a ``w``-byte copy) are multiplied by this rank's ``[Vl, h]`` weight ``C`` positions at a time: the ``w``-byte
    matmul output and its fp32 cast ``C Vl (w + 4)``, then fp32 column blocks of at most 8192 for the exp and the
    entropy. With gradients only the inputs and per-position ``lse``/entropy are kept and backward recomputes each
    chunk: it adds the hidden-state gradient (``n h w``), an fp32 ``[Vl, h]`` weight-gradient accumulator, one
    chunk's logits (fp32 and ``w``-byte) and a ``w``-byte ``[Vl, h]`` product per chunk (the same size again when the
    accumulator is returned in the parameter dtype). Nothing of size ``[n, Vl]`` or ``[b, s, Vl]`` exists.
    ``host_casts`` (the CPU run, and fake tensors): torch casts the ``w``-byte product to fp32 before adding it into
    the fp32 accumulator in place, one more fp32 ``[Vl, h]``; CUDA casts inside the kernel.
    """
    svl, rvl = x.s * x.b * x.Vl, x.r * x.b * x.Vl
    w = x.w
    pad = 1 if x.pad_on_rank else 0
    if chunk is not None:
        c = min(chunk, x.r * x.b)
        nh = x.r * x.b * x.h * w
        weight = x.Vl * x.h
        low = w if w != FP32 else 0  # a half-precision model's matmul outputs besides their fp32 copies
        logits = c * x.Vl * (FP32 + low)  # one chunk's fp32 logits (+ the w-byte matmul output they come from)
        blocks = FP32 * c * min(8192, x.Vl)  # an exp column block (forward; backward only with entropy_grad)
        fwd = nh + max(logits, FP32 * c * x.Vl + blocks)  # the w-byte output is freed before the blocks
        if not grad:
            return fwd
        host = FP32 * weight if (host_casts and low) else 0
        # the chunk's fp32 logits (still referenced by the loop's column-block view) and their w-byte gradient next to
        # the w-byte [Vl, h] product (an fp32 model adds with addmm_ in place)
        work = logits + low * weight + host
        bwd = 2 * nh + FP32 * weight + work + (blocks if entropy and entropy_grad else 0)
        return max(fwd, bwd)
    cast = (w + FP32) * svl  # one w-byte copy of the logits + the fp32 output of Float16Module
    # fp32 logits + the scaled slice; then, one after the other, the slice's masked copy (padded rows: the unmasked
    # one is freed after) or the entropy's four: a scaled copy, shifted, exp, exp * shifted
    ent = 4 * FP32 * rvl if entropy else 0
    fwd = max(cast, FP32 * svl + FP32 * rvl + max(FP32 * rvl * pad, ent))
    if not grad:
        return fwd
    # backward: the slice's gradient (+ its masked copy) next to the zero-filled fp32 gradient of the full logits,
    # then its w-byte cast and that cast's contiguous copy; the saved softmax is consumed first
    bwd = max(FP32 * svl + FP32 * rvl * (1 + pad), FP32 * svl + 2 * w * svl)
    if entropy and entropy_grad:
        bwd += 2 * FP32 * rvl
    return max(fwd, bwd)
