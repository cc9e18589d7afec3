"""megatron-core GPTModel built from a ModelArchConfig (an HF Qwen2/Llama config), policy or value model.

- Layer spec: Transformer Engine spec when ``transformer_engine`` imports (GPU), else megatron's local spec with
  RMSNorm (CPU) whose core attention also takes packed THD sequences (local_thd.py). The two differ in parameter
  names (TE fuses the norms into ``linear_qkv``/``linear_fc1`` as ``layer_norm_weight``; local has
  ``input_layernorm``/``pre_mlp_layernorm``): see ``layer_spec_kind``. ``model.ttrl_spec`` records the choice.
- Fusions, sequence parallelism and recomputation come from a resolved ``PerfSettings`` (config/perf.py).
- Vocab: embedding and output rows are padded to ``arch.padded_vocab_size(tp)``. The padded logits are forced to
  ``PADDED_VOCAB_LOGIT`` (in the output layer's forward), so softmax/CE/log-probs equal those of the unpadded
  HF/vLLM model at any TP; ``forward_logits`` also cuts the padded columns off.
- ``emit_hidden(model)``: while active, the output layer hands back its (TP-region prepared) input hidden states
  instead of logits, so the engines form logits only at response positions, chunk by chunk (logprobs.py), and the
  full ``[b, s, V/tp]`` logits never exist. ``output_weight(model)`` is the weight they multiply with.
- Value model (critic): same trunk; ``output_layer`` is replaced by ``ValueHead``, a TP-replicated
  ``Linear(hidden, 1, bias=False)`` (the layout of verl's megatron critic), never tied to the embedding.
  Its weight ``output_layer.weight`` [1, hidden] corresponds to HF ``score.weight`` of ``*ForTokenClassification``
  with num_labels=1 (HF's ``score.bias`` has no counterpart).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from ttrl_megatron.config.perf import PerfSettings
from ttrl_megatron.distributed import ParallelLayout
from ttrl_megatron.distributed.devices import compute_device, host_device
from ttrl_megatron.megatron.arch import ArchConfigError, ModelArchConfig

__all__ = [
    "ArchConfigError",
    "ModelArchConfig",
    "ValueHead",
    "build_gpt_model",
    "build_transformer_config",
    "emit_hidden",
    "forward_logits",
    "layer_spec_kind",
    "left_padded_inputs",
    "output_weight",
]


def layer_spec_kind() -> str:
    """``"te"`` when Transformer Engine imports, else ``"local"`` (decides parameter names, see module doc)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or a broken TE build without CUDA
        return "local"
    return "te"


def _layer_spec(kind: str):
    from megatron.core.models.gpt import gpt_layer_specs

    if kind == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    if kind == "local":
        from ttrl_megatron.megatron.local_thd import PackedDotProductAttention

        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
        return spec
    raise ValueError(f"layer spec {kind!r} unknown; use 'te' or 'local'")


def build_transformer_config(
    arch: ModelArchConfig, layout: ParallelLayout, params_dtype: torch.dtype = torch.float32,
    perf: Optional[PerfSettings] = None,
) -> TransformerConfig:
    """TransformerConfig matching HF semantics (RMSNorm, SwiGLU, no linear biases, HF's attention dropout and no
    hidden dropout: Qwen2/Llama have none), with the fusions / SP / recompute of ``perf`` (default: all off).

    tp/pp sizes are passed here too: without the PP size every stage silently builds all layers.
    """
    perf = perf or PerfSettings()
    layout.validate_model(
        num_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
    )
    on_cpu = not torch.cuda.is_available()
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=arch.attention_dropout,
        init_method_std=arch.initializer_range,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # CPU: weights are created full-size on CPU then split, so TP=1 and TP=2 get the same values per seed.
        use_cpu_initialization=on_cpu,
        bias_activation_fusion=perf.bias_activation_fusion,
        masked_softmax_fusion=perf.masked_softmax_fusion,
        apply_rope_fusion=perf.apply_rope_fusion,
        persist_layer_norm=False,
        gradient_accumulation_fusion=perf.gradient_accumulation_fusion,
        sequence_parallel=perf.sequence_parallel,
        recompute_granularity=perf.recompute_granularity,
        recompute_method=perf.recompute_method,
        recompute_num_layers=perf.recompute_num_layers,
        **({"recompute_modules": list(perf.recompute_modules)} if perf.recompute_modules else {}),
    )


class ValueHead(torch.nn.Linear):
    """Critic output: ``[s, b, hidden] -> ([s, b, 1], None)``; replicated over TP (same weight on every TP rank).

    Accepts the keyword arguments GPTModel passes to its ``output_layer`` and ignores them.
    """

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        # Same device as megatron's own parameters (the run's compute device).
        super().__init__(hidden_size, 1, bias=False, dtype=dtype, device=compute_device())
        torch.nn.init.zeros_(self.weight)  # an untrained critic predicts 0
        # TP-replicated: both TP ranks see identical hidden states (after the row-parallel all-reduce), so their
        # grads agree and megatron must not treat this parameter as TP-sharded.
        self.weight.tensor_model_parallel = False

    def forward(self, hidden_states, weight=None, runtime_gather_output=None):  # noqa: D401 - megatron signature
        if getattr(self, "sequence_parallel", False):
            # [s/tp, b, h] -> [s, b, h]; every TP rank then holds the same loss, so the backward is a split
            hidden_states = tensor_parallel.gather_from_sequence_parallel_region(
                hidden_states, tensor_parallel_output_grad=False)
        return super().forward(hidden_states), None


def build_gpt_model(
    arch: ModelArchConfig,
    layout: Optional[ParallelLayout] = None,
    *,
    value_head: bool = False,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    params_dtype: torch.dtype = torch.float32,
    spec: Optional[str] = None,
    perf: Optional[PerfSettings] = None,
) -> GPTModel:
    """Build this rank's GPTModel stage for ``arch`` under ``layout`` (default: megatron's initialised state).

    pre_process / post_process default to "first / last pipeline stage". Requires megatron's parallel state
    (``ttrl_megatron.megatron.parallel.init_distributed``). Weights are randomly initialised (seeded by
    ``seed_all``); load real ones with the converters. The model carries ``model.ttrl_arch``,
    ``model.ttrl_value_head`` and ``model.ttrl_spec`` (``"te"`` | ``"local"``) for downstream helpers. ``perf``:
    fusions / SP / recompute (config/perf.py ``resolve_perf``); None = megatron-core's defaults (all off).
    """
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("megatron parallel state is not initialised; call init_distributed(layout) first")
    if not tensor_parallel.get_cuda_rng_tracker().is_initialized():
        # megatron's weight init (GPU) and every attention forward fork this tracker; unseeded it fails later
        raise RuntimeError("megatron RNG tracker is not seeded; call seed_all(seed) or init_distributed(..., seed=...)")
    if layout is None:
        from ttrl_megatron.megatron.parallel import current_layout

        layout = current_layout()
    _check_layout_matches_state(layout)
    config = build_transformer_config(arch, layout, params_dtype, perf)
    kind = spec or layer_spec_kind()
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(kind),
        vocab_size=arch.padded_vocab_size(layout.tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=arch.tie_word_embeddings and not value_head,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
        parallel_output=True,
    )
    if value_head and post_process:
        model.output_layer = ValueHead(arch.hidden_size, params_dtype)
        model.output_layer.sequence_parallel = config.sequence_parallel
    elif post_process:
        _install_output_modes(model.output_layer, arch, layout.tp)
    model.ttrl_arch = arch
    model.ttrl_value_head = value_head
    model.ttrl_spec = kind
    return model


# Logit given to padded vocab entries. Finite on purpose: with -inf, entropy terms p * log p give 0 * -inf = nan.
# exp(-1e4 - max) underflows to exactly 0 in fp32/bf16, so the padded entries carry no probability mass.
PADDED_VOCAB_LOGIT = -1.0e4


def _install_output_modes(output_layer: torch.nn.Module, arch: ModelArchConfig, tp: int) -> None:
    """Wrap the output layer's forward (the instance's, so parameter names and hooks stay megatron's):

    - normal mode: megatron's logits ``[s, b, V/tp]`` with the padded vocab rows forced to ``PADDED_VOCAB_LOGIT``
      on the owning TP rank; without this, softmax / cross entropy (``labels=`` path, vocab-parallel) would spread
      probability over the padding rows, so log-probs would differ from HF/vLLM (unpadded vocab) and between TPs;
    - ``emit_hidden`` mode: the input hidden states, prepared as the column-parallel linear prepares its input
      (sequence-parallel all-gather, else megatron's copy-to-TP region), so that a caller's ``hidden @ W^T`` on
      this rank's vocabulary shard gets exactly the layer's gradients: the backward sums (or reduce-scatters) the
      per-shard hidden-state gradients over TP.
    """
    padded = arch.padded_vocab_size(tp)
    local = padded // tp
    start = parallel_state.get_tensor_model_parallel_rank() * local
    pad = torch.arange(start, start + local, device=host_device()) >= arch.vocab_size  # host: moved once per device below
    pad = pad if bool(pad.any()) else None  # [V/tp] bool, True = padding column
    on_device = {}
    base_forward = output_layer.forward
    output_layer.ttrl_emit_hidden = False

    def forward(hidden_states, weight=None, runtime_gather_output=None):
        if output_layer.ttrl_emit_hidden:
            if output_layer.sequence_parallel:
                prepared = tensor_parallel.gather_from_sequence_parallel_region(
                    hidden_states, tensor_parallel_output_grad=True)
            else:
                prepared = tensor_parallel.copy_to_tensor_model_parallel_region(hidden_states)
            return _ContiguousGrad.apply(prepared), None
        logits, bias = base_forward(hidden_states, weight=weight, runtime_gather_output=runtime_gather_output)
        if pad is None:
            return logits, bias
        if logits.device not in on_device:
            on_device[logits.device] = pad.to(logits.device)
        return logits.masked_fill(on_device[logits.device], PADDED_VOCAB_LOGIT), bias

    output_layer.forward = forward


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous. GPTModel transposes its output ``[s, b, h] -> [b, s,
    h]``, so for b > 1 the gradient reaching the TP region op is a non-contiguous view, and megatron-core 0.16.1's
    ``mappings._reduce`` all-reduces ``grad.contiguous()`` -- a copy -- and returns the un-reduced gradient (the
    logits path never meets this: a matmul's input gradient is contiguous). Found by the TP2 padded-row parity test."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


@contextlib.contextmanager
def emit_hidden(model: torch.nn.Module):
    """While active, ``model`` (a GPTModel, possibly wrapped) returns ``[b, s, h]`` hidden states prepared for the
    output layer instead of logits (see ``_install_output_modes``). No-op on stages without an output layer and for
    value models."""
    gpt = unwrap_model(model)
    layer = getattr(gpt, "output_layer", None) if gpt.post_process else None
    if layer is None or not hasattr(layer, "ttrl_emit_hidden"):
        yield
        return
    layer.ttrl_emit_hidden = True
    try:
        yield
    finally:
        layer.ttrl_emit_hidden = False


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """This rank's output weight ``[V/tp, h]`` (the tied embedding at PP = 1, the last stage's copy under PP)."""
    gpt = unwrap_model(model)
    if gpt.share_embeddings_and_output_weights:
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _check_layout_matches_state(layout: ParallelLayout) -> None:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if (layout.tp, layout.pp) != (tp, pp):
        raise RuntimeError(f"layout tp={layout.tp}, pp={layout.pp} differs from megatron's state tp={tp}, pp={pp}")


def left_padded_inputs(attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Position ids and Megatron attention mask for a (left- or right-) padded batch.

    Args: attention_mask ``[B, T]`` (1/True = real token).
    Returns: position_ids ``[B, T]`` long (0 at each row's first real token, as HF computes them; 0 on padding),
    mask ``[B, 1, T, T]`` bool with True = masked (causal, and padded keys masked). Each position may always attend to
    itself, so fully padded query rows stay finite; their outputs are garbage and must be masked by the caller.
    """
    valid = attention_mask.bool()
    position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
    t = attention_mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None] & valid[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool, device=attention_mask.device)[None]
    return position_ids, (~allowed).unsqueeze(1)


def forward_logits(
    model: GPTModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, gather: bool = True
) -> torch.Tensor:
    """Single-stage (PP=1) forward: ``input_ids [B, T]`` -> logits ``[B, T, V]`` (fp32 as computed by the model).

    With ``gather`` the TP-local vocab shards are all-gathered and the padding rows cut off (V = HF vocab);
    otherwise the local shard ``[B, T, V_padded / tp]`` is returned. For a value model the result is ``[B, T, 1]``.
    Meant for tests and evaluation; training goes through megatron's pipeline schedules.

    The local spec takes the padding mask (``left_padded_inputs``). Transformer Engine's ``causal`` attention
    ignores any mask, so with the TE spec the real tokens of each row are right-aligned first (real tokens then
    never see a pad) and the logits are put back at their columns; padded columns get zeros there.
    """
    if not (model.pre_process and model.post_process):
        raise RuntimeError("forward_logits needs a single-stage model (pipeline_model_parallel_size=1)")
    if getattr(model, "ttrl_spec", "local") == "te" and not bool(attention_mask.bool().all()):
        valid = attention_mask.bool()
        rank = valid.long().cumsum(-1) - 1
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)
        width = int(valid.sum(-1).max())
        ids = torch.zeros(valid.shape[0], width, dtype=input_ids.dtype, device=input_ids.device)
        ids[rows[valid], rank[valid]] = input_ids[valid]
        pos = torch.arange(width, device=ids.device)[None].expand_as(ids)
        aligned = model(ids, pos, None)
        logits = torch.zeros(*valid.shape, aligned.shape[-1], dtype=aligned.dtype, device=aligned.device)
        logits[valid] = aligned[rows[valid], rank[valid]]
    else:
        position_ids, mask = left_padded_inputs(attention_mask)
        logits = model(input_ids, position_ids, mask)
    if getattr(model, "ttrl_value_head", False) or not gather:
        return logits
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    return logits[..., : model.ttrl_arch.vocab_size]
