"""The Megatron value engine (PPO critic): ``compute_values`` and ``update_critic`` over megatron-core schedules.

Model: the policy's GPTModel trunk with a TP-replicated ``Linear(hidden, 1)`` value head (``build_gpt_model(...,
value_head=True)``), initialised from the HF causal LM (build.py ``load_critic_weights``: trunk from the checkpoint,
the head zero as verl's fresh critic, or given). Micro-batches are packed (``critic.model.use_remove_padding``) or
right-aligned, and the head's outputs are read at the response positions only (packing.py).

Values (as verl): the value of the state BEFORE each response token, i.e. the head's output at sequence positions
``P-1 .. P+R-2`` -> ``values [B, R]``, zeroed where ``response_mask`` is 0.

Update (reference/algorithms-semantics.md §1.7): clipped value loss
``0.5 * agg(max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2))`` with ``c = cliprange_value``, ``agg`` with
``loss_agg_mode`` over the whole mini-batch (global counts, see engine.py). Batch keys: ``input_ids``,
``attention_mask``, ``responses``, (``response_mask``), ``values`` (old), ``returns``. Metrics (floats, every rank,
averaged over epochs x mini-batches): ``critic/vf_loss`` (exact mini-batch loss), ``critic/vf_clipfrac`` and
``critic/vpred_mean`` (token-weighted over the mini-batch), ``critic/grad_norm`` (before clipping), ``critic/lr``.

Imports megatron.core (through engine/optimizer) and ttrl_megatron.algorithms; never vllm, hydra or the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from ttrl_megatron.algorithms import compute_value_loss, masked_mean
from ttrl_megatron.megatron.batching import MicroBatch
from ttrl_megatron.megatron.build import (  # noqa: F401 - load_critic_weights re-exported (its home is build.py)
    build_model_chunks, engine_perf, load_critic_weights, reject_model_overrides, reject_unsupported,
)
from ttrl_megatron.megatron.engine import (
    BatchingConfig, EngineHandles, GlobalCounts, RoleEngine, require_keys, response_mask_of, unwrap,
    validate_update_settings,
)
from ttrl_megatron.megatron.optimizer import OptimConfig
from ttrl_megatron.megatron.packing import gather_slots, scatter_slots
from ttrl_megatron.protocol import DataProto

VALUE_KEYS = ("input_ids", "attention_mask", "responses")


@dataclass
class CriticEngineConfig:
    """Critic settings (verl: ``critic.*``); names and meanings as in verl."""

    ppo_mini_batch_size: int = 256  # PROMPTS per optimizer step (global); x rows_per_prompt rows, split over DP
    rows_per_prompt: int = 1
    ppo_micro_batch_size_per_gpu: Optional[int] = None
    forward_micro_batch_size_per_gpu: Optional[int] = None  # compute_values; None = ppo_micro_batch_size_per_gpu
    use_dynamic_bsz: bool = False
    ppo_max_token_len_per_gpu: int = 32768
    ppo_epochs: int = 1
    shuffle: bool = False
    cliprange_value: float = 0.5
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: Optional[float] = None  # seq-mean-token-sum-norm divisor; None = the response width R
    seed: int = 42  # shuffling between epochs (same on every rank)
    prefix: str = "critic"

    @classmethod
    def from_config(cls, critic, rows_per_prompt: int, prefix: str = "critic") -> "CriticEngineConfig":
        """From ``config.CriticConfig`` (inherited nulls already resolved by the config); unsupported knobs raise."""
        reject_unsupported(critic.megatron, f"{prefix}.megatron", trainable=True)
        return cls(
            ppo_mini_batch_size=critic.ppo_mini_batch_size, rows_per_prompt=rows_per_prompt,
            ppo_micro_batch_size_per_gpu=critic.ppo_micro_batch_size_per_gpu,
            use_dynamic_bsz=bool(critic.use_dynamic_bsz), ppo_max_token_len_per_gpu=critic.ppo_max_token_len_per_gpu,
            ppo_epochs=critic.ppo_epochs, shuffle=bool(critic.shuffle), cliprange_value=critic.cliprange_value,
            loss_agg_mode=critic.loss_agg_mode, prefix=prefix,
        )

    def validate(self) -> None:
        validate_update_settings(self)
        if not self.cliprange_value > 0:
            raise ValueError(f"{self.prefix}.cliprange_value must be > 0, got {self.cliprange_value}")
        self.batching().validate()
        self.forward_batching().validate()

    def batching(self) -> BatchingConfig:
        return BatchingConfig(self.ppo_micro_batch_size_per_gpu, self.use_dynamic_bsz, self.ppo_max_token_len_per_gpu,
                              f"{self.prefix}.ppo_micro_batch_size_per_gpu / ppo_max_token_len_per_gpu")

    def forward_batching(self) -> BatchingConfig:
        size = self.forward_micro_batch_size_per_gpu or self.ppo_micro_batch_size_per_gpu
        return BatchingConfig(size, self.use_dynamic_bsz, self.ppo_max_token_len_per_gpu,
                              f"{self.prefix}.forward_micro_batch_size_per_gpu / ppo_max_token_len_per_gpu")


class MegatronCritic(EngineHandles):
    """A value model on megatron-core with its optimizer. ``model_chunks``: this rank's value-model stage(s)
    (``build_gpt_model(arch, value_head=True)``), weights loaded."""

    def __init__(self, model_chunks: Sequence[torch.nn.Module], config: CriticEngineConfig, optim: OptimConfig, *,
                 gradient_checkpointing: bool = False, packed: bool = True, perf=None):
        if not getattr(unwrap(model_chunks[0]), "ttrl_value_head", False):
            raise ValueError("MegatronCritic needs a value model: build_gpt_model(arch, value_head=True)")
        config.validate()
        self.config = config
        self.engine = RoleEngine(model_chunks, optim, gradient_checkpointing=gradient_checkpointing, packed=packed,
                                 perf=perf)

    def compute_values(self, data: DataProto) -> torch.Tensor:
        """``values [B, R]`` (state value before each response token) on every rank; 0 where response_mask is 0."""
        tensors = data.batch
        require_keys(tensors, VALUE_KEYS, "compute_values")
        keys = [k for k in (*VALUE_KEYS, "response_mask") if k in tensors]

        def fn(mb: MicroBatch, output: torch.Tensor):
            return None, {"values": _response_values(output, mb)}

        return self.engine.forward_rows(tensors, keys, self.config.forward_batching(), fn, ("values",))["values"]

    def update_critic(self, data: DataProto) -> Dict[str, float]:
        """One training step of value updates (epochs x mini-batches); returns ``critic/*`` metrics."""
        cfg, tensors = self.config, data.batch
        need = [*VALUE_KEYS, "values", "returns"]
        require_keys(tensors, need, "update_critic")
        keys = need + (["response_mask"] if "response_mask" in tensors else [])
        scale = cfg.loss_scale_factor if cfg.loss_scale_factor is not None else float(tensors["responses"].shape[1])

        def fn(counts: GlobalCounts, mb: MicroBatch, output: torch.Tensor):
            t = mb.tensors
            vpreds = _response_values(output, mb)
            mask = response_mask_of(t)
            loss, clipfrac = compute_value_loss(
                vpreds, t["returns"], t["values"], mask, cfg.cliprange_value, cfg.loss_agg_mode,
                batch_num_tokens=counts.tokens, global_batch_size=counts.seqs, loss_scale_factor=scale)
            weight = float(mask.sum()) / max(counts.tokens, 1.0)
            return loss, {"vf_loss": loss.detach(), "vf_clipfrac": clipfrac * weight,
                          "vpred_mean": masked_mean(vpreds.detach(), mask) * weight}

        metrics, _ = self.engine.train(tensors, keys, cfg.batching(), cfg.ppo_mini_batch_size * cfg.rows_per_prompt,
                                       cfg.ppo_epochs, cfg.shuffle, cfg.seed, fn)
        self.engine.scheduler.step(1)
        return {f"critic/{k}": v for k, v in metrics.items() if not k.startswith("_")}


def _response_values(output: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """``[r, T, 1]`` head output -> ``[b, R']`` fp32 values at the positions before each response token (packing.py
    slots; zero outside them)."""
    values = gather_slots(output, mb.layout)[:, 0].float()
    return scatter_slots(values, mb.layout, (mb.num_rows, mb.response_width))


def build_critic(critic, rows_per_prompt: int, dtype: str, prefix: str = "critic", megatron=None) -> MegatronCritic:
    """The critic from ``config.CriticConfig``: value model initialised from ``critic.model.path`` (HF causal LM
    trunk + zero value head); ``dtype`` = ``actor.megatron.dtype``; ``rows_per_prompt`` = rollout.n; ``megatron`` =
    ``actor.megatron`` (fusions, overlap; None = all off)."""
    reject_model_overrides(critic.model, f"{prefix}.model")
    cfg = CriticEngineConfig.from_config(critic, rows_per_prompt, prefix)
    optim = OptimConfig.from_config(critic.optim, critic.megatron.use_distributed_optimizer, f"{prefix}.optim")
    perf = (engine_perf(megatron, critic.model.enable_gradient_checkpointing) if megatron is not None else None)
    chunks = build_model_chunks(critic.model.path, dtype, value_head=True, perf=perf)
    return MegatronCritic(chunks, cfg, optim, gradient_checkpointing=critic.model.enable_gradient_checkpointing,
                          packed=critic.model.use_remove_padding, perf=perf)
