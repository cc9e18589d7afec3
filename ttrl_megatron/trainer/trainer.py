"""The TTRL trainer: ``setup()`` builds the run's objects from the config, ``train_step()`` is one straight line of
named phases (ARCHITECTURE.md), ``fit()`` loops over steps with logging, validation and checkpoints.

Driver math placement (documented choice): every rank runs the same program. Rollouts are generated DP-style (each
rank's vLLM engine samples its slice of the prompts) and all-gathered, so every rank holds the identical batch;
grading runs on rank 0 and is broadcast (labels.py); the cheap, deterministic tensor math (token-level scores, KL in
reward, advantages, metrics) then runs on every rank on the same batch, and the Megatron actor/critic take their
DP shard of it inside ``compute_log_prob`` / ``update_policy`` (megatron/engine.py). Only rank 0 logs and writes
dumps; checkpoints are written by all ranks collectively.

Reliability (README "Running for days on Slurm"): the checkpoint and run directories are checked to be shared by all
ranks at start (shared_dirs.py); every phase runs under the hang watchdog's budget (watchdog.py); once per step the
ranks agree whether a preemption signal arrived, and if so the loop checkpoints and raises ``Preempted``
(preemption.py), which main.py turns into exit status 75 for the launcher to requeue.

Choices are made once in ``setup()`` by which objects exist (``self.ref``, ``self.critic``, ``self.kl_ctrl``,
``self.adv_metrics``), never by flags re-read inside the loop. The root config stops here: components receive their
own sections. No hydra/omegaconf (main.py), no vllm (rollout/vllm_engine.py) imports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from pathlib import Path

import torch.distributed as dist

from ttrl_megatron.algorithms import (adv_estimator_params, apply_kl_penalty, compute_advantage,
                                      compute_grpo_nsr_metrics, get_kl_controller)
from ttrl_megatron.bridge.sync import rollout_probs_diff
from ttrl_megatron.config import TTRLTrainerConfig, need_critic, need_reference_policy, save_resolved
from ttrl_megatron.data import load_tokenizer
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.rollout.base import SamplingConfig
from ttrl_megatron.ttrl import build_reward_manager

from . import builders as B
from .balance import balance_permutation, seqlen_metrics
from .checkpointing import CheckpointManager, latest_checkpoint
from .dumps import generation_rows, write_jsonl
from .generation import TRAIN, generate_batch, sampling_for
from .labels import RewardStep
from . import watchdog as W
from .metrics import PhaseTimer, compute_data_metrics, throughput_metrics
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
        self.ref = (B.build_reference(arr.ref, arr.model, arch, arr.actor.megatron.dtype, arr.rollout.temperature)
                    if need_reference_policy(cfg) else None)
        self.critic = (B.build_critic(cfg.critic, arr.actor.megatron.dtype, self.n_samples,
                                      self.total_steps, tr.seed) if need_critic(cfg) else None)
        self.engine = B.build_rollout_engine(arr.rollout, arr.model, self.rank, tr.run_dir)
        self.weight_sync = B.build_weight_sync(self.actor, self.engine, arch, arr.rollout.sync,
                                                arr.rollout.max_model_len)
        self.kl_ctrl = get_kl_controller(cfg.algorithm.kl_ctrl) if cfg.algorithm.use_kl_in_reward else None
        self.grader = B.build_grader(cfg.ttrl) if self.rank == 0 else None  # local pool, or Ray tasks under ray_main
        self.rewards = RewardStep(ttrl=ttrl, n_votes=self.n_votes, n_samples=self.n_samples,
                                  manager=self._reward_manager() if self.rank == 0 else None, grader=self.grader,
                                  seed=tr.seed, is_source=self.rank == 0)
        self._setup_advantage()
        rollout = arr.rollout
        self.sampling = SamplingConfig(temperature=rollout.temperature if rollout.do_sample else 0.0,
                                       top_p=rollout.top_p, top_k=rollout.top_k,
                                       max_tokens=cfg.data.max_response_length, logprobs=True)
        self.validator = Validator(val_loader, rollout.val_kwargs, engine=self.engine, tokenizer=self.tokenizer,
                                   grader=self.grader, seed=rollout.seed, rank=self.rank, world=self.world,
                                   response_length=cfg.data.max_response_length,
                                   dump_dir=tr.validation_data_dir) if val_loader is not None else None
        self.checkpoints = CheckpointManager(
            tr.default_local_dir, hf_source_dir=arr.model.path, max_actor_keep=tr.max_actor_ckpt_to_keep,
            max_critic_keep=tr.max_critic_ckpt_to_keep)
        self.checkpoints.sweep_debris()
        with W.phase("checkpoint"):
            self.global_step = self._saved_step = self._resume()
        self.weight_sync.push()  # the engine must hold the actor's weights (resumed ones included)
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
                                    custom_name=cfg.custom_reward_function.name)

    def _setup_advantage(self) -> None:
        """Which inputs and config values the chosen estimator takes, decided once."""
        algo = self.cfg.algorithm
        params, _ = adv_estimator_params(algo.adv_estimator)
        values = {"gamma": algo.gamma, "lam": algo.lam, "norm_adv_by_std_in_grpo": algo.norm_adv_by_std_in_grpo}
        if algo.adv_estimator in ("grpo_nsr", "psr_nsr"):
            values.update(dataclasses.asdict(getattr(algo, algo.adv_estimator)))
        self.adv_static = {k: v for k, v in values.items() if k in params}
        self.adv_tensors = [k for k in ("values", "token_level_scores") if k in params]
        self.adv_index = "index" in params
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
    def generate(self, prompts: dict, step: int) -> DataProto:
        sampling = sampling_for(self.sampling, self.cfg.actor_rollout_ref.rollout.seed, step, TRAIN, self.rank)
        return generate_batch(self.engine, self.tokenizer, prompts, self.n_votes, sampling, step=step,
                              rank=self.rank, world=self.world, response_length=self.cfg.data.max_response_length)

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
        t = batch.batch
        kwargs = {k: t[k] for k in self.adv_tensors}
        if self.adv_index:
            kwargs["index"] = batch.obj("uid")
        t["advantages"], t["returns"] = compute_advantage(
            self.cfg.algorithm.adv_estimator, token_level_rewards=t["token_level_rewards"],
            response_mask=t["response_mask"], **kwargs, **self.adv_static)
        if self.adv_metrics is None:
            return {}
        return self.adv_metrics(t["response_mask"], t["token_level_scores"])

    # ------------------------------------------------------------------ the step
    def train_step(self, prompts: dict) -> dict:
        """One TTRL step on a collated prompt batch; returns its metrics (identical on every rank)."""
        step = self.global_step + 1
        timer = self.phase_timer(step)
        with timer("step"):
            with timer("gen"):
                batch = self.generate(prompts, step)  # B x n_votes rows
            with timer("reward"):
                batch, reward_metrics = self.rewards(batch, step)  # vote, keep n_samples, token_level_scores
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
                adv_metrics = self.advantages(batch)
            critic_metrics = {}
            if self.critic is not None:
                with timer("update_critic"):
                    critic_metrics = self.critic.update_critic(batch)
            with timer("update_actor"):
                actor_metrics = self.actor.update_policy(batch)
            with timer("update_weights"):
                sync_metrics = self.weight_sync.push()
        self._dump_rollouts(batch, step)
        metrics = {**reward_metrics, **seqlen, **kl_metrics, **adv_metrics, **critic_metrics, **actor_metrics,
                   **sync_metrics,
                   **rollout_probs_diff(batch.batch["rollout_log_probs"], batch.batch["old_log_probs"],
                                        batch.batch["response_mask"]),
                   **compute_data_metrics(batch, self.cfg.data.max_response_length), **timer.metrics(),
                   **throughput_metrics(batch, timer.seconds["step"], self.world)}
        metrics.update({"training/global_step": float(step), "training/epoch": float(self.train_loader.epoch)})
        return metrics

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
        with W.phase("checkpoint", self.global_step):
            path = self.checkpoints.save(self.global_step, self.roles(), extra)
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

