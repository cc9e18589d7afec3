"""The memory plan against what a real CPU run of the engine allocates, phase by phase, at tiny shapes.

One gloo process runs the trainer's builders (actor, reference, critic: the real megatron DDP, optimizers and HF
weights of a tiny Qwen2) and every engine phase of a step on full-length rows, under a storage counter
(memory/measure.py, real tensors: the optimizer step included). The plan is computed for the same config with
trainer.device=cpu (megatron's local spec: unfused attention, torch's per-tensor Adam).

Tolerances (stated once): state items (parameters, fp32 grad buffers, optimizer state) within 0.5% (they are
exact in practice); each phase's working memory within 15% of the measured value + 0.5 MiB (the fixed overheads
of tiny shapes: position ids, rotary tables, small outputs); each phase's total (state + working) within 8%. The
unfused-attention constants of the plan were measured on megatron's local DotProductAttention; the compute branch's
CPU attention (per-sequence, megatron/local_thd.py) keeps fewer [s, s] tensors, which these tolerances cover.
"""
from pathlib import Path

import pytest

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, make_tiny_model

MIB = float(1 << 20)
CASES = {  # id: overrides on top of the tiny base (all phases: GAE critic + KL loss with a reference model)
    "bf16": ["actor_rollout_ref.actor.megatron.dtype=bfloat16", "actor_rollout_ref.model.enable_gradient_checkpointing=false"],
    "fp32_recompute": ["actor_rollout_ref.actor.megatron.dtype=float32",
                       "actor_rollout_ref.model.enable_gradient_checkpointing=true",
                       "critic.model.enable_gradient_checkpointing=true"],
}


def _overrides(model: Path, case: str) -> list:
    return [f"actor_rollout_ref.model.path={model}", "trainer.device=cpu", "trainer.n_gpus_per_node=1",
            "data.train_batch_size=4", "data.max_prompt_length=64", "data.max_response_length=192",
            "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.actor.use_kl_loss=true",
            "algorithm.adv_estimator=gae", "critic.ppo_micro_batch_size_per_gpu=2",
            # fixed-size, padded micro-batches (rows of equal length; the engine's packed/dynamic modes hold the
            # same tokens on GPU, but on CPU packing changes the attention's working set)
            "actor_rollout_ref.actor.use_dynamic_bsz=false", "actor_rollout_ref.model.use_remove_padding=false",
            "critic.model.use_remove_padding=false", *CASES[case]]


def _measure_cases(model: str) -> dict:
    import torch

    from ttrl_megatron.config import compose
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.memory.measure import measure_engine
    from ttrl_megatron.trainer.builders import init_parallel

    torch.set_num_threads(1)
    out = {}
    for case in CASES:
        cfg = compose(_overrides(Path(model), case))
        init_parallel(cfg.actor_rollout_ref.actor.megatron, "cpu", cfg.trainer.seed, cfg.trainer.collective_timeout_s)
        measured = measure_engine(cfg, ModelArchConfig.from_hf(model), fake=False)
        out[case] = {"state": measured.state, "phases": measured.phases}
    return out


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m",
                            TinySpec(vocab_size=2048, max_position_embeddings=1024))
    return model, run_distributed(_measure_cases, 1, str(model), timeout_s=600)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_the_cpu_run(measured, case):
    from ttrl_megatron.config import compose
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.memory.plan import plan_memory

    model, results = measured
    got = results[case]
    plan = plan_memory(compose(_overrides(model, case)), ModelArchConfig.from_hf(model))
    assert set(got["phases"]) == {"old_log_prob", "ref", "values", "update_critic", "update_actor", "update_weights"}
    for item, nbytes in got["state"].items():
        assert plan.state[item] == pytest.approx(nbytes, rel=0.005), item
    state = sum(got["state"].values())
    for phase, nbytes in got["phases"].items():
        planned = plan.phases[phase]
        scratch = sum(t.bytes for t in planned.resident if "score buffer" in t.name)
        # the first forward allocates megatron's attention score buffer, which the plan holds as resident
        work = planned.transient_bytes + (scratch if phase == "old_log_prob" else 0)
        assert abs(work - nbytes) <= 0.15 * nbytes + 0.5 * MIB, (phase, work / MIB, nbytes / MIB)
        total = state + scratch + nbytes - (scratch if phase == "old_log_prob" else 0)
        assert planned.total - sum(t.bytes for t in planned.resident if t.name.startswith("vllm")) == \
            pytest.approx(total, rel=0.08), phase
