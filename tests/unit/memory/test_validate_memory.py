"""validate() refuses a CUDA config whose memory plan does not fit, naming the phase and the knob;
trainer.memory_check=False turns that into a warning; CPU runs and configs without a readable config.json are
not planned."""

import warnings

import pytest

from ttrl_megatron.config import ConfigError, validate


def test_reference_fits_an_h100(reference):
    validate(reference("trainer.gpu_memory_gib=79"), world_size=8, check_paths=False)


def test_too_small_a_gpu_is_refused_with_the_phase_and_the_knob(reference):
    with pytest.raises(ConfigError) as err:  # 12 GiB: the trainer's 10.8 GiB of state + vLLM's half do not fit
        validate(reference("trainer.gpu_memory_gib=12"), world_size=8, check_paths=False)
    text = str(err.value)
    assert "phase gen" in text and "actor_rollout_ref.rollout.gpu_memory_utilization" in text
    assert "trainer.memory_check=False" in text and "12.0 GiB from trainer.gpu_memory_gib" in text
    with pytest.raises(ConfigError) as err:  # micro-batch 8 without recompute: the update is what does not fit
        validate(reference("trainer.gpu_memory_gib=40", "actor_rollout_ref.rollout.gpu_memory_utilization=0.2",
                           "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                           "actor_rollout_ref.model.enable_gradient_checkpointing=false", chunk=512),
                 world_size=8, check_paths=False)
    assert "phase update_actor" in str(err.value) and "ppo_micro_batch_size_per_gpu" in str(err.value)


def test_memory_check_false_warns_and_runs(reference):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate(reference("trainer.gpu_memory_gib=12", "trainer.memory_check=false"), world_size=8,
                 check_paths=False)
    assert any("phase gen" in str(w.message) and "running anyway" in str(w.message) for w in caught)


def test_not_planned_on_cpu_or_without_a_config_json(reference, tmp_path):
    validate(reference("trainer.gpu_memory_gib=1", "trainer.device=cpu", "actor_rollout_ref.rollout.max_num_seqs=4",
                       "actor_rollout_ref.ref.fsdp_config.param_offload=false"), world_size=8, check_paths=False)
    validate(reference("trainer.gpu_memory_gib=1", f"actor_rollout_ref.model.path={tmp_path}"), world_size=8,
             check_paths=False)
