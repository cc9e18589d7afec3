"""What the plan says to the user: the table of ``python -m ttrl_megatron.plan_memory``, its JSON, and the refusal
lines of ``validate()`` (the phase over budget, its figures, the knob to turn). Pure python."""
from __future__ import annotations

from typing import Dict, List

from ttrl_megatron.memory.plan import ARR, GIB, NON_TORCH_GIB, MemoryPlan, Term

# What to turn when a phase does not fit (validate() names the phase and these).
KNOBS: Dict[str, str] = {
    "init": f"lower {ARR}.rollout.gpu_memory_utilization (vLLM needs that share of the GPU free when it starts)",
    "gen": f"lower {ARR}.rollout.gpu_memory_utilization, or offload trainer state during generation "
           f"({ARR}.actor.megatron.grad_offload / optimizer_offload, {ARR}.ref.megatron.param_offload)",
    "old_log_prob": f"lower {ARR}.rollout.log_prob_micro_batch_size_per_gpu (or log_prob_max_token_len_per_gpu), "
                    f"set {ARR}.model.logprob_chunk_size, or raise {ARR}.actor.megatron.tensor_model_parallel_size",
    "ref": f"lower {ARR}.ref.log_prob_micro_batch_size_per_gpu (or log_prob_max_token_len_per_gpu), set "
           f"{ARR}.model.logprob_chunk_size, or {ARR}.ref.megatron.param_offload=True",
    "values": "lower critic.ppo_micro_batch_size_per_gpu (or ppo_max_token_len_per_gpu)",
    "update_critic": "lower critic.ppo_micro_batch_size_per_gpu, set critic.model.enable_gradient_checkpointing=True, "
                     f"or raise {ARR}.actor.megatron.tensor/pipeline_model_parallel_size",
    "update_actor": f"lower {ARR}.actor.ppo_micro_batch_size_per_gpu (or ppo_max_token_len_per_gpu), set "
                    f"{ARR}.model.logprob_chunk_size, {ARR}.model.enable_gradient_checkpointing=True, or raise "
                    f"{ARR}.actor.megatron.tensor/pipeline_model_parallel_size",
    "update_weights": f"lower {ARR}.rollout.sync.bucket_size_mb",
}
_SLEEP_KNOB = f"; set {ARR}.rollout.free_cache_engine=True so vLLM sleeps outside generation"


def refusal(plan: MemoryPlan) -> List[str]:
    """One line per phase over the budget: the phase, the figures, the knob to turn (empty when it fits)."""
    lines = []
    for p in plan.over_budget():
        knob = KNOBS[p.phase]
        sleeping = any(t.name.startswith("vllm (") for t in p.resident) and p.phase not in ("init", "gen")
        lines.append(f"memory plan: phase {p.phase} needs {p.total / GIB:.1f} GiB per GPU (stage {p.stage}; "
                     f"resident {p.resident_bytes / GIB:.1f} + working {p.transient_bytes / GIB:.1f}) but "
                     f"{plan.budget_bytes / GIB:.1f} GiB are available ({plan.device_bytes / GIB:.1f} GiB from "
                     f"{plan.device_source} minus {NON_TORCH_GIB} GiB outside torch); {knob}"
                     f"{_SLEEP_KNOB if sleeping else ''}; or set trainer.memory_check=False to run anyway")
    return lines


def format_plan(plan: MemoryPlan, detail: bool = True) -> str:
    """The table printed by ``python -m ttrl_megatron.plan_memory``."""
    lay = plan.layout
    lines = [f"memory plan per GPU: TP={lay['tp']} PP={lay['pp']} DP={lay['dp']} (world {lay['world']}), device "
             f"{plan.device_bytes / GIB:.1f} GiB ({plan.device_source}), torch budget {plan.budget_bytes / GIB:.1f} GiB",
             f"{'phase':<16}{'peak GiB':>10}{'resident':>10}{'working':>10}  stage  largest term"]
    for name, p in plan.phases.items():
        top = max(p.resident + p.transient + ([Term("optimizer step temporaries", p.step)] if p.step else []),
                  key=lambda t: t.bytes)
        lines.append(f"{name:<16}{p.total / GIB:>10.2f}{p.resident_bytes / GIB:>10.2f}{p.transient_bytes / GIB:>10.2f}"
                     f"  {p.stage:>5}  {top.name} ({top.bytes / GIB:.2f})")
    if detail:
        lines.append("state on the worst rank: " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in plan.state.items()))
        if len(plan.stages) > 1:
            for stage, phases in plan.stages.items():
                lines.append(f"stage {stage}: " + ", ".join(f"{k} {v.total / GIB:.2f}" for k, v in phases.items()))
        lines += [f"assumes: {a}" for a in plan.assumptions]
    big = plan.largest
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"largest phase: {big.phase} {big.total / GIB:.2f} GiB -> {verdict} in "
                 f"{plan.budget_bytes / GIB:.1f} GiB")
    return "\n".join(lines)


def as_json(plan: MemoryPlan) -> dict:
    """Machine-readable plan (scripts/gpu_check.sh compares it with the run's ``memory/peak_gib/*``)."""
    return {"device_gib": plan.device_bytes / GIB, "budget_gib": plan.budget_bytes / GIB, "fits": plan.fits,
            "largest": plan.largest.phase, "layout": plan.layout,
            "phases": {k: {"peak_gib": p.total / GIB, "resident_gib": p.resident_bytes / GIB,
                           "working_gib": p.transient_bytes / GIB, "stage": p.stage,
                           "terms": {t.name: t.bytes / GIB for t in p.resident + p.transient}}
                       for k, p in plan.phases.items()},
            "state_gib": {k: v / GIB for k, v in plan.state.items()}, "assumptions": plan.assumptions}

