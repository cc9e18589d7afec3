"""The TTRL trainer: ``setup()`` builds the run's objects from the config, ``train_step()`` is one straight line of
named phases (ARCHITECTURE.md), ``fit()`` loops over steps with logging, validation and checkpoints.

Driver math placement (documented choice): every rank runs the same program. Rollouts are generated DP-style (each
rank's vLLM engine samples its slice of the prompts) and all-gathered, so every rank holds the identical batch
(but for the rollout log-probs, which stay on the rank that sampled them unless rollout correction needs them);
every rank votes and grades its share of the prompts and the results are all-gathered (labels.py); prompt filtering
(dynamic sampling, TTRL consensus: dynamic_sampling.py) and the cheap, deterministic tensor math (token-level scores,
KL in reward, rollout correction, advantages, metrics) then run on every rank on the same batch, and the Megatron
actor/critic take their DP shard of it inside ``compute_log_prob`` / ``update_policy`` (megatron/engine.py). Only
rank 0 logs and writes dumps; checkpoints are written by all ranks collectively.

Reliability (README "Running for days on Slurm"): the checkpoint and run directories are checked to be shared by all
ranks at start (shared_dirs.py); every phase runs under the hang watchdog's budget (watchdog.py); once per step the
ranks agree whether a preemption signal arrived, and if so the loop checkpoints and raises ``Preempted``
(preemption.py), which main.py turns into exit status 75 for the launcher to requeue.

Choices are made once in ``setup()`` by which objects exist (``self.ref``, ``self.critic``, ``self.kl_ctrl``,
``self.adv_metrics``, ``self.rollout_corr``, ``self.truncation_mask``; the batch collector's filter settings), never by
flags re-read inside the loop. The root config stops here: components receive their
own sections. No hydra/omegaconf (main.py), no vllm (rollout/vllm_engine.py) imports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from pathlib import Path

import torch.distributed as dist

from ttrl_megatron.algorithms import (apply_kl_penalty, check_adv_estimator_call, compute_advantage,
                                      compute_grpo_nsr_metrics, get_kl_controller, import_external_libs)
from ttrl_megatron.config import TTRLTrainerConfig, need_critic, need_reference_policy, save_resolved
from ttrl_megatron.data import load_tokenizer
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.rollout.base import SamplingConfig, derive_seed
from ttrl_megatron.ttrl import build_reward_manager

from . import builders as B
from .balance import balance_permutation, seqlen_metrics
from .checkpointing import CheckpointManager, latest_checkpoint
from .corrections import RolloutCorrection, TruncationMask, rollout_mismatch_metrics
from .dumps import generation_rows, write_jsonl
from .dynamic_sampling import FilterSettings, StepBatchCollector, real_rows, relabel_groups
from .generation import TRAIN, RolloutGroups, all_gather_objects, generate_batch, sampling_for
from .labels import RewardStep
from . import watchdog as W
from .metrics import ActorUpdateCost, PhaseTimer, actor_mfu_metrics, compute_data_metrics, throughput_metrics
from .preemption import Preempted, PreemptionHandler
from .shared_dirs import check_shared_dirs
from .tracking import Tracker, check_loggers
from .validation import Validator

log = logging.getLogger(__name__)


class TTRLTrainer:
    def __init__(self, cfg: TTRLTrainerConfig, preemption: PreemptionHandler | None = None):
        self.cfg = cfg
        self.global_step = 0
        # signals are installed by the caller (main.run: before setup, so a signal during setup is kept too)
        self.preemption = preemption if preemption is not None else PreemptionHandler([])
        self.watchdog: W.Watchdog | None = None
        self._saved_step = 0  # newest step with a committed checkpoint (resumed or saved by this run)

    # ------------------------------------------------------------------ setup
    def setup(self) -> "TTRLTrainer":
        cfg, tr, arr = self.cfg, self.cfg.trainer, self.cfg.actor_rollout_ref
        check_loggers(tr.logger)
        self.layout = B.init_parallel(arr.actor.megatron, tr.device, tr.seed, tr.collective_timeout_s)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.rollout_groups = RolloutGroups(self.rank, self.world, arr.rollout.tensor_model_parallel_size)
        self.watchdog = W.Watchdog.start(tr.watchdog, tr.run_dir)
        check_shared_dirs(_unique_dirs({"trainer.default_local_dir": tr.default_local_dir,
                                        "trainer.run_dir": tr.run_dir}))
        B.resolve_initial_policy(cfg, tr.run_dir)  # NeMo-2 / Megatron-Bridge / Megatron-LM / ours -> an HF folder
        self.tokenizer = load_tokenizer(cfg.data.tokenizer, arr.model.trust_remote_code)
        self.train_loader, val_loader = B.build_loaders(cfg.data, self.tokenizer)
        self.total_steps = tr.total_training_steps or tr.total_epochs * len(self.train_loader)
        ttrl = cfg.ttrl if cfg.ttrl.enable else None
        self.n_votes = ttrl.n_votes_per_prompt if ttrl else arr.rollout.n
        self.n_samples = ttrl.n_samples_per_prompt if ttrl else arr.rollout.n
        arch = B.model_arch(arr.model)
        self.actor = B.build_actor(arr.actor, arr.rollout, arr.model, arch, self.n_samples, self.total_steps, tr.seed)
        self.actor_cost = ActorUpdateCost.on_this_device(arch, arr.actor.ppo_epochs)  # None: no GPU peak, no MFU
        self.ref = (B.build_reference(arr.ref, arr.model, arch, arr.actor.megatron.dtype, arr.rollout.temperature,
                                      arr.actor.megatron) if need_reference_policy(cfg) else None)
        self.critic = (B.build_critic(cfg.critic, arr.actor.megatron.dtype, self.n_samples,
                                      self.total_steps, tr.seed, arr.actor.megatron) if need_critic(cfg) else None)
        self.engine = B.build_rollout_engine(arr.rollout, arr.model, self.rank, tr.run_dir)
        self.weight_sync = B.build_weight_sync(self.actor, self.engine, arch, arr.rollout.sync,
                                                arr.rollout.max_model_len)
        self.kl_ctrl = get_kl_controller(cfg.algorithm.kl_ctrl) if cfg.algorithm.use_kl_in_reward else None
        self.grader = B.build_grader(cfg.ttrl)  # every rank grades its share; local pool, or Ray tasks under ray_main
        self.rewards = RewardStep(ttrl=ttrl, n_votes=self.n_votes, n_samples=self.n_samples,
                                  manager=self._reward_manager(), grader=self.grader, seed=tr.seed, rank=self.rank,
                                  world=self.world, overlong=cfg.reward_model.overlong_buffer,
                                  max_response_length=cfg.data.max_response_length)
        self.collect = StepBatchCollector(FilterSettings.from_config(cfg, self.n_samples, self.critic is not None),
                                          generate=self.generate, reward=self.rewards,
                                          next_prompts=self.train_loader.next_batch)
        corr = cfg.algorithm.rollout_correction
        self.rollout_corr = RolloutCorrection(corr) if RolloutCorrection.wanted(corr) else None
        self.truncation_mask = TruncationMask() if arr.actor.mask_truncated_responses else None
        self._setup_advantage()
        rollout = arr.rollout
        self.sampling = SamplingConfig(temperature=rollout.temperature if rollout.do_sample else 0.0,
                                       top_p=rollout.top_p, top_k=rollout.top_k,
                                       max_tokens=cfg.data.max_response_length, logprobs=True,
                                       ignore_eos=rollout.ignore_eos)
        self.validator = Validator(val_loader, rollout.val_kwargs, engine=self.engine, tokenizer=self.tokenizer,
                                   grader=self.grader, seed=rollout.seed, rank=self.rank, groups=self.rollout_groups,
                                   response_length=cfg.data.max_response_length, extraction=cfg.ttrl.answer_extraction,
                                   dump_dir=tr.validation_data_dir) if val_loader is not None else None
        self.checkpoints = CheckpointManager(
            tr.default_local_dir, hf_source_dir=arr.model.path, max_actor_keep=tr.max_actor_ckpt_to_keep,
            max_critic_keep=tr.max_critic_ckpt_to_keep)
        self.colocate = B.build_colocation(self.engine, self.weight_sync, self.actor, arr.actor.megatron,
                                           self.critic, cfg.critic.megatron)
        self.checkpoints.sweep_debris()
        with W.phase("checkpoint"):
            self.global_step = self._saved_step = self._resume()
        with W.phase("update_weights"):
            self.colocate.refit()  # the engine must hold the actor's weights (resumed ones included)
        self.tracker = None
        if self.rank == 0:
            save_resolved(cfg, tr.run_dir)
            self.tracker = Tracker(tr.logger, tr.run_dir, project=tr.project_name, experiment=tr.experiment_name,
                                   total_steps=self.total_steps, start_step=self.global_step,
                                   config=dataclasses.asdict(cfg))
        return self

    def _reward_manager(self):
        cfg = self.cfg
        return build_reward_manager(cfg.reward_model.reward_manager, grader=self.grader,
                                    timeout_s=cfg.ttrl.grade_timeout_s, custom_path=cfg.custom_reward_function.path,
                                    custom_name=cfg.custom_reward_function.name, extraction=cfg.ttrl.answer_extraction)

    def _setup_advantage(self) -> None:
        """Import the user's estimators/losses (actor_rollout_ref.model.external_lib; every rank and Ray worker runs
        this) and check the chosen estimator takes verl's call; grpo_nsr also reports its metrics."""
        algo = self.cfg.algorithm
        import_external_libs(self.cfg.actor_rollout_ref.model.external_lib)
        check_adv_estimator_call(algo.adv_estimator)
        self.adv_metrics = (partial(compute_grpo_nsr_metrics, **dataclasses.asdict(algo.grpo_nsr))
                            if algo.adv_estimator == "grpo_nsr" else None)

    def _resume(self) -> int:
        tr = self.cfg.trainer
        if tr.resume_mode == "disable":
            return 0
        path = latest_checkpoint(tr.default_local_dir) if tr.resume_mode == "auto" else Path(tr.resume_from_path)
        if path is None:
            return 0
        extra = self.checkpoints.load(path, self.roles())
        self.train_loader.load_state_dict(extra["sampler"])
        if self.kl_ctrl is not None:
            self.kl_ctrl.load_state_dict(extra["kl_ctrl"])
        log.info("resumed from %s (step %d)", path, extra["step"])
        return int(extra["step"])

    def roles(self) -> dict:
        return {"actor": self.actor, **({"critic": self.critic} if self.critic is not None else {})}

    # ------------------------------------------------------------------ phases
    def generate(self, prompts: dict, step: int, gen_index: int = 0) -> DataProto:
        """Rollouts of a prompt batch; ``gen_index`` >= 1 = a further batch of the step (dynamic sampling): its own
        sampling seeds and group ids."""
        seed = self.cfg.actor_rollout_ref.rollout.seed
        sampling = sampling_for(self.sampling, seed, step, TRAIN, self.rollout_groups)
        if gen_index:
            sampling = dataclasses.replace(
                sampling, seed=derive_seed(seed, step, TRAIN, self.rollout_groups.group, gen_index))
        batch = generate_batch(self.engine, self.tokenizer, prompts, self.n_votes, sampling, step=step,
                               groups=self.rollout_groups, response_length=self.cfg.data.max_response_length,
                               logprobs_everywhere=self.rollout_corr is not None)  # else they stay where sampled
        if gen_index:
            relabel_groups(batch, step, gen_index, self.n_votes)
        return batch

    def balance(self, batch: DataProto) -> tuple[DataProto, dict]:
        """Reorder rows inside each actor mini-batch so DP ranks get equal token counts (trainer.balance_batch)."""
        lengths = batch.tensor("attention_mask").sum(dim=-1)
        mini = self.cfg.actor_rollout_ref.actor.ppo_mini_batch_size * self.n_samples
        perm = balance_permutation(lengths, self.layout.dp, mini) if self.cfg.trainer.balance_batch else None
        metrics = seqlen_metrics(lengths, self.layout.dp, perm, mini)
        return (batch[perm] if perm is not None else batch), metrics

    def shape_rewards(self, batch: DataProto) -> dict:
        """token_level_rewards = scores, minus beta * KL(old || ref) when algorithm.use_kl_in_reward."""
        t = batch.batch
        if self.kl_ctrl is None:
            t["token_level_rewards"] = t["token_level_scores"]
            return {}
        t["token_level_rewards"], metrics = apply_kl_penalty(t["token_level_scores"], t["old_log_probs"],
                                                             t["ref_log_prob"], t["response_mask"], self.kl_ctrl,
                                                             self.cfg.algorithm.kl_penalty)
        return metrics

    def advantages(self, batch: DataProto) -> dict:
        """advantages / returns into the batch, by verl's compute_advantage (it calls every estimator as verl does)."""
        algo = self.cfg.algorithm
        compute_advantage(batch, algo.adv_estimator, gamma=algo.gamma, lam=algo.lam,
                          num_repeat=self.cfg.actor_rollout_ref.rollout.n,
                          norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo, config=algo)
        if self.adv_metrics is None:
            return {}
        real = real_rows(batch).batch  # padding rows of a filtered batch are not trained rows
        return self.adv_metrics(real["response_mask"], real["token_level_scores"])

    # ------------------------------------------------------------------ the step
    def train_step(self, prompts: dict) -> dict:
        """One TTRL step starting from a collated prompt batch; returns its metrics (identical on every rank)."""
        step = self.global_step + 1
        timer = self.phase_timer(step)
        with timer("step"):
            # generate, vote, keep n_samples, token_level_scores; filters pull further prompt batches if enabled
            batch, metrics = self.collect(prompts, step, timer)
            with timer("gen"):
                self.colocate.after_generate()  # the engine sleeps; offloaded trainer state comes back
            if batch is not None:  # None: every generated prompt was filtered out, nothing to learn this step
                metrics.update(self.learn(batch, step, timer))
            with timer("update_weights"):  # also after an empty step: a level-2 sleep dropped the engine's weights
                metrics.update(self.colocate.refit())  # wake weights -> push -> wake KV cache (+ parity check)
        metrics.update(timer.metrics())
        if batch is not None:
            metrics.update(throughput_metrics(batch, timer.seconds["step"], self.world))
            metrics.update(actor_mfu_metrics(batch, timer.seconds.get("update_actor"), self.world, self.actor_cost))
        metrics.update({"training/global_step": float(step), "training/epoch": float(self.train_loader.epoch)})
        return metrics

    def learn(self, batch: DataProto, step: int, timer: PhaseTimer) -> dict:
        """The update phases on the step's training batch; returns their metrics."""
        batch, seqlen = self.balance(batch)
        with timer("old_log_prob"):
            batch.batch["old_log_probs"], _ = self.actor.compute_log_prob(batch)
        if self.ref is not None:
            with timer("ref"):
                batch.batch["ref_log_prob"], _ = self.ref.compute_log_prob(batch)
        if self.critic is not None:
            with timer("values"):
                batch.batch["values"] = self.critic.compute_values(batch)
        with timer("adv"):
            kl_metrics = self.shape_rewards(batch)
            corr_metrics = self.rollout_corr(batch) if self.rollout_corr is not None else {}
            adv_metrics = self.advantages(batch)
        critic_metrics = {}
        if self.critic is not None:
            with timer("update_critic"):
                critic_metrics = self.critic.update_critic(batch)
        with timer("update_actor"):
            actor_batch, mask_metrics = self.truncation_mask(batch) if self.truncation_mask is not None \
                else (batch, {})
            actor_metrics = self.actor.update_policy(actor_batch)
        real = real_rows(batch)  # without the padding rows of a filtered batch
        self._dump_rollouts(real, step)
        return {**seqlen, **kl_metrics, **corr_metrics, **adv_metrics, **critic_metrics, **actor_metrics,
                **mask_metrics,
                **rollout_mismatch_metrics(batch, self.rank, all_gather_objects),
                **compute_data_metrics(real, self.cfg.data.max_response_length)}

    def _dump_rollouts(self, batch: DataProto, step: int) -> None:
        out_dir = self.cfg.trainer.rollout_data_dir
        if not out_dir or self.rank != 0:
            return
        nt = batch.non_tensor_batch
        rms = list(nt["reward_model"])
        rows = generation_rows(step, list(nt["raw_prompt"]), list(nt["response_text"]), list(nt["pred"]),
                               [rm.get("majority_gt") for rm in rms],
                               [rm.get("original_gt", rm.get("ground_truth")) for rm in rms], list(nt["score"]),
                               extra={"gt_score": list(nt["gt_score"]), "uid": list(nt["uid"])})
        write_jsonl(out_dir, step, rows)

    # ------------------------------------------------------------------ the loop
    def log(self, metrics: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, step)

    def phase_timer(self, step: int) -> PhaseTimer:
        """Timer of step ``step``'s phases (``timing_s/*``); under the watchdog each phase also has its budget."""
        return self.watchdog.timer(step) if self.watchdog is not None else PhaseTimer()

    def fit(self) -> None:
        """Train to ``total_steps``. Raises ``Preempted`` (after a committed checkpoint) when a rank was signalled."""
        tr = self.cfg.trainer
        if self.validator is not None and tr.val_before_train and self.global_step == 0:
            with W.phase("testing", 0):
                self.log(self.validator.run(0), 0)
        while self.global_step < self.total_steps:
            self._stop_if_preempted()  # a collective: every rank decides the same, between two steps
            metrics = self.train_step(self.train_loader.next_batch())
            self.global_step += 1
            step, last = self.global_step, self.global_step == self.total_steps
            if self.validator is not None and tr.test_freq > 0 and (step % tr.test_freq == 0 or last):
                timer = self.phase_timer(step)
                with timer("testing"):
                    metrics.update(self.validator.run(step))
                metrics.update(timer.metrics())
            self.log(metrics, step)  # logged before the checkpoint: a kill after it never loses a logged step
            if tr.save_freq > 0 and (step % tr.save_freq == 0 or last):
                self.save_checkpoint()

    def _stop_if_preempted(self) -> None:
        reason = self.preemption.agreed()
        if reason is None:
            return
        path = self.save_checkpoint() if self.global_step > self._saved_step else None
        raise Preempted(self.global_step, reason, path)

    def save_checkpoint(self) -> Path:
        extra = {"sampler": self.train_loader.state_dict(),
                 "kl_ctrl": self.kl_ctrl.state_dict() if self.kl_ctrl is not None else None}
        with self.colocate.trainer_state(), W.phase("checkpoint", self.global_step):
            path = self.checkpoints.save(self.global_step, self.roles(), extra)  # offloaded state back while saved
        self._saved_step = self.global_step
        return path

    def close(self) -> None:
        """Flush loggers, write the metrics plot (rank 0), stop the engine and the grader."""
        if self.tracker is not None:
            self.tracker.close()
            from ttrl_megatron.plot import plot_run

            plot_run(self.cfg.trainer.run_dir)
        self.engine.shutdown()
        if self.grader is not None:
            self.grader.close()
        if self.watchdog is not None:
            self.watchdog.stop()


def _unique_dirs(dirs: dict[str, str]) -> dict[str, str]:
    """The same directory under two fields is checked once (run_dir defaults to default_local_dir)."""
    seen: dict[str, str] = {}
    for field, path in dirs.items():
        if path and os.path.abspath(path) not in seen.values():
            seen[field] = os.path.abspath(path)
    return {field: dirs[field] for field in seen}

