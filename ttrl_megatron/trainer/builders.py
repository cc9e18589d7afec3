"""Setup-time construction of the run's objects from the typed config: parallel state, the Megatron actor /
reference / critic, the vLLM engine, the weight sync, reward managers and loaders. Every choice the step depends on
(critic or not, reference or not, which estimator) is made here, once, by which objects exist.

Each builder receives its own sub-config (never the root). Imports the megatron engines (our megatron/ package,
the only megatron.core user), the rollout contract and the vLLM engine module (the only vllm user).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from ttrl_megatron.config import (ActorConfig, CriticConfig, DataConfig, ModelConfig, RefConfig, RolloutConfig,
                                  SyncConfig)
from ttrl_megatron.distributed import ParallelLayout, free_port
from ttrl_megatron.rollout.base import derive_seed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def init_parallel(megatron_cfg, device: str, seed: int, timeout_s: float) -> ParallelLayout:
    """torch.distributed (torchrun env) + megatron TP x PP x DP groups; seeds every RNG with ``seed``. ``timeout_s``
    (trainer.collective_timeout_s) bounds every collective of every group."""
    from ttrl_megatron.megatron.parallel import init_distributed

    if "RANK" not in os.environ:  # plain `python -m ttrl_megatron.main`: a one-process world on a free port
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    world = int(os.environ["WORLD_SIZE"])
    layout = ParallelLayout.from_world(world, megatron_cfg.tensor_model_parallel_size,
                                       megatron_cfg.pipeline_model_parallel_size,
                                       field_prefix="actor_rollout_ref.actor.megatron")
    init_distributed(layout, backend="gloo" if device == "cpu" else "nccl", seed=seed, timeout_s=timeout_s)
    return layout


def model_arch(model):
    """Architecture of ``model.path`` (an HF folder) with ``model.override_config`` applied; ``model`` is
    ``actor_rollout_ref.model`` or ``critic.model``."""
    from ttrl_megatron.megatron.arch import ModelArchConfig

    return ModelArchConfig.from_hf(model.path, **dict(model.override_config))


def _policy_model(arch, path: str, dtype: torch.dtype, perf=None):
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    model = build_gpt_model(arch, params_dtype=dtype, perf=perf)
    load_hf_weights(model, path)
    return model


def _optim(optim_cfg, use_distributed_optimizer: bool, total_steps: int, prefix: str):
    from ttrl_megatron.megatron.optimizer import OptimConfig

    cfg = OptimConfig.from_config(optim_cfg, use_distributed_optimizer, prefix)
    if cfg.total_training_steps <= 0:
        cfg.total_training_steps = total_steps
    return cfg


def build_actor(actor: ActorConfig, rollout: RolloutConfig, model: ModelConfig, arch, rows_per_prompt: int,
                total_steps: int, seed: int):
    """The trainable policy: GPTModel from the HF weights at model.path + optimizer and lr schedule.

    Settings come from the engine's own adapters (``*.from_config``: one mapping from the config sections, with the
    knob rejection); the trainer only fixes what it owns: the shuffle seed (``trainer.seed``) and the schedule
    length when ``optim.total_training_steps`` is unset.
    """
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import engine_perf

    prefix = "actor_rollout_ref.actor"
    engine_cfg = dataclasses.replace(ActorEngineConfig.from_config(actor, rows_per_prompt, prefix), seed=seed)
    perf = engine_perf(actor.megatron, model.enable_gradient_checkpointing)
    chunk = _policy_model(arch, model.path, DTYPES[actor.megatron.dtype], perf)
    log_prob = LogProbConfig.from_config(rollout, rollout.temperature, "actor_rollout_ref.rollout",
                                         model.logprob_chunk_size)
    return MegatronActor([chunk], log_prob, engine_cfg, _optim(actor.optim, actor.megatron.use_distributed_optimizer,
                                                               total_steps, f"{prefix}.optim"),
                         gradient_checkpointing=model.enable_gradient_checkpointing,
                         packed=model.use_remove_padding, perf=perf)


def build_reference(ref: RefConfig, model: ModelConfig, arch, dtype: str, temperature: float, megatron=None):
    """The frozen reference policy (same initial weights as the actor); ``megatron`` = ``actor.megatron`` (the
    fusions every model of the process shares; None = all off)."""
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import engine_perf, reject_unsupported

    reject_unsupported(ref.megatron, "actor_rollout_ref.ref.megatron", trainable=False)
    perf = engine_perf(megatron, False) if megatron is not None else None
    chunk = _policy_model(arch, model.path, DTYPES[dtype], perf)
    log_prob = LogProbConfig.from_config(ref, temperature, "actor_rollout_ref.ref", model.logprob_chunk_size)
    return MegatronActor([chunk], log_prob, param_offload=ref.megatron.param_offload, packed=model.use_remove_padding,
                         perf=perf)


def build_critic(critic: CriticConfig, dtype: str, rows_per_prompt: int, total_steps: int, seed: int, megatron=None):
    """The value model: the policy trunk from critic.model.path + a zero-initialised value head; ``megatron`` =
    ``actor.megatron`` (fusions, overlap; None = all off)."""
    from ttrl_megatron.megatron.build import engine_perf, load_critic_weights
    from ttrl_megatron.megatron.critic import CriticEngineConfig, MegatronCritic
    from ttrl_megatron.megatron.model import build_gpt_model

    arch = model_arch(critic.model)
    perf = engine_perf(megatron, critic.model.enable_gradient_checkpointing) if megatron is not None else None
    chunk = build_gpt_model(arch, value_head=True, params_dtype=DTYPES[dtype], perf=perf)
    load_critic_weights(chunk, critic.model.path)
    engine_cfg = dataclasses.replace(CriticEngineConfig.from_config(critic, rows_per_prompt, "critic"), seed=seed)
    return MegatronCritic([chunk], engine_cfg, _optim(critic.optim, critic.megatron.use_distributed_optimizer,
                                                      total_steps, "critic.optim"),
                          gradient_checkpointing=critic.model.enable_gradient_checkpointing,
                          packed=critic.model.use_remove_padding, perf=perf)


def build_rollout_engine(rollout: RolloutConfig, model: ModelConfig, rank: int, run_dir: str):
    """This rank's vLLM engine. Inside the torchrun world it uses vLLM's external_launcher executor: the engine owns
    this rank's device, and with rollout TP > 1 the group of ``tensor_model_parallel_size`` consecutive ranks holds
    one sharded engine. Every rank must call this at the same point (vLLM builds its groups collectively); the ranks
    of a TP group get the same engine seed."""
    from ttrl_megatron.rollout.config import VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    on_gpu = torch.cuda.is_available()
    group = rank // rollout.tensor_model_parallel_size
    cfg = VLLMEngineConfig(
        model_path=model.path, dtype=rollout.dtype, max_model_len=rollout.max_model_len,
        max_num_batched_tokens=rollout.max_num_batched_tokens, max_num_seqs=rollout.max_num_seqs,
        gpu_memory_utilization=rollout.gpu_memory_utilization, kv_cache_gib=max(1, math.ceil(rollout.kv_cache_gib)),
        enforce_eager=rollout.enforce_eager if rollout.enforce_eager is not None else not on_gpu,
        cudagraph_capture_sizes=rollout.cudagraph_capture_sizes,
        seed=derive_seed(rollout.seed, group) % 2**31,  # vLLM: < 2**32
        tensor_parallel_size=rollout.tensor_model_parallel_size, sleep_level=rollout.sleep_level,
        enable_sleep_mode=rollout.free_cache_engine and on_gpu, update_bucket_mib=rollout.sync.bucket_size_mb,
        run_dir=str(Path(run_dir) / "vllm" / f"rank{rank}"))
    return VLLMRolloutEngine(cfg)


def build_weight_sync(actor, engine, arch, sync: SyncConfig, max_model_len: int):
    """Actor -> engine weight push with the post-push log-prob parity check (bridge/sync.py) on the engine's own
    samples: 4 seeded prompts of up to 8 tokens, each continued by up to 16 sampled tokens (fewer when the engine's
    context is shorter)."""
    from ttrl_megatron.bridge.sync import SyncCheckConfig, WeightSync

    prompt_len = max(1, min(8, (max_model_len - 1) // 3))
    response_len = max(1, min(16, max_model_len - 1 - prompt_len))
    check = SyncCheckConfig(freq=sync.check_freq, max_mult_prob_error=sync.logprob_diff_threshold,
                            on_failure=sync.on_mismatch, prompt_len=prompt_len, response_len=response_len)
    return WeightSync(actor.model, engine, arch, bucket_bytes=sync.bucket_size_mb << 20, check=check, actor=actor)


def build_colocation(engine, weight_sync, actor, actor_megatron, critic=None, critic_megatron=None):
    """The rollout-side object that sleeps/wakes the engine around the step (rollout/colocate.py), with the trained
    roles' ``{param,grad,optimizer}_offload`` (megatron/offload.py) around generation."""
    from ttrl_megatron.megatron.offload import Offloaders, RoleOffloader
    from ttrl_megatron.rollout.colocate import ColocatedRollout

    roles = [("actor", actor, actor_megatron)] + ([("critic", critic, critic_megatron)] if critic is not None else [])
    offloaders = Offloaders(RoleOffloader(role.engine, params=meg.param_offload, grads=meg.grad_offload,
                                          optimizer=meg.optimizer_offload, name=name) for name, role, meg in roles)
    return ColocatedRollout(engine, weight_sync, offloaders if offloaders else None)


def build_loaders(data: DataConfig, tokenizer):
    """(train loader, val loader or None)."""
    from ttrl_megatron.data import PromptDataset, build_train_loader, build_val_loader

    train = build_train_loader(PromptDataset(data.train_files, tokenizer, data), data)
    val = build_val_loader(PromptDataset(data.val_files, tokenizer, data), data) if data.val_files else None
    return train, val


GRADER_ENV = "TTRL_GRADER"  # "ray": grade with Ray tasks (set on its workers by `ttrl_megatron.ray_main --grader ray`)


def build_grader(ttrl):
    """Rank 0's answer grader from the ``ttrl`` section: the local ``GradingPool`` (killable worker processes), or,
    when this process runs under the Ray launcher with ``TTRL_GRADER=ray``, a ``RayGrader`` that spreads the same
    grading over the cluster's CPUs (identical verdicts; launch/ray_grader.py)."""
    choice = os.environ.get(GRADER_ENV, "local")
    if choice == "ray":
        from ttrl_megatron.launch.ray_grader import RayGrader

        return RayGrader(timeout_s=ttrl.grade_timeout_s)
    if choice != "local":
        raise ValueError(f"{GRADER_ENV}={choice!r}: use 'local' (process pool) or 'ray' (Ray tasks)")
    from ttrl_megatron.ttrl import GradingPool

    return GradingPool(ttrl.grader_workers, ttrl.grade_timeout_s)


def resolve_initial_policy(cfg, run_dir: str) -> str:
    """HF folder for the initial policy, materialized once when `model.path` holds a foreign checkpoint.

    vLLM, the tokenizer and the sharded HF weight loader all read an HF folder, so a NeMo-2 / Megatron-Bridge /
    Megatron-LM / ttrl-megatron checkpoint (`actor_rollout_ref.model.load_format`, `auto` detects it) is exported
    once into `<run_dir>/initial_policy_hf` (rank 0 writes, every rank joins the collective export; a finished
    folder is reused on restart) and `model.path` — and `data.tokenizer` / `critic.model.path` where they inherited
    it — are pointed there. An HF folder is used as it is. Returns the HF folder.
    """
    from ttrl_megatron.megatron.foreign.hf_view import materialize_hf

    model = cfg.actor_rollout_ref.model
    src = model.path
    hf_dir = materialize_hf(src, model.load_format, os.path.join(run_dir, "initial_policy_hf"),
                            DTYPES[cfg.actor_rollout_ref.actor.megatron.dtype])
    if hf_dir != src:
        model.path = hf_dir
        if cfg.data.tokenizer == src:
            cfg.data.tokenizer = hf_dir
        if cfg.critic.model.path == src:
            cfg.critic.model.path = hf_dir
    return hf_dir
