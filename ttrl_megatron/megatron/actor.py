"""The Megatron policy engine: ``compute_log_prob`` (actor old log-probs, or a frozen reference) and
``update_policy`` (PPO/GRPO policy update), over megatron-core's pipeline schedules with TP x PP x DP.

Data (verl layout, the SAME full batch on every rank, see engine.py): ``input_ids/attention_mask [B, P+R]``
(left-padded prompt + right-padded response), ``responses [B, R]``, ``response_mask [B, R]`` (optional: taken
from ``attention_mask[:, -R:]``); for updates also ``old_log_probs``, ``advantages`` and, with ``use_kl_loss``,
``ref_log_prob`` (all ``[B, R]``). ``position_ids`` are not read: each micro-batch is laid out packed (THD) or
right-aligned (packing.py), so every sequence's positions start at 0 as HF derives them from the mask.

Log-prob of response token t: ``log softmax(logits[P-1+t] / temperature)[responses[t]]`` (temperature as in the
rollout), at the response positions only: the model hands back hidden states (model.py ``emit_hidden``) and
logprobs.py forms the logits in chunks of ``logprob_chunk_size`` positions, vocabulary-parallel (no full-vocab
gather, no ``[tokens, vocab]`` tensor); padded vocabulary rows are excluded. Entropy: not computed for old /
reference log-probs (the trainer does not ask for it; ``actor/entropy`` comes from the update); in the update it
is computed in the same chunk loop (cheap: the chunk's exponentials are already there), with gradient only when
``entropy_coeff != 0``.

Loss of one mini-batch (reference/algorithms-semantics.md §1.5-§1.7):
``pg_loss - entropy_coeff * agg(entropy) + kl_loss_coef * agg(kl_penalty(logp, ref_logp, kl_loss_type))``,
each ``agg`` over the whole mini-batch with global token/sequence counts (all-reduced over DP once per
mini-batch), so the update does not depend on the micro-batch size, dynamic batching or the DP split.

Metrics of ``update_policy`` (floats, identical on every rank): per optimizer step, ``actor/pg_loss``,
``actor/entropy`` (agg with loss_agg_mode; computed without gradient when entropy_coeff == 0) and ``actor/kl_loss``
are the exact mini-batch values; ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl`` are
token-weighted means over the mini-batch (verl averages per-micro-batch means instead; the two agree when
micro-batches hold equal token counts); ``actor/grad_norm`` (before clipping) and ``actor/lr``; then all are
averaged over the epochs x mini-batches. The lr scheduler steps once per ``update_policy`` call (one training
step, as verl).

Imports megatron.core (through engine/optimizer) and ttrl_megatron.algorithms; never vllm, hydra or the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from ttrl_megatron.algorithms import ActorLossConfig, PolicyLossSettings, agg_loss, get_policy_loss_fn, kl_penalty
from ttrl_megatron.megatron.batching import MicroBatch
from ttrl_megatron.megatron.build import build_model_chunks, engine_perf, reject_model_overrides, reject_unsupported
from ttrl_megatron.megatron.collectives import device
from ttrl_megatron.megatron.engine import (
    BatchingConfig, EngineHandles, GlobalCounts, RoleEngine, require_keys, response_mask_of, validate_update_settings,
)
from ttrl_megatron.megatron.logprobs import chunked_logprobs
from ttrl_megatron.megatron.model import output_weight
from ttrl_megatron.megatron.optimizer import OptimConfig
from ttrl_megatron.megatron.packing import gather_slots, scatter_slots
from ttrl_megatron.protocol import DataProto

LOG_PROB_KEYS = ("input_ids", "attention_mask", "responses")


@dataclass
class LogProbConfig:
    """Micro-batching of forward-only passes (verl: ``*.log_prob_micro_batch_size_per_gpu`` and friends)."""

    micro_batch_size_per_gpu: Optional[int] = None
    use_dynamic_bsz: bool = False
    max_token_len_per_gpu: int = 16384
    temperature: float = 1.0  # the rollout's sampling temperature (logits / T), as vLLM applies it
    prefix: str = "actor_rollout_ref.rollout"
    chunk_size: int = 512  # response tokens per chunk of the log-prob computation (model.logprob_chunk_size)

    @classmethod
    def from_config(cls, section, temperature: float, prefix: str, chunk_size: int = 512) -> "LogProbConfig":
        """From ``config.RolloutConfig`` (actor's old log-probs) or ``config.RefConfig`` (reference log-probs);
        ``chunk_size`` = ``actor_rollout_ref.model.logprob_chunk_size``."""
        return cls(section.log_prob_micro_batch_size_per_gpu, bool(section.log_prob_use_dynamic_bsz),
                   section.log_prob_max_token_len_per_gpu, temperature, prefix, chunk_size)

    def batching(self) -> BatchingConfig:
        return BatchingConfig(self.micro_batch_size_per_gpu, self.use_dynamic_bsz, self.max_token_len_per_gpu,
                              f"{self.prefix}.log_prob_micro_batch_size_per_gpu / log_prob_max_token_len_per_gpu")


@dataclass
class ActorEngineConfig:
    """Policy update settings (verl: ``actor_rollout_ref.actor.*``); names and meanings as in verl."""

    ppo_mini_batch_size: int = 256  # PROMPTS per optimizer step (global); x rows_per_prompt rows, split over DP
    rows_per_prompt: int = 1  # responses per prompt in the training batch (rollout.n; TTRL: n_samples_per_prompt)
    ppo_micro_batch_size_per_gpu: Optional[int] = None
    use_dynamic_bsz: bool = False
    ppo_max_token_len_per_gpu: int = 16384
    ppo_epochs: int = 1
    shuffle: bool = False
    clip_ratio: float = 0.2
    clip_ratio_low: Optional[float] = None
    clip_ratio_high: Optional[float] = None
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: Optional[float] = None  # seq-mean-token-sum-norm divisor; None = the response width R
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    loss_mode: str = "vanilla"  # actor.policy_loss.loss_mode
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    ppo_kl_coef: float = 0.1
    tau_pos: float = 1.0  # sapo gate temperature for A > 0 (actor.tau_pos)
    tau_neg: float = 1.05  # sapo gate temperature for A <= 0 (actor.tau_neg)
    seed: int = 42  # shuffling between epochs and clip_cov's random token choice (same on every rank)
    prefix: str = "actor_rollout_ref.actor"

    @classmethod
    def from_config(cls, actor, rows_per_prompt: int, prefix: str = "actor_rollout_ref.actor") -> "ActorEngineConfig":
        """From ``config.ActorConfig``; ``rows_per_prompt`` = ``actor_rollout_ref.rollout.n`` (training rows per
        prompt; with TTRL that is ttrl.n_samples_per_prompt). Unsupported megatron knobs raise here."""
        reject_unsupported(actor.megatron, f"{prefix}.megatron", trainable=True)
        pl = actor.policy_loss
        return cls(
            ppo_mini_batch_size=actor.ppo_mini_batch_size, rows_per_prompt=rows_per_prompt,
            ppo_micro_batch_size_per_gpu=actor.ppo_micro_batch_size_per_gpu, use_dynamic_bsz=actor.use_dynamic_bsz,
            ppo_max_token_len_per_gpu=actor.ppo_max_token_len_per_gpu, ppo_epochs=actor.ppo_epochs,
            shuffle=actor.shuffle, clip_ratio=actor.clip_ratio, clip_ratio_low=actor.clip_ratio_low,
            clip_ratio_high=actor.clip_ratio_high, clip_ratio_c=actor.clip_ratio_c, loss_agg_mode=actor.loss_agg_mode,
            loss_scale_factor=actor.loss_scale_factor, entropy_coeff=actor.entropy_coeff,
            use_kl_loss=actor.use_kl_loss, kl_loss_coef=actor.kl_loss_coef, kl_loss_type=actor.kl_loss_type,
            loss_mode=pl.loss_mode, clip_cov_ratio=pl.clip_cov_ratio, clip_cov_lb=pl.clip_cov_lb,
            clip_cov_ub=pl.clip_cov_ub, kl_cov_ratio=pl.kl_cov_ratio, ppo_kl_coef=pl.ppo_kl_coef,
            tau_pos=actor.tau_pos, tau_neg=actor.tau_neg, seed=actor.megatron.seed, prefix=prefix,
        )

    def validate(self) -> None:
        validate_update_settings(self)
        self.batching().validate()

    def batching(self) -> BatchingConfig:
        return BatchingConfig(self.ppo_micro_batch_size_per_gpu, self.use_dynamic_bsz, self.ppo_max_token_len_per_gpu,
                              f"{self.prefix}.ppo_micro_batch_size_per_gpu / ppo_max_token_len_per_gpu")

    def loss_config(self, generator: Optional[torch.Generator]) -> ActorLossConfig:
        """The ``config`` every policy loss gets: verl's actor-config fields under verl's names (global_batch_info
        is filled per micro-batch)."""
        return ActorLossConfig(
            clip_ratio=self.clip_ratio, clip_ratio_low=self.clip_ratio_low, clip_ratio_high=self.clip_ratio_high,
            clip_ratio_c=self.clip_ratio_c, loss_agg_mode=self.loss_agg_mode, loss_scale_factor=self.loss_scale_factor,
            tau_pos=self.tau_pos, tau_neg=self.tau_neg, generator=generator,
            policy_loss=PolicyLossSettings(loss_mode=self.loss_mode, clip_cov_ratio=self.clip_cov_ratio,
                                           clip_cov_lb=self.clip_cov_lb, clip_cov_ub=self.clip_cov_ub,
                                           kl_cov_ratio=self.kl_cov_ratio, ppo_kl_coef=self.ppo_kl_coef))

    @property
    def mini_batch_rows(self) -> int:
        return self.ppo_mini_batch_size * self.rows_per_prompt


class MegatronActor(EngineHandles):
    """A policy on megatron-core. Trainable (actor) when built with ``optim``; frozen (reference) without.

    ``model_chunks``: this rank's GPTModel stage(s) from ``build_gpt_model``, weights already loaded.
    """

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        log_prob: LogProbConfig,
        config: Optional[ActorEngineConfig] = None,
        optim: Optional[OptimConfig] = None,
        *,
        gradient_checkpointing: bool = False,
        param_offload: bool = False,
        packed: bool = True,
        perf=None,
    ):
        if (config is None) != (optim is None):
            raise ValueError("MegatronActor: pass both config and optim (actor) or neither (frozen reference)")
        log_prob.batching().validate()
        if not log_prob.temperature > 0:
            raise ValueError(f"{log_prob.prefix}.temperature must be > 0, got {log_prob.temperature}")
        if not isinstance(log_prob.chunk_size, int) or log_prob.chunk_size < 1:
            raise ValueError(f"actor_rollout_ref.model.logprob_chunk_size must be a positive int, got "
                             f"{log_prob.chunk_size!r}")
        if config is not None:
            config.validate()
        self.log_prob_config, self.config = log_prob, config
        self.engine = RoleEngine(model_chunks, optim, gradient_checkpointing=gradient_checkpointing,
                                 param_offload=param_offload, packed=packed, perf=perf)

    # -- forward-only -----------------------------------------------------------------------------------------------
    def compute_log_prob(self, data: DataProto, calculate_entropy: bool = False
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Log-probs ``[B, R]`` of ``responses`` (and entropy ``[B, R]`` if asked), on every rank; 0 where
        ``response_mask`` is 0."""
        tensors = data.batch
        require_keys(tensors, LOG_PROB_KEYS, "compute_log_prob")
        keys = [k for k in (*LOG_PROB_KEYS, "response_mask") if k in tensors]
        out_keys = ("log_probs", "entropy") if calculate_entropy else ("log_probs",)

        def fn(mb: MicroBatch, output: torch.Tensor):
            lp, ent = self._logprobs(output, mb, with_entropy=calculate_entropy, entropy_grad=False)
            return None, ({"log_probs": lp, "entropy": ent} if calculate_entropy else {"log_probs": lp})

        out = self.engine.forward_rows(tensors, keys, self.log_prob_config.batching(), fn, out_keys)
        return out["log_probs"], out.get("entropy")

    # -- update -----------------------------------------------------------------------------------------------------
    def update_policy(self, data: DataProto) -> Dict[str, float]:
        """One training step of PPO updates on ``data`` (epochs x mini-batches); returns ``actor/*`` metrics."""
        cfg = self.config
        if cfg is None:
            raise RuntimeError("update_policy on a frozen reference model (built without optim)")
        tensors = data.batch
        need = [*LOG_PROB_KEYS, "old_log_probs", "advantages"] + (["ref_log_prob"] if cfg.use_kl_loss else [])
        require_keys(tensors, need, "update_policy")
        keys = need + [k for k in ("response_mask", "rollout_is_weights") if k in tensors]
        width = tensors["responses"].shape[1]
        scale = cfg.loss_scale_factor if cfg.loss_scale_factor is not None else float(width)
        gen = torch.Generator(device=device()).manual_seed(cfg.seed)  # clip_cov's draws happen where the tensors are
        loss_cfg = cfg.loss_config(gen)

        def fn(counts: GlobalCounts, mb: MicroBatch, output: torch.Tensor):
            return self._policy_loss(counts, scale, loss_cfg, mb, output)

        metrics, _ = self.engine.train(tensors, keys, cfg.batching(), cfg.mini_batch_rows, cfg.ppo_epochs,
                                       cfg.shuffle, cfg.seed, fn)
        self.engine.scheduler.step(1)
        out = {f"actor/{k}": v for k, v in metrics.items() if not k.startswith("_")}
        out["actor/loss"] = metrics.get("_loss", 0.0)
        return out

    def _policy_loss(self, counts: GlobalCounts, scale: float, loss_cfg: ActorLossConfig, mb: MicroBatch,
                     output: torch.Tensor):
        cfg, t = self.config, mb.tensors
        # log-probs and the entropy in one chunk loop; the entropy carries a gradient only for the entropy bonus
        lp, entropy = self._logprobs(output, mb, with_entropy=True, entropy_grad=cfg.entropy_coeff != 0)
        mask = response_mask_of(t)
        # verl's global_batch_info: this shard's share of the whole mini-batch (dp_size=1: the engine rescales).
        loss_cfg.global_batch_info.update(dp_size=1, batch_num_tokens=counts.tokens, global_batch_size=counts.seqs,
                                          loss_scale_factor=scale)

        def agg(values):
            return agg_loss(values, mask, cfg.loss_agg_mode, **loss_cfg.global_batch_info)

        # Exactly verl's actor call, so a loss registered from a verl recipe runs unchanged.
        policy_loss_fn = get_policy_loss_fn(cfg.loss_mode)
        pg_loss, pg_metrics = policy_loss_fn(t["old_log_probs"], lp, t["advantages"], mask,
                                             loss_agg_mode=cfg.loss_agg_mode, config=loss_cfg,
                                             rollout_is_weights=t.get("rollout_is_weights"))
        # Token-weighted shares: summed over micro-batches and DP they give the mini-batch token mean. verl's
        # losses return Python floats, ours 0-dim tensors: both become tensors on the loss's device.
        weight = float(mask.sum()) / max(counts.tokens, 1.0)
        outputs = {k.split("/", 1)[-1]: torch.as_tensor(v, device=pg_loss.device).detach().float() * weight
                   for k, v in pg_metrics.items()}
        outputs["pg_loss"] = pg_loss.detach()
        loss = pg_loss
        entropy_agg = agg(entropy)
        outputs["entropy"] = entropy_agg.detach()
        if cfg.entropy_coeff != 0:
            loss = loss - cfg.entropy_coeff * entropy_agg
        if cfg.use_kl_loss:
            kl_agg = agg(kl_penalty(lp, t["ref_log_prob"], cfg.kl_loss_type))
            loss = loss + cfg.kl_loss_coef * kl_agg
            outputs["kl_loss"] = kl_agg.detach()
            outputs["kl_coef"] = torch.tensor(cfg.kl_loss_coef * weight)  # host: a logged constant
        return loss, outputs

    def _logprobs(self, output: torch.Tensor, mb: MicroBatch, *, with_entropy: bool, entropy_grad: bool
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Log-probs (and entropy) ``[b, R']`` of the micro-batch's response tokens from the last stage's hidden
        states ``output [r, T, h]``; zero outside the valid response slots."""
        lay, cfg = mb.layout, self.log_prob_config
        targets = mb.tensors["responses"][lay.rows, lay.cols]
        lp, ent = chunked_logprobs(gather_slots(output, lay), output_weight(self.engine.model[-1]), targets,
                                   vocab_size=self.engine.arch.vocab_size, temperature=cfg.temperature,
                                   chunk_size=cfg.chunk_size, with_entropy=with_entropy, entropy_grad=entropy_grad)
        shape = (mb.num_rows, mb.response_width)
        return scatter_slots(lp, lay, shape), (scatter_slots(ent, lay, shape) if ent is not None else None)


def build_actor(model, actor, rollout, prefix: str = "actor_rollout_ref") -> MegatronActor:
    """The trainable actor from ``config.ModelConfig``, ``config.ActorConfig`` and ``config.RolloutConfig``
    (old log-probs use the rollout's temperature and log_prob_* micro-batching, as verl). Packing
    (``model.use_remove_padding``), fusions and overlap (``actor.megatron``) as configured."""
    reject_model_overrides(model, f"{prefix}.model")
    engine_cfg = ActorEngineConfig.from_config(actor, rollout.n, f"{prefix}.actor")
    optim = OptimConfig.from_config(actor.optim, actor.megatron.use_distributed_optimizer, f"{prefix}.actor.optim")
    log_prob = LogProbConfig.from_config(rollout, rollout.temperature, f"{prefix}.rollout", model.logprob_chunk_size)
    perf = engine_perf(actor.megatron, model.enable_gradient_checkpointing, f"{prefix}.actor.megatron")
    chunks = build_model_chunks(model.path, actor.megatron.dtype, perf=perf)
    return MegatronActor(chunks, log_prob, engine_cfg, optim,
                         gradient_checkpointing=model.enable_gradient_checkpointing,
                         packed=model.use_remove_padding, perf=perf)


def build_reference(model, ref, rollout, dtype: str, prefix: str = "actor_rollout_ref", megatron=None
                    ) -> MegatronActor:
    """The frozen reference policy (no optimizer) from ``config.ModelConfig`` and ``config.RefConfig``;
    ``dtype`` = ``actor.megatron.dtype``; ``megatron`` = ``actor.megatron`` (its fusions; None = all off)."""
    reject_model_overrides(model, f"{prefix}.model")
    reject_unsupported(ref.megatron, f"{prefix}.ref.megatron", trainable=False)
    log_prob = LogProbConfig.from_config(ref, rollout.temperature, f"{prefix}.ref", model.logprob_chunk_size)
    perf = engine_perf(megatron, False, f"{prefix}.actor.megatron") if megatron is not None else None
    return MegatronActor(build_model_chunks(model.path, dtype, perf=perf), log_prob,
                         param_offload=ref.megatron.param_offload, packed=model.use_remove_padding, perf=perf)
