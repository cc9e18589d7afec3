"""`validate(cfg, world_size)`: the ONE cross-field check of the root config. Stdlib only (registries imported lazily).

It collects every problem and raises a single ConfigError listing them; each line names the field(s) by their override
path and says what to change. Run it once, after composing and before building anything; the config is read-only after.
"""

import os

from . import names as N
from .errors import ConfigError
from .perf import StackFacts, resolve_perf
from .sections import TTRLTrainerConfig
from .validate_runtime import check_memory, check_reliability

ARR = "actor_rollout_ref"


def validate(cfg: TTRLTrainerConfig, world_size: int | None = None, *, check_paths: bool = True) -> None:
    """Raise ConfigError if `cfg` cannot run on `world_size` processes.

    world_size: processes actually launched (torchrun's WORLD_SIZE); None = the planned trainer.nnodes x n_gpus_per_node.
    check_paths: also require that data files, model/tokenizer dirs and the custom reward file exist.
    """
    planned = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    world = planned if world_size is None else world_size
    problems: list[str] = _check_algorithm_plugins(cfg)
    problems += _check_names(cfg)
    problems += _check_ranges(cfg)
    problems += _check_parallel(cfg, world, planned)
    if not any(p.startswith(f"{ARR}.actor.megatron") for p in problems):
        problems += _check_batch_sizes(cfg, world)
    problems += _check_ttrl_and_rewards(cfg)
    problems += _check_algorithm(cfg)
    problems += _check_filtering_and_shaping(cfg)
    problems += _check_compat_and_device(cfg)
    problems += _check_perf(cfg)
    problems += check_reliability(cfg)
    if check_paths:
        problems += _check_paths(cfg)
    if not problems:
        problems += check_memory(cfg, world)
    if problems:
        raise ConfigError(problems)


def _one_of(value, valid, field: str) -> list[str]:
    if value in valid:
        return []
    return [f"{field}={value!r} is not a valid name; use one of {', '.join(map(str, valid))}"]


def _check_algorithm_plugins(cfg: TTRLTrainerConfig) -> list[str]:
    """Import actor_rollout_ref.model.external_lib (the user's estimators and losses register on import), then check
    that the selected estimator and policy loss accept the calls verl's trainer and actor make."""
    from ttrl_megatron.algorithms import check_adv_estimator_call, check_policy_loss_call, import_external_libs

    try:
        import_external_libs(cfg.actor_rollout_ref.model.external_lib)
    except ImportError as exc:
        return [str(exc)]
    p = []
    for check, name, valid in ((check_adv_estimator_call, cfg.algorithm.adv_estimator, N.adv_estimator_names()),
                               (check_policy_loss_call, cfg.actor_rollout_ref.actor.policy_loss.loss_mode,
                                N.policy_loss_names())):
        if name in valid:  # unknown names are reported by _check_names
            try:
                check(name)
            except ValueError as exc:
                p.append(str(exc))
    return p


def _check_names(cfg: TTRLTrainerConfig) -> list[str]:
    arr, actor, algo = cfg.actor_rollout_ref, cfg.actor_rollout_ref.actor, cfg.algorithm
    p = _one_of(algo.adv_estimator, N.adv_estimator_names(), "algorithm.adv_estimator")
    p += _one_of(actor.policy_loss.loss_mode, N.policy_loss_names(), f"{ARR}.actor.policy_loss.loss_mode")
    p += _one_of(actor.loss_agg_mode, N.LOSS_AGG_MODES, f"{ARR}.actor.loss_agg_mode")
    p += _one_of(cfg.critic.loss_agg_mode, N.LOSS_AGG_MODES, "critic.loss_agg_mode")
    p += _one_of(actor.kl_loss_type, N.KL_ESTIMATORS, f"{ARR}.actor.kl_loss_type")
    p += _one_of(algo.kl_penalty, N.KL_ESTIMATORS, "algorithm.kl_penalty")
    p += _one_of(algo.kl_ctrl.type, N.KL_CTRL_TYPES, "algorithm.kl_ctrl.type")
    p += _one_of(actor.strategy, N.STRATEGIES, f"{ARR}.actor.strategy")
    p += _one_of(arr.model.load_format, N.LOAD_FORMATS, f"{ARR}.model.load_format")
    for sec, optim in ((f"{ARR}.actor", actor.optim), ("critic", cfg.critic.optim)):
        p += _one_of(optim.optimizer, N.OPTIMIZERS, f"{sec}.optim.optimizer")
        p += _one_of(optim.warmup_style, N.WARMUP_STYLES, f"{sec}.optim.warmup_style")
    p += _one_of(actor.megatron.dtype, N.DTYPES, f"{ARR}.actor.megatron.dtype")
    p += _one_of(arr.rollout.dtype, N.DTYPES, f"{ARR}.rollout.dtype")
    p += _one_of(arr.rollout.name, N.ROLLOUT_ENGINES, f"{ARR}.rollout.name")
    p += _one_of(arr.rollout.sync.on_mismatch, N.ON_MISMATCH, f"{ARR}.rollout.sync.on_mismatch")
    p += _one_of(cfg.reward_model.reward_manager, N.REWARD_MANAGERS, "reward_model.reward_manager")
    p += _one_of(cfg.ttrl.sample_selection, N.SAMPLE_SELECTIONS, "ttrl.sample_selection")
    p += _one_of(cfg.ttrl.answer_extraction, N.ANSWER_EXTRACTIONS, "ttrl.answer_extraction")
    p += _one_of(cfg.trainer.device, N.DEVICES, "trainer.device")
    p += _one_of(cfg.trainer.resume_mode, N.RESUME_MODES, "trainer.resume_mode")
    p += _one_of(cfg.data.truncation, N.TRUNCATIONS, "data.truncation")
    p += _one_of(cfg.data.prompt_template, N.PROMPT_TEMPLATES, "data.prompt_template")
    for i, name in enumerate(cfg.trainer.logger):
        p += _one_of(name, N.LOGGERS, f"trainer.logger[{i}]")
    for sec, ckpt in ((f"{ARR}.actor", actor.checkpoint), ("critic", cfg.critic.checkpoint)):
        for what in ("save_contents", "load_contents"):
            for item in getattr(ckpt, what):
                p += _one_of(item, N.CHECKPOINT_CONTENTS, f"{sec}.checkpoint.{what}")
    return p


def _positive(cfg: TTRLTrainerConfig) -> dict[str, object]:
    arr = cfg.actor_rollout_ref
    return {
        "data.train_batch_size": cfg.data.train_batch_size, "data.max_prompt_length": cfg.data.max_prompt_length,
        "data.max_response_length": cfg.data.max_response_length, f"{ARR}.rollout.n": arr.rollout.n,
        f"{ARR}.rollout.val_kwargs.n": arr.rollout.val_kwargs.n, f"{ARR}.actor.ppo_epochs": arr.actor.ppo_epochs,
        f"{ARR}.actor.ppo_mini_batch_size": arr.actor.ppo_mini_batch_size, "trainer.nnodes": cfg.trainer.nnodes,
        "trainer.n_gpus_per_node": cfg.trainer.n_gpus_per_node, "trainer.total_epochs": cfg.trainer.total_epochs,
        "ttrl.n_votes_per_prompt": cfg.ttrl.n_votes_per_prompt, "ttrl.grader_workers": cfg.ttrl.grader_workers,
        "ttrl.n_samples_per_prompt": cfg.ttrl.n_samples_per_prompt, "ttrl.grade_timeout_s": cfg.ttrl.grade_timeout_s,
        f"{ARR}.rollout.kv_cache_gib": arr.rollout.kv_cache_gib,
        f"{ARR}.rollout.sync.bucket_size_mb": arr.rollout.sync.bucket_size_mb,
        f"{ARR}.actor.optim.lr": arr.actor.optim.lr,
    }


def _check_ranges(cfg: TTRLTrainerConfig) -> list[str]:
    arr, actor, p = cfg.actor_rollout_ref, cfg.actor_rollout_ref.actor, []
    for field, value in _positive(cfg).items():
        if value is None or value <= 0:
            p.append(f"{field}={value} must be > 0")
    for field, value in ((f"{ARR}.rollout.top_p", arr.rollout.top_p), (f"{ARR}.rollout.val_kwargs.top_p",
                         arr.rollout.val_kwargs.top_p), (f"{ARR}.rollout.gpu_memory_utilization",
                         arr.rollout.gpu_memory_utilization)):
        if not 0.0 < value <= 1.0:
            p.append(f"{field}={value} must be in (0, 1]")
    for sec, optim in ((f"{ARR}.actor", actor.optim), ("critic", cfg.critic.optim)):
        for name in ("lr_warmup_steps_ratio", "min_lr_ratio"):
            if not 0.0 <= getattr(optim, name) <= 1.0:
                p.append(f"{sec}.optim.{name}={getattr(optim, name)} must be in [0, 1]")
        if len(optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in optim.betas):
            p.append(f"{sec}.optim.betas={optim.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    for field, value in ((f"{ARR}.rollout.temperature", arr.rollout.temperature),
                         (f"{ARR}.rollout.val_kwargs.temperature", arr.rollout.val_kwargs.temperature),
                         (f"{ARR}.actor.entropy_coeff", actor.entropy_coeff), (f"{ARR}.actor.kl_loss_coef",
                         actor.kl_loss_coef), ("algorithm.kl_ctrl.kl_coef", cfg.algorithm.kl_ctrl.kl_coef)):
        if value < 0:
            p.append(f"{field}={value} must be >= 0")
    if actor.clip_ratio_c <= 1.0:
        p.append(f"{ARR}.actor.clip_ratio_c={actor.clip_ratio_c} must be > 1 (dual-clip bound; verl default 3.0)")
    return p


def _check_parallel(cfg: TTRLTrainerConfig, world: int, planned: int) -> list[str]:
    meg, arr, p = cfg.actor_rollout_ref.actor.megatron, cfg.actor_rollout_ref, []
    tp, pp, cp = meg.tensor_model_parallel_size, meg.pipeline_model_parallel_size, meg.context_parallel_size
    if world != planned:
        p.append(f"trainer.nnodes x trainer.n_gpus_per_node = {cfg.trainer.nnodes} x {cfg.trainer.n_gpus_per_node} = "
                 f"{planned} but {world} processes were launched; make them agree")
    if min(tp, pp, cp) < 1 or world % (tp * pp * cp):
        p.append(f"{ARR}.actor.megatron: world size {world} is not divisible by tensor_model_parallel_size x "
                 f"pipeline_model_parallel_size x context_parallel_size = {tp} x {pp} x {cp}; change them or the "
                 f"number of processes")
    if cp != 1:
        p.append(f"{ARR}.actor.megatron.context_parallel_size={cp}: only 1 is supported")
    for role in (f"{ARR}.ref", "critic"):
        rm = arr.ref.megatron if role != "critic" else cfg.critic.megatron
        for name, want in (("tensor_model_parallel_size", tp), ("pipeline_model_parallel_size", pp)):
            if getattr(rm, name) != want:
                p.append(f"{role}.megatron.{name}={getattr(rm, name)} differs from {ARR}.actor.megatron.{name}={want}: "
                         f"megatron-core holds one parallel layout per process; leave it unset (null) or make it equal")
    rtp = arr.rollout.tensor_model_parallel_size
    if rtp < 1 or world % rtp:
        p.append(f"{ARR}.rollout.tensor_model_parallel_size={rtp} must divide the world size {world}")
    elif cfg.trainer.device != "cpu" and cfg.trainer.n_gpus_per_node % rtp:
        p.append(f"{ARR}.rollout.tensor_model_parallel_size={rtp} must divide trainer.n_gpus_per_node="
                 f"{cfg.trainer.n_gpus_per_node}: a rollout TP group is consecutive ranks on one node")
    if arr.rollout.sleep_level not in (1, 2):
        p.append(f"{ARR}.rollout.sleep_level={arr.rollout.sleep_level} must be 1 or 2")
    if arr.rollout.cudagraph_capture_sizes is not None and (
            not arr.rollout.cudagraph_capture_sizes or min(arr.rollout.cudagraph_capture_sizes) < 1):
        p.append(f"{ARR}.rollout.cudagraph_capture_sizes={arr.rollout.cudagraph_capture_sizes} must be null or a "
                 "non-empty list of batch sizes >= 1")
    return p


def _check_perf(cfg: TTRLTrainerConfig) -> list[str]:
    """Fusions / overlap / SP / recompute the stack cannot run (config/perf.py), and the log-prob chunk size."""
    arr = cfg.actor_rollout_ref
    meg = arr.actor.megatron
    facts = StackFacts.probe(cfg.trainer.device)
    _, p = resolve_perf(meg, meg.tensor_model_parallel_size, arr.model.enable_gradient_checkpointing, facts)
    if not isinstance(arr.model.logprob_chunk_size, int) or arr.model.logprob_chunk_size < 1:
        p.append(f"{ARR}.model.logprob_chunk_size={arr.model.logprob_chunk_size!r} must be a positive int (response "
                 f"tokens per chunk of the log-prob computation)")
    return p


def _check_role_batches(role: str, train_bs: int, n: int, dp: int, mini: int, micro, dynamic: bool) -> list[str]:
    """verl's batch arithmetic: prompts x n rows per step, mini-batches of `mini` prompts split over DP, micro rows."""
    p = []
    if mini > train_bs or train_bs % mini:
        p.append(f"data.train_batch_size={train_bs} must be a multiple of {role}.ppo_mini_batch_size={mini} (prompts "
                 f"per optimizer step); change one of them")
    elif (mini * n) % dp:
        p.append(f"{role}.ppo_mini_batch_size x {ARR}.rollout.n = {mini} x {n} = {mini * n} rows must be divisible "
                 f"by the data-parallel size {dp}; change ppo_mini_batch_size or the parallel layout")
    elif not dynamic and micro is None:
        p.append(f"{role}.ppo_micro_batch_size_per_gpu is not set: set the rows per forward/backward on each rank, "
                 f"or use_dynamic_bsz=True")
    elif not dynamic and (micro < 1 or (mini * n // dp) % micro):
        p.append(f"{role}.ppo_micro_batch_size_per_gpu={micro} must divide the per-rank mini-batch "
                 f"ppo_mini_batch_size x rollout.n / DP = {mini} x {n} / {dp} = {mini * n // dp} rows")
    return p


def _check_batch_sizes(cfg: TTRLTrainerConfig, world: int) -> list[str]:
    arr, data = cfg.actor_rollout_ref, cfg.data
    actor, meg = arr.actor, arr.actor.megatron
    dp = max(world // (meg.tensor_model_parallel_size * meg.pipeline_model_parallel_size * meg.context_parallel_size), 1)
    n, p = arr.rollout.n, []
    if (data.train_batch_size * n) % dp:
        p.append(f"data.train_batch_size x {ARR}.rollout.n = {data.train_batch_size} x {n} rows must be "
                 f"divisible by the data-parallel size {dp}")
    p += _check_role_batches(f"{ARR}.actor", data.train_batch_size, n, dp, actor.ppo_mini_batch_size,
                             actor.ppo_micro_batch_size_per_gpu, actor.use_dynamic_bsz)
    if N.need_critic(cfg):
        c = cfg.critic
        p += _check_role_batches("critic", data.train_batch_size, n, dp, c.ppo_mini_batch_size,
                                 c.ppo_micro_batch_size_per_gpu, c.use_dynamic_bsz)
    seq = data.max_prompt_length + data.max_response_length
    for field, dynamic, max_tok in (
            (f"{ARR}.actor.ppo_max_token_len_per_gpu", actor.use_dynamic_bsz, actor.ppo_max_token_len_per_gpu),
            (f"{ARR}.ref.log_prob_max_token_len_per_gpu", arr.ref.log_prob_use_dynamic_bsz,
             arr.ref.log_prob_max_token_len_per_gpu),
            (f"{ARR}.rollout.log_prob_max_token_len_per_gpu", arr.rollout.log_prob_use_dynamic_bsz,
             arr.rollout.log_prob_max_token_len_per_gpu)):
        if dynamic and max_tok < seq:
            p.append(f"{field}={max_tok} is below one full sequence (max_prompt_length + max_response_length = {seq})")
    for field, micro in ((f"{ARR}.ref.log_prob_micro_batch_size_per_gpu", arr.ref.log_prob_micro_batch_size_per_gpu),
                         (f"{ARR}.rollout.log_prob_micro_batch_size_per_gpu",
                          arr.rollout.log_prob_micro_batch_size_per_gpu)):
        if micro is not None and micro < 1:
            p.append(f"{field}={micro} must be >= 1")
    if arr.rollout.max_model_len < seq:
        p.append(f"data.max_prompt_length + data.max_response_length = {data.max_prompt_length} + "
                 f"{data.max_response_length} = {seq} exceeds {ARR}.rollout.max_model_len={arr.rollout.max_model_len};"
                 f" raise max_model_len or shorten the lengths")
    return p


def _check_ttrl_and_rewards(cfg: TTRLTrainerConfig) -> list[str]:
    t, n, rm, p = cfg.ttrl, cfg.actor_rollout_ref.rollout.n, cfg.reward_model, []
    if t.enable and t.n_samples_per_prompt > t.n_votes_per_prompt:
        p.append(f"ttrl.n_samples_per_prompt={t.n_samples_per_prompt} exceeds ttrl.n_votes_per_prompt="
                 f"{t.n_votes_per_prompt}: training keeps a subset of the voting rollouts; lower it or raise the votes")
    if t.enable and n != t.n_samples_per_prompt:
        p.append(f"{ARR}.rollout.n={n} must equal ttrl.n_samples_per_prompt={t.n_samples_per_prompt} when "
                 f"ttrl.enable (rollout.n counts the rows per prompt that are trained on); set them equal")
    if rm.reward_manager == "majority" and not t.enable:
        p.append("reward_model.reward_manager=majority needs ttrl.enable=True (the label is the majority vote); "
                 "use reward_manager=rule to grade against ground truth")
    if t.enable and rm.reward_manager == "rule":
        p.append("reward_model.reward_manager=rule grades against ground truth, which TTRL does not use: with "
                 "ttrl.enable=True use majority (or custom)")
    if rm.reward_manager == "custom" and not cfg.custom_reward_function.path:
        p.append("reward_model.reward_manager=custom needs custom_reward_function.path (and .name)")
    if rm.enable:
        p.append("reward_model.enable=True: neural reward models are not supported; rewards come from the grader")
    return p


def _check_algorithm(cfg: TTRLTrainerConfig) -> list[str]:
    algo, actor, rollout = cfg.algorithm, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    p = []
    if algo.adv_estimator == "gae" and not cfg.critic.enable:
        p.append("algorithm.adv_estimator=gae needs a critic but critic.enable=False; enable it or pick a critic-free "
                 "estimator (grpo, grpo_nsr, rloo, ...)")
    if algo.adv_estimator in N.GROUP_ESTIMATORS and rollout.n < 2:
        p.append(f"algorithm.adv_estimator={algo.adv_estimator} compares the rollouts of a prompt and needs "
                 f"{ARR}.rollout.n >= 2 (it is {rollout.n})")
    if algo.adv_estimator == "remax" and (not rollout.do_sample or rollout.temperature == 0):
        p.append(f"algorithm.adv_estimator=remax subtracts the reward of a greedy rollout: the training rollouts must "
                 f"be sampled ({ARR}.rollout.do_sample=True, temperature > 0) or every advantage is 0")
    if algo.adv_estimator == "remax":
        p.append("algorithm.adv_estimator=remax needs reward_baselines (the reward of a greedy rollout of each prompt), "
                 "which this trainer does not generate; use grpo, rloo or another estimator")
    if algo.adv_estimator in N.SUM_PI_SQUARED_ESTIMATORS and not actor.calculate_sum_pi_squared:
        p.append(f"algorithm.adv_estimator={algo.adv_estimator} needs sum_pi_squared per token from the actor: set "
                 f"{ARR}.actor.calculate_sum_pi_squared=True")
    if actor.calculate_sum_pi_squared:
        p.append(f"{ARR}.actor.calculate_sum_pi_squared=True: the Megatron actor does not compute sum_v pi_v^2 in its "
                 f"log-prob pass yet, so optimal_token_baseline / tir_optimal_token_baseline cannot be trained here")
    if not (actor.tau_pos > 0 and actor.tau_neg > 0):
        p.append(f"{ARR}.actor.tau_pos={actor.tau_pos} and tau_neg={actor.tau_neg} (sapo gate temperatures) must be > 0")
    if algo.kl_ctrl.type == "adaptive" and (algo.kl_ctrl.horizon <= 0 or algo.kl_ctrl.target_kl <= 0):
        p.append("algorithm.kl_ctrl.horizon and target_kl must be > 0 for kl_ctrl.type=adaptive")
    for name, nsr in (("grpo_nsr", algo.grpo_nsr), ("psr_nsr", algo.psr_nsr)):
        if nsr.positive_weight < 0 or nsr.negative_weight < 0:
            p.append(f"algorithm.{name}.positive_weight={nsr.positive_weight} and negative_weight="
                     f"{nsr.negative_weight} must both be >= 0")
    for sec, grad_clip, optim in ((f"{ARR}.actor", actor.grad_clip, actor.optim),
                                  ("critic", cfg.critic.grad_clip, cfg.critic.optim)):
        if grad_clip is not None and grad_clip != optim.clip_grad:
            p.append(f"{sec}.grad_clip={grad_clip} (verl FSDP name) conflicts with {sec}.optim.clip_grad="
                     f"{optim.clip_grad}, which the Megatron optimizer uses; set only {sec}.optim.clip_grad")
    return p


def _check_filtering_and_shaping(cfg: TTRLTrainerConfig) -> list[str]:
    """Dynamic sampling, TTRL consensus filtering, rollout correction and overlong shaping (trainer/sampling.py)."""
    fg, rc, ob, t, p = (cfg.algorithm.filter_groups, cfg.algorithm.rollout_correction,
                        cfg.reward_model.overlong_buffer, cfg.ttrl, [])
    if fg.enable and not fg.metric:
        p.append("algorithm.filter_groups.enable=True needs algorithm.filter_groups.metric: the per-rollout value whose "
                 "spread marks a prompt with signal (acc | score | seq_reward | seq_final_reward | a reward dict key)")
    if fg.enable and fg.metric == "seq_final_reward" and cfg.algorithm.use_kl_in_reward:
        p.append("algorithm.filter_groups.metric=seq_final_reward with algorithm.use_kl_in_reward=True is not "
                 "supported (the KL penalty is computed after filtering); use seq_reward or turn the KL reward off")
    if fg.max_inflight_gen_batches != 1:
        p.append(f"algorithm.filter_groups.max_inflight_gen_batches={fg.max_inflight_gen_batches}: only 1 is "
                 f"supported (prompt batches are generated one after another)")
    p += _one_of(rc.rollout_is, (None, "token", "sequence"), "algorithm.rollout_correction.rollout_is")
    p += _one_of(rc.loss_type, ("ppo_clip", "reinforce"), "algorithm.rollout_correction.loss_type")
    if rc.bypass_mode:
        p.append("algorithm.rollout_correction.bypass_mode=True is not supported: the actor always recomputes the old "
                 "log-probs (verl's decoupled mode); set it False")
    if rc.rollout_is is not None or rc.rollout_rs is not None:
        from ttrl_megatron.algorithms.rollout_corr import parse_is_threshold, parse_rs

        checks = []
        if rc.rollout_is is not None:
            checks.append(lambda: parse_is_threshold(rc.rollout_is_threshold))
        if rc.rollout_rs is not None:
            checks.append(lambda: parse_rs(rc.rollout_rs, rc.rollout_rs_threshold))
        for check in checks:
            try:
                check()
            except ValueError as exc:  # the message names the field
                p.append(str(exc))
    if ob.enable and not 1 <= ob.len <= cfg.data.max_response_length:
        p.append(f"reward_model.overlong_buffer.len={ob.len} must be in [1, data.max_response_length="
                 f"{cfg.data.max_response_length}] when reward_model.overlong_buffer.enable=True")
    if ob.penalty_factor < 0:
        p.append(f"reward_model.overlong_buffer.penalty_factor={ob.penalty_factor} must be >= 0")
    if not 0.0 <= t.min_majority_ratio <= 1.0:
        p.append(f"ttrl.min_majority_ratio={t.min_majority_ratio} must be in [0, 1] (0 = keep every prompt)")
    if (t.min_majority_ratio > 0 or t.skip_no_answer) and not t.enable:
        p.append("ttrl.min_majority_ratio / ttrl.skip_no_answer filter prompts by their majority vote and need "
                 "ttrl.enable=True")
    return p


def _check_compat_and_device(cfg: TTRLTrainerConfig) -> list[str]:
    arr, p = cfg.actor_rollout_ref, []
    for role, fsdp in ((f"{ARR}.actor", arr.actor.fsdp_config), (f"{ARR}.ref", arr.ref.fsdp_config)):
        if fsdp.offload_policy:
            p.append(f"{role}.fsdp_config.offload_policy=True has no Megatron meaning; use {role}.megatron.param_offload"
                     f" / optimizer_offload / grad_offload")
        if fsdp.forward_prefetch:
            p.append(f"{role}.fsdp_config.forward_prefetch=True has no Megatron meaning; remove it")
        if fsdp.fsdp_size != -1:
            p.append(f"{role}.fsdp_config.fsdp_size={fsdp.fsdp_size}: Megatron shards by TP x PP x DP; remove it and set "
                     f"{ARR}.actor.megatron.tensor_model_parallel_size / pipeline_model_parallel_size")
    if cfg.trainer.device == "cpu":
        for role, meg in ((f"{ARR}.actor", arr.actor.megatron), (f"{ARR}.ref", arr.ref.megatron),
                          ("critic", cfg.critic.megatron)):
            for name in ("param_offload", "optimizer_offload", "grad_offload"):
                if getattr(meg, name):
                    p.append(f"{role}.megatron.{name}=True (or its fsdp_config alias) moves GPU memory to host and means"
                             f" nothing with trainer.device=cpu; set it False")
        if arr.actor.megatron.dtype == "float16" or arr.rollout.dtype == "float16":
            p.append("float16 is not supported with trainer.device=cpu; use bfloat16 or float32")
    if cfg.trainer.resume_mode == "resume_path" and not cfg.trainer.resume_from_path:
        p.append("trainer.resume_mode=resume_path needs trainer.resume_from_path (a global_step_<k> directory)")
    return p


def _check_paths(cfg: TTRLTrainerConfig) -> list[str]:
    arr, p = cfg.actor_rollout_ref, []
    if not cfg.data.train_files:
        p.append("data.train_files is empty; give at least one parquet/jsonl file, e.g. data.train_files=[/x.parquet]")
    for key in ("train_files", "val_files"):
        for i, path in enumerate(getattr(cfg.data, key)):
            if not os.path.isfile(path):
                p.append(f"data.{key}[{i}]={path!r} does not exist")
    dirs = [(f"{ARR}.model.path", arr.model.path), ("data.tokenizer", cfg.data.tokenizer)]
    if N.need_critic(cfg):
        dirs.append(("critic.model.path", cfg.critic.model.path))
    if arr.actor.megatron.use_dist_checkpointing:
        dirs.append((f"{ARR}.actor.megatron.dist_checkpointing_path", arr.actor.megatron.dist_checkpointing_path))
    if cfg.trainer.resume_mode == "resume_path" and cfg.trainer.resume_from_path:
        dirs.append(("trainer.resume_from_path", cfg.trainer.resume_from_path))
    seen = set()
    for field, path in dirs:
        if path in seen:  # data.tokenizer and critic.model.path default to the actor's model path
            continue
        seen.add(path)
        if not path:
            p.append(f"{field} is not set; give a directory")
        elif not os.path.isdir(path):
            p.append(f"{field}={path!r} is not an existing directory")
    path = cfg.custom_reward_function.path
    if path and not os.path.isfile(path):
        p.append(f"custom_reward_function.path={path!r} does not exist")
    return p
