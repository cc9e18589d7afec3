"""The memory plan's arithmetic and its choices, on the reference run (Qwen2.5-Math-1.5B, 8 GPUs, TP1/PP1/DP8).

Exact figures here are written out from the documented terms (memory/formulas.py, memory/plan.py); the check that
those terms are what the engine really allocates is in tests/dist/test_memory_plan_{cpu,fake}.py.
"""

import dataclasses

import pytest

from ttrl_megatron.memory import formulas as Fm
from ttrl_megatron.memory.plan import GIB, plan_memory
from ttrl_megatron.memory.report import as_json, format_plan, refusal

P = 1_543_714_304  # Qwen2.5-Math-1.5B parameters (tied, vocab 151936 = 1187 x 128: no padding at TP 1)
H100 = int(79 * GIB)


def test_parameter_counts(qwen_arch):
    assert Fm.stage_params(qwen_arch, 1, 1, 0).total == P
    assert Fm.hf_params(qwen_arch) == P
    # TP2 x PP2, last stage (rank 5 of 8): 14 layers, the tied embedding's copy as output layer, padded to 152064
    last = Fm.stage_params(qwen_arch, 2, 2, 1)
    assert last.layers == 14 and last.head == 152064 // 2 * 1536 and last.embedding == 0
    assert 443e6 < last.total < 445e6  # 444 M (gpu-bringup-anchors.md §12)


def test_reference_state_and_phases(reference, qwen_arch):
    eager = "actor_rollout_ref.rollout.enforce_eager=true"  # no CUDA graphs (the rollout helper's GPU default has them)
    plan = plan_memory(reference(eager, chunk=None), qwen_arch, device_bytes=H100, device_source="test")
    assert plan.layout == {"tp": 1, "pp": 1, "dp": 8, "world": 8}
    assert plan.state == {"actor.params": 2 * P, "actor.grads": 4 * P, "actor.optimizer": 12 * P // 8,
                          "ref.params": 2 * P}  # bf16 weights, fp32 grads, fp32 main + Adam moments over DP 8
    trainer = 2 * P + 4 * P + 12 * P // 8
    vllm = int(0.5 * H100)  # gpu_memory_utilization (verl default) x the GPU
    assert plan.phases["gen"].total == trainer + vllm  # the reference model is offloaded (ref param_offload)
    names = {p: {t.name for t in plan.phases[p].resident} for p in plan.phases}
    assert "ref.params" in names["ref"] and "ref.params" not in names["old_log_prob"] | names["gen"]
    assert not any(n.startswith("vllm") for n in names["update_actor"])  # vLLM sleeps; eager: no graphs kept
    # today's loss path at micro-batch 2 x 4096 tokens (3072 response): fp32 logits + the scaled slice + entropy's 4
    svl, rvl = 4096 * 2 * 151936, 3072 * 2 * 151936
    loss = [t for t in plan.phases["update_actor"].transient if t.name.startswith("loss path")]
    assert loss[0].bytes == 4 * svl + 20 * rvl  # 22.0 GiB, issue #13 item 5
    assert plan.fits and plan.largest.phase == "gen"


def test_offload_and_sleep_choices_move_state(reference, qwen_arch):
    def resident(plan, phase):
        return {t.name for t in plan.phases[phase].resident}

    off = plan_memory(reference("actor_rollout_ref.ref.fsdp_config.param_offload=false",
                                "actor_rollout_ref.actor.megatron.grad_offload=true",
                                "actor_rollout_ref.actor.megatron.optimizer_offload=true",
                                "actor_rollout_ref.actor.megatron.param_offload=true"), qwen_arch, device_bytes=H100)
    assert "ref.params" in resident(off, "gen") and "ref.params" in resident(off, "update_actor")
    # around generation (rollout/colocate.py): grads and optimizer leave before the push, params after it
    assert not {"actor.grads", "actor.optimizer", "actor.params"} & resident(off, "gen")
    assert resident(off, "update_weights") == resident(off, "gen")  # the phase ends with vLLM's KV cache woken
    pushing = plan_memory(reference("actor_rollout_ref.actor.megatron.grad_offload=true",
                                    "actor_rollout_ref.actor.megatron.optimizer_offload=true",
                                    "actor_rollout_ref.actor.megatron.param_offload=true",
                                    "actor_rollout_ref.rollout.free_cache_engine=false"), qwen_arch, device_bytes=H100)
    assert "actor.params" in resident(pushing, "update_weights")  # the push reads them
    assert not {"actor.grads", "actor.optimizer"} & resident(pushing, "update_weights")
    assert {"actor.grads", "actor.optimizer", "actor.params"} <= resident(off, "old_log_prob") & \
        resident(off, "update_actor")
    base = plan_memory(reference("actor_rollout_ref.ref.fsdp_config.param_offload=false"), qwen_arch,
                       device_bytes=H100)
    assert base.phases["gen"].total - off.phases["gen"].total == (2 + 4) * P + 12 * P // 8
    eager = "actor_rollout_ref.rollout.enforce_eager=true"
    awake = plan_memory(reference(eager, "actor_rollout_ref.rollout.free_cache_engine=false"), qwen_arch,
                        device_bytes=H100)
    sleeping = plan_memory(reference(eager), qwen_arch, device_bytes=H100)
    gap = awake.phases["update_actor"].total - sleeping.phases["update_actor"].total
    assert gap == int(0.5 * H100)  # vLLM's whole share stays during the update
    graphs = plan_memory(reference("actor_rollout_ref.rollout.enforce_eager=false"), qwen_arch, device_bytes=H100)
    assert any("cuda_graphs" in t.name for t in graphs.phases["update_actor"].resident)


def test_recompute_and_micro_batch_change_the_update(reference, qwen_arch):
    fixed = "actor_rollout_ref.actor.use_dynamic_bsz=false"  # rows per micro-batch, not a token budget
    base = plan_memory(reference(fixed, chunk=None), qwen_arch, device_bytes=H100).phases["update_actor"]
    no_rc = plan_memory(reference(fixed, "actor_rollout_ref.model.enable_gradient_checkpointing=false", chunk=None),
                        qwen_arch, device_bytes=H100).phases["update_actor"]
    assert no_rc.transient_bytes > base.transient_bytes + 5 * GIB  # 28 layers of flash-attention activations
    smaller = plan_memory(reference(fixed, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1", chunk=None),
                          qwen_arch, device_bytes=H100).phases["update_actor"]
    assert smaller.transient_bytes < 0.6 * base.transient_bytes


def test_pipeline_stages_and_micro_batches_in_flight(reference, qwen_arch):
    plan = plan_memory(reference("actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
                                 "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2", chunk=None),
                       qwen_arch, device_bytes=H100)
    first, last = plan.stages[0], plan.stages[1]
    assert plan.layout["dp"] == 2
    assert any("log-prob path" in t.name for t in last["old_log_prob"].transient)
    assert not any("log-prob path" in t.name for t in first["old_log_prob"].transient)
    assert plan.phases["old_log_prob"].stage == 1  # the logits make the last stage the worst
    acts = [t.name for t in first["update_actor"].transient if t.name.startswith("activations")]
    assert acts and "2 micro-batch" in acts[0]  # 1F1B: stage 0 of 2 holds two micro-batches


def test_chunked_log_prob_path_when_the_field_is_set(reference, qwen_arch):
    today = plan_memory(reference(chunk=None), qwen_arch, device_bytes=H100)
    chunked = plan_memory(reference(chunk=512), qwen_arch, device_bytes=H100)  # compute's field and default
    assert any("chunked, 512 tokens" in a for a in chunked.assumptions)
    assert chunked.phases["update_actor"].total < today.phases["update_actor"].total - 15 * GIB
    x = Fm.Dims.of(qwen_arch, 1, 2, 4096, 3072, 2, 0)
    v, h, n = 151936, 1536, 2 * 3072
    # forward: the response hidden states + one chunk's bf16 logits and their fp32 cast, then the fp32 logits and
    # an fp32 exp column block
    assert Fm.logprob_path_bytes(x, grad=False, entropy=False, chunk=512) == \
        n * h * 2 + max(512 * v * 6, 512 * v * 4 + 4 * 512 * 8192)
    # backward: + hidden gradient, the fp32 [V, h] accumulator, the chunk's fp32 logits and bf16 gradient next to a
    # bf16 [V, h] product (and that product's fp32 cast on a CPU)
    grad = Fm.logprob_path_bytes(x, grad=True, entropy=True, chunk=512)
    assert grad == 2 * n * h * 2 + 4 * v * h + 512 * v * 6 + 2 * v * h
    assert Fm.logprob_path_bytes(x, grad=True, entropy=True, chunk=512, host_casts=True) == grad + 4 * v * h
    assert grad < Fm.logprob_path_bytes(x, grad=True, entropy=True, chunk=None) / 8


def test_refusal_names_the_phase_and_the_knob(reference, qwen_arch):
    greedy = plan_memory(reference("actor_rollout_ref.rollout.gpu_memory_utilization=0.9"), qwen_arch,
                         device_bytes=H100, device_source="test")
    lines = refusal(greedy)
    gen = [line for line in lines if "phase gen " in line]
    assert not greedy.fits and gen and "actor_rollout_ref.rollout.gpu_memory_utilization" in gen[0]
    assert all("trainer.memory_check=False" in line for line in lines)
    small = plan_memory(reference(chunk=None), qwen_arch, device_bytes=int(30 * GIB),
                        device_source="trainer.gpu_memory_gib")
    update = [line for line in refusal(small) if "phase update_actor" in line]
    assert update and "ppo_micro_batch_size_per_gpu" in update[0] and "logprob_chunk_size" in update[0]
    assert "30.0 GiB from trainer.gpu_memory_gib" in update[0]
    assert refusal(plan_memory(reference(), qwen_arch, device_bytes=H100)) == []


def test_cpu_plan_uses_the_host_engine(reference, qwen_arch):
    plan = plan_memory(reference("trainer.device=cpu", "actor_rollout_ref.rollout.kv_cache_gib=4"), qwen_arch)
    assert "init" not in plan.phases
    vllm = [t for t in plan.phases["update_actor"].resident if t.name.startswith("vllm")]
    assert vllm[0].bytes == 2 * P + 4 * int(GIB)  # weights + VLLM_CPU_KVCACHE_SPACE, never asleep on CPU
    assert any("score buffer" in t.name for t in plan.phases["gen"].resident)  # unfused attention's buffer


def test_report_formats(reference, qwen_arch):
    plan = plan_memory(reference(), qwen_arch, device_bytes=H100, device_source="test")
    text = format_plan(plan)
    assert "update_actor" in text and "FITS" in text.splitlines()[-1]
    data = as_json(plan)
    assert data["largest"] == "gen" and data["phases"]["gen"]["peak_gib"] == pytest.approx(plan.phases["gen"].total / GIB)
    assert dataclasses.asdict(Fm.stage_params(qwen_arch, 1, 1, 0))["layers"] == 28
