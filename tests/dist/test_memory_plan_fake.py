"""The memory plan at the REAL Qwen2.5-Math-1.5B shapes (prompt 1024 + response 3072, vocab 151,936, micro-batch 2,
recompute on: the reference run), checked against fake-tensor runs of the engine (gpu-bringup-anchors.md §12).

Each case runs ``python -m ttrl_megatron.plan_memory --measure-rank R --json`` in a fresh process: rank R of the
layout is built with the trainer's builders under FakeTensorMode on a fake process group (memory/measure.py,
megatron/fake_world.py), every engine phase runs on full-length rows under a storage counter, and the result is
printed next to the plan for the same spec (megatron's local spec, unfused attention). Layouts: the reference
TP1/PP1/DP8, TP2/PP2/DP2 rank 5 (last stage, TP rank 1: the logits and the padded vocabulary rows) and rank 0
(first stage: the embedding and two micro-batches in flight), and one GPU with 16 short rows per micro-batch (the
log-prob path sets every peak: at 4,096 tokens per row the CPU's unfused attention can, which a GPU does not have). rollout.n is lowered (16, 8) so each rank runs one or
two micro-batches: the per-micro-batch memory is what is checked, and it keeps the run short.

Tolerances (stated once): state items (bf16 parameters, fp32 grad buffers, fp32 main weights + Adam moments over
DP) within 0.5%; each phase's memory above the state within 5% + 0.05 GiB; the weight-sync export is planned
conservatively: never below the measurement, at most 0.5 GiB above it.
"""
import json
import subprocess
import sys

import pytest

from tests.unit.megatron.test_arch import QWEN25_MATH_15B

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
GIB = float(1 << 30)
LAYOUTS = {  # id: (tp, pp, rank, rollout.n, extra overrides)
    "tp1_reference": (1, 1, 0, 16, []),
    # the reference model's forward is the actor's again (checked above): left out to keep these runs short
    "tp2pp2_last_stage": (2, 2, 5, 8, ["actor_rollout_ref.actor.use_kl_loss=false"]),
    "tp2pp2_first_stage": (2, 2, 0, 8, ["actor_rollout_ref.actor.use_kl_loss=false"]),
    # short rows, 16 per micro-batch (one GPU's worth of rows): the same 8,192 tokens, but the log-prob path, not
    # the CPU's unfused attention, sets the peak of every phase
    "tp1_short_rows": (1, 1, 0, 16, ["actor_rollout_ref.actor.use_kl_loss=false", "trainer.n_gpus_per_node=1",
                                     "data.max_prompt_length=256", "data.max_response_length=256",
                                     "actor_rollout_ref.rollout.max_model_len=512",
                                     "actor_rollout_ref.actor.use_dynamic_bsz=false",
                                     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
                                     "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16"]),
}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen")
    (path / "config.json").write_text(json.dumps(QWEN25_MATH_15B))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_plan_matches_fake_measurement_at_real_shapes(qwen_dir, layout):
    tp, pp, rank, n, extra = LAYOUTS[layout]
    cmd = [sys.executable, "-m", "ttrl_megatron.plan_memory", "--config-name", "examples/qwen2.5-math-1.5b",
           "--json", "--measure-rank", str(rank), f"actor_rollout_ref.model.path={qwen_dir}",
           f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={tp}",
           f"actor_rollout_ref.actor.megatron.pipeline_model_parallel_size={pp}",
           f"ttrl.n_samples_per_prompt={n}", f"actor_rollout_ref.rollout.n={n}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["measured"]
    assert result["stage"] == (0 if pp == 1 else rank // (tp * (8 // (tp * pp))))
    for item, (measured, planned) in result["state"].items():
        assert planned == pytest.approx(measured, rel=0.005), item
    phases = {"old_log_prob", "update_actor", "update_weights"} | ({"ref"} if not extra else set())
    assert set(result["phases"]) == phases
    for phase, (measured, planned) in result["phases"].items():
        if phase == "update_weights":
            assert measured <= planned <= measured + 0.5 * GIB, (planned / GIB, measured / GIB)
        else:
            assert abs(planned - measured) <= 0.05 * measured + 0.05 * GIB, (phase, planned / GIB, measured / GIB)
