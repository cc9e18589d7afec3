"""Composition of conf/ into the typed dataclasses: every YAML, the seed run's exact command, unknown keys, inheritance."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from ttrl_megatron.config import ConfigError, TTRLTrainerConfig, compose, save_resolved, validate
from ttrl_megatron.config.loader import CONF_DIR

# The exact Hydra command of the reference run (shared/reference/seed-000_...txt), minus `python verl/trainer/main_ppo.py`.
SEED_OVERRIDES = """
data.train_files=[/root/autodl-tmp/TTRL/verl/data/MATH-TTT/answer.jsonl_0.4_pi1_r32_repeatto32.parquet]
data.val_files=[/root/autodl-tmp/TTRL/verl/data/MATH-TTT/test.parquet]
data.max_prompt_length=1024
data.max_response_length=3072
data.train_batch_size=32
data.filter_overlong_prompts=True
data.truncation=error
actor_rollout_ref.model.path=/root/autodl-tmp/model/Qwen2.5-Math-1.5B
actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.model.use_remove_padding=True
actor_rollout_ref.actor.ppo_mini_batch_size=1
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
actor_rollout_ref.actor.use_kl_loss=True
actor_rollout_ref.actor.optim.lr=5e-7
actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.03
actor_rollout_ref.actor.optim.warmup_style=cosine
actor_rollout_ref.actor.fsdp_config.param_offload=False
actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096
actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2
actor_rollout_ref.ref.fsdp_config.param_offload=True
actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.n=32
actor_rollout_ref.rollout.max_model_len=4096
actor_rollout_ref.rollout.max_num_batched_tokens=4096
critic.optim.lr=9e-6
critic.model.use_remove_padding=True
critic.model.path=/root/autodl-tmp/model/Qwen2.5-Math-1.5B
critic.model.enable_gradient_checkpointing=True
critic.ppo_micro_batch_size_per_gpu=2
algorithm.kl_ctrl.kl_coef=0.0
algorithm.adv_estimator=grpo_nsr
custom_reward_function.path=./verl/utils/reward_score/ttrl_math/__init__.py
custom_reward_function.name=reward_func
ttrl.enable=True
ttrl.n_votes_per_prompt=64
ttrl.n_samples_per_prompt=32
trainer.logger=[console,wandb]
trainer.project_name=one-shot-TTRL-verl
trainer.experiment_name=test
trainer.n_gpus_per_node=8
trainer.nnodes=1
trainer.save_freq=40
trainer.test_freq=5
trainer.default_local_dir=checkpoints/one-shot-TTRL-verl/MATH-TTT-Qwen2.5-Math-1.5B/1126/TTRL-Len@3k-grpo-115533
trainer.total_epochs=1000
""".split()


def _seed_with_tmp_paths(tmp_path: Path) -> list[str]:
    """The seed overrides with every path pointed at a file/dir that exists under tmp_path (same keys, same order)."""
    model = tmp_path / "Qwen2.5-Math-1.5B"
    model.mkdir()
    files = {"data.train_files": tmp_path / "train.parquet", "data.val_files": tmp_path / "test.parquet",
             "custom_reward_function.path": tmp_path / "reward.py"}
    for f in files.values():
        f.write_text("")
    out = []
    for ov in SEED_OVERRIDES:
        key = ov.split("=", 1)[0]
        if key in files:
            ov = f"{key}=[{files[key]}]" if key.startswith("data.") else f"{key}={files[key]}"
        elif key.endswith("model.path"):
            ov = f"{key}={model}"
        out.append(ov)
    return out


def test_seed_command_composes_and_validates(tmp_path):
    assert len(SEED_OVERRIDES) == 46
    cfg = compose(_seed_with_tmp_paths(tmp_path))
    validate(cfg, world_size=8)
    arr = cfg.actor_rollout_ref
    assert (cfg.ttrl.n_votes_per_prompt, cfg.ttrl.n_samples_per_prompt, arr.rollout.n) == (64, 32, 32)
    assert cfg.trainer.logger == ["console", "wandb"] and cfg.data.train_files == [str(tmp_path / "train.parquet")]
    assert arr.actor.optim.lr == 5e-7 and arr.actor.optim.warmup_style == "cosine"
    assert cfg.algorithm.adv_estimator == "grpo_nsr" and cfg.critic.enable is False  # no critic for grpo_nsr
    assert cfg.reward_model.reward_manager == "majority"  # ttrl.enable picks the majority-vote reward
    assert arr.ref.megatron.param_offload is True and arr.actor.megatron.param_offload is False  # fsdp alias folded
    assert cfg.custom_reward_function.name == "reward_func"


def test_seed_command_without_paths_still_composes():
    cfg = compose(SEED_OVERRIDES)
    validate(cfg, world_size=8, check_paths=False)
    with pytest.raises(ConfigError, match="data.train_files"):
        validate(cfg, world_size=8)


def _yaml_names() -> list[str]:
    return sorted(p.relative_to(CONF_DIR).with_suffix("").as_posix() for p in CONF_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("name", _yaml_names())
def test_every_yaml_composes_and_validates(name, tmp_path, demo_run_dir):
    cfg = compose([], config_name=name)  # composes as written (placeholders included)
    model, data = tmp_path / "model", tmp_path / "d.parquet"
    model.mkdir()
    data.write_text("")
    if name == "examples/demo_cpu":
        overrides = [f"trainer.run_dir={demo_run_dir}"]
    else:
        overrides = [f"data.train_files=[{data}]", f"data.val_files=[{data}]", f"actor_rollout_ref.model.path={model}",
                     f"critic.model.path={model}"]
        if name == "ttrl_trainer":  # the bare schema: verl requires the micro batch to be chosen
            overrides.append("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4")
    cfg = compose(overrides, config_name=name)
    validate(cfg)


def test_demo_config_matches_the_recipe(demo_run_dir):
    cfg = compose([f"trainer.run_dir={demo_run_dir}"], config_name="examples/demo_cpu")
    arr = cfg.actor_rollout_ref
    assert (cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node, cfg.trainer.device) == (2, "cpu")
    assert (cfg.ttrl.n_votes_per_prompt, cfg.ttrl.n_samples_per_prompt, cfg.data.train_batch_size) == (16, 8, 32)
    assert cfg.algorithm.adv_estimator == "grpo_nsr" and arr.actor.optim.lr == 1e-4 and arr.rollout.temperature == 1.0
    assert not arr.actor.use_kl_loss and not cfg.algorithm.use_kl_in_reward
    assert arr.model.path == f"{demo_run_dir}/sft_model" and cfg.data.train_files == [f"{demo_run_dir}/data/test.parquet"]


@pytest.mark.parametrize("override, key", [
    ("data.no_such_key=1", "data.no_such_key"),
    ("+data.no_such_key=1", "data.no_such_key"),
    ("+actor_rollout_ref.actor.optim.lr_typo=1", "actor_rollout_ref.actor.optim.lr_typo"),
    ("+toplevel=1", "toplevel"),
    ("data.train_batch_size=abc", "data.train_batch_size"),
])
def test_unknown_keys_and_bad_types_fail_at_composition(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_unknown_key_in_a_yaml_fails(tmp_path):
    (tmp_path / "bad.yaml").write_text("defaults:\n  - ttrl_trainer_schema\n  - _self_\ntrainer:\n  save_frequency: 3\n")
    with pytest.raises(ConfigError, match="save_frequency"):
        compose([], config_name="bad", config_dir=tmp_path)


def test_free_form_dict_fields_accept_new_keys():
    cfg = compose(["+actor_rollout_ref.model.override_config.attention_dropout=0.0"])
    assert cfg.actor_rollout_ref.model.override_config == {"attention_dropout": 0.0}


def test_single_path_string_is_accepted_like_verl():
    cfg = compose(["data.train_files=/a/b.parquet"])
    assert cfg.data.train_files == ["/a/b.parquet"]


def test_inherited_defaults_resolve_in_one_place():
    cfg = compose(["actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3",
                   "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2", "ttrl.enable=True"])
    arr = cfg.actor_rollout_ref
    assert (cfg.ttrl.n_votes_per_prompt, cfg.ttrl.n_samples_per_prompt) == (4, 4)  # TTRL: both default to rollout.n
    assert arr.ref.log_prob_micro_batch_size_per_gpu == 3 and arr.rollout.log_prob_micro_batch_size_per_gpu == 3
    assert arr.ref.megatron.tensor_model_parallel_size == 2 and cfg.critic.megatron.tensor_model_parallel_size == 2
    assert cfg.critic.enable is True and cfg.critic.ppo_micro_batch_size_per_gpu == 3  # default estimator is gae
    assert arr.rollout.max_model_len == cfg.data.max_prompt_length + cfg.data.max_response_length
    assert cfg.trainer.default_local_dir == "checkpoints/ttrl_megatron/default" == cfg.trainer.run_dir
    assert cfg.reward_model.reward_manager == "majority"


def test_python_defaults_equal_composed_defaults():
    assert compose([]) == TTRLTrainerConfig()


def test_save_resolved_round_trips(tmp_path, demo_run_dir):
    from omegaconf import OmegaConf

    cfg = compose([f"trainer.run_dir={demo_run_dir}"], config_name="examples/demo_cpu")
    path = save_resolved(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    loaded = yaml.safe_load(path.read_text())
    assert loaded == dataclasses.asdict(cfg) and "${" not in path.read_text()  # interpolations resolved
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TTRLTrainerConfig), loaded))
    assert back == cfg
