"""Fusions, overlap, sequence parallelism and recomputation: from the config's "null = chosen by the stack" values to
concrete megatron-core settings, and the refusals where the stack cannot do what was asked. Stdlib only.

One set of rules, used twice: ``validate()`` probes the stack with ``importlib.util.find_spec`` (no import) and
reports problems before anything is built; the engine builders resolve again with the facts of the stack they run
on (``StackFacts`` from the megatron side: whether Transformer Engine really imports) and raise on the same
problems. Which stack can do what (reference/gpu-bringup-anchors.md §6, checked on this project's CPU stack):

| setting | needs | null (auto) resolves to |
|---|---|---|
| apply_rope_fusion | Transformer Engine (fused RoPE kernels) | on with TE |
| masked_softmax_fusion | a CUDA softmax kernel (TE, or megatron's scaled_masked_softmax_cuda) | on with CUDA + either |
| gradient_accumulation_fusion | Apex ``fused_weight_gradient_mlp_cuda`` (megatron's own output linear) | on when present |
| sequence_parallel | TP > 1 and TE (the torch norm fallback refuses SP) | on with TE and TP > 1 (verl) |
| bias_activation_fusion | nothing (torch.jit bias+SwiGLU runs on CPU too) | explicit bool, default on |
| overlap_grad_reduce | nothing (works on gloo) | explicit bool, default on |
| overlap_param_gather | the distributed optimizer and overlap_grad_reduce | on with both |
| recompute (selective core_attn / full) | nothing | full iff model.enable_gradient_checkpointing |
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional

RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm", "moe_act", "shared_experts", "moe", "mla_up_proj")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class StackFacts:
    """What the software stack of this run provides."""

    cuda: bool  # the run computes on GPUs (trainer.device == cuda)
    te: bool  # Transformer Engine is used (its layer spec; GPU)
    apex_grad_accum: bool  # Apex's fused_weight_gradient_mlp_cuda extension imports
    softmax_kernel: bool  # megatron's scaled_masked_softmax_cuda kernel imports

    @classmethod
    def probe(cls, device: str) -> "StackFacts":
        """Facts from the installed packages (no import), for ``validate()``; CPU runs never use TE or kernels."""
        cuda = device == "cuda"
        return cls(cuda=cuda, te=cuda and _has("transformer_engine"),
                   apex_grad_accum=cuda and _has("fused_weight_gradient_mlp_cuda"),
                   softmax_kernel=cuda and _has("scaled_masked_softmax_cuda"))


@dataclass(frozen=True)
class PerfSettings:
    """Concrete settings of one model (megatron-core names). The defaults are megatron-core's own (all off): what a
    model built without the trainer (tests, tools) gets."""

    apply_rope_fusion: bool = False
    bias_activation_fusion: bool = False
    masked_softmax_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    sequence_parallel: bool = False
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    recompute_modules: tuple = field(default_factory=tuple)
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False


def resolve_perf(meg, tp: int, gradient_checkpointing: bool, facts: StackFacts,
                 prefix: str = "actor_rollout_ref.actor.megatron") -> tuple[PerfSettings, list[str]]:
    """(settings, problems) for ``meg`` (``config.MegatronConfig``) at tensor-parallel size ``tp``.

    ``gradient_checkpointing``: the role's ``model.enable_gradient_checkpointing`` (full recompute, one layer per
    checkpoint, unless ``recompute_granularity`` says otherwise). ``problems`` name the field and what to change;
    empty when the stack can run the settings.
    """
    tf, ddp, p = meg.override_transformer_config, meg.override_ddp_config, []
    tfp, ddpp = f"{prefix}.override_transformer_config", f"{prefix}.override_ddp_config"

    def want(value: Optional[bool], auto: bool, ok: bool, name: str, why: str) -> bool:
        if value is None:
            return auto
        if value and not ok:
            p.append(f"{name}=True {why}; set it to null (chosen by the stack) or False")
        return bool(value)

    rope = want(tf.apply_rope_fusion, facts.te, facts.te, f"{tfp}.apply_rope_fusion",
                "needs Transformer Engine's fused RoPE (GPU)")
    softmax_ok = facts.cuda and (facts.te or facts.softmax_kernel)
    softmax = want(tf.masked_softmax_fusion, softmax_ok, softmax_ok, f"{tfp}.masked_softmax_fusion",
                   "needs a CUDA softmax kernel (Transformer Engine or megatron's scaled_masked_softmax_cuda)")
    gaf = want(tf.gradient_accumulation_fusion, facts.apex_grad_accum, facts.apex_grad_accum,
               f"{tfp}.gradient_accumulation_fusion",
               "needs Apex's fused_weight_gradient_mlp_cuda extension (CUDA; megatron's output layer uses it)")
    sp_ok = facts.te and tp > 1
    sp = want(meg.sequence_parallel, sp_ok, sp_ok, f"{prefix}.sequence_parallel",
              f"needs tensor_model_parallel_size > 1 (it is {tp}) and Transformer Engine norms (GPU)")
    granularity, method, layers = tf.recompute_granularity, tf.recompute_method, tf.recompute_num_layers
    if granularity is not None and granularity not in RECOMPUTE_GRANULARITIES:
        p.append(f"{tfp}.recompute_granularity={granularity!r}; use null, full or selective")
    if method is not None and method not in RECOMPUTE_METHODS:
        p.append(f"{tfp}.recompute_method={method!r}; use null, uniform or block")
    bad_modules = [m for m in tf.recompute_modules if m not in RECOMPUTE_MODULES]
    if bad_modules:
        p.append(f"{tfp}.recompute_modules has unknown entries {bad_modules}; use some of "
                 f"{', '.join(RECOMPUTE_MODULES)}")
    if layers is not None and (not isinstance(layers, int) or layers < 1):
        p.append(f"{tfp}.recompute_num_layers={layers!r} must be a positive int or null")
    if granularity is None and gradient_checkpointing:
        granularity = "full"
    if granularity == "full":
        method, layers = method or "uniform", layers or 1
    else:
        method = layers = None
    auto_pg = bool(meg.use_distributed_optimizer and ddp.overlap_grad_reduce)
    overlap_pg = auto_pg if ddp.overlap_param_gather is None else bool(ddp.overlap_param_gather)
    if overlap_pg and not meg.use_distributed_optimizer:
        p.append(f"{ddpp}.overlap_param_gather=True needs {prefix}.use_distributed_optimizer=True (it gathers the "
                 f"optimizer's parameter shards); set it to null or False")
    if overlap_pg and not ddp.overlap_grad_reduce:
        p.append(f"{ddpp}.overlap_param_gather needs {ddpp}.overlap_grad_reduce=True (megatron-core requires both)")
    settings = PerfSettings(
        apply_rope_fusion=rope, bias_activation_fusion=bool(tf.bias_activation_fusion), masked_softmax_fusion=softmax,
        gradient_accumulation_fusion=gaf, sequence_parallel=sp, recompute_granularity=granularity,
        recompute_method=method, recompute_num_layers=layers,
        recompute_modules=tuple(tf.recompute_modules) if granularity == "selective" else (),
        overlap_grad_reduce=bool(ddp.overlap_grad_reduce), overlap_param_gather=overlap_pg)
    return settings, p
