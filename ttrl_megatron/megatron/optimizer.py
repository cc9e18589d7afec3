"""Megatron DDP wrapping, optimizer (Adam/AdamW, optional distributed optimizer) and lr schedule for an engine.

- ``wrap_ddp``: megatron-core ``DistributedDataParallel`` around each model chunk (fp32 grad buffers), and
  ``finalize_model_grads`` as the config hook, which all-reduces grads over DP and, under PP with tied
  embeddings, over the embedding group. With ``overlap_grad_reduce`` each bucket is reduced as soon as its grads
  are complete in the last micro-batch's backward (the schedule runs the others under ``no_sync``, as
  Megatron-LM's training loop sets it up); with ``overlap_param_gather`` (distributed optimizer) the updated
  parameter shards are all-gathered bucket by bucket in the next forward's pre-hooks.
- ``build_optimizer``: ``get_megatron_optimizer`` with gradient clipping by global norm (``clip_grad``; 0 = off),
  decoupled weight decay (AdamW) skipped for biases and 1-D parameters (megatron's standard rule).
- ``build_scheduler``: megatron's ``OptimizerParamScheduler`` stepped once per ``update`` call (verl's unit: one
  training step): linear warmup from 0 over ``lr_warmup_steps`` (or ``lr_warmup_steps_ratio *
  total_training_steps``), then ``constant`` / ``cosine`` / ``linear`` decay (``warmup_style``, verl's name) to
  ``lr * min_lr_ratio`` at ``total_training_steps``. As in megatron (and verl), the first step of a warmup uses
  lr 0.

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

LR_DECAY_STYLES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class OptimConfig:
    """Optimizer + lr schedule of one engine (verl: ``actor_rollout_ref.actor.optim.*`` / ``critic.optim.*``).

    ``warmup_style`` is verl's name for the schedule AFTER warmup (megatron's ``lr_decay_style``).
    ``prefix`` only shapes error messages (the config path the user would change).
    """

    lr: float = 1e-6
    optimizer: str = "adam"  # adam (AdamW: decoupled weight decay) | sgd
    weight_decay: float = 0.01
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 1.0  # max global grad norm; 0 disables clipping
    lr_warmup_steps: int = -1  # -1: use lr_warmup_steps_ratio
    lr_warmup_steps_ratio: float = 0.0
    warmup_style: str = "constant"
    min_lr_ratio: float = 0.0
    total_training_steps: int = -1  # set by the trainer; needed for warmup ratios and decay
    use_distributed_optimizer: bool = False
    prefix: str = "optim"

    @classmethod
    def from_config(cls, optim, use_distributed_optimizer: bool, prefix: str) -> "OptimConfig":
        """From ``ttrl_megatron.config.OptimConfig`` (every value taken from there: one default per setting)."""
        return cls(lr=optim.lr, optimizer=optim.optimizer, weight_decay=optim.weight_decay, betas=tuple(optim.betas),
                   eps=optim.eps, clip_grad=optim.clip_grad, lr_warmup_steps=optim.lr_warmup_steps,
                   lr_warmup_steps_ratio=optim.lr_warmup_steps_ratio, warmup_style=optim.warmup_style,
                   min_lr_ratio=optim.min_lr_ratio, total_training_steps=optim.total_training_steps,
                   use_distributed_optimizer=bool(use_distributed_optimizer), prefix=prefix)

    def validate(self) -> None:
        p = self.prefix
        if not self.lr > 0:
            raise ValueError(f"{p}.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{p}.optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.warmup_style not in LR_DECAY_STYLES:
            raise ValueError(f"{p}.warmup_style={self.warmup_style!r} (the schedule after warmup) is not one of "
                             f"{LR_DECAY_STYLES}")
        if not 0.0 <= self.lr_warmup_steps_ratio <= 1.0:
            raise ValueError(f"{p}.lr_warmup_steps_ratio must be in [0, 1], got {self.lr_warmup_steps_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"{p}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_grad < 0:
            raise ValueError(f"{p}.clip_grad must be >= 0, got {self.clip_grad}")
        needs_total = self.warmup_style != "constant" or (self.lr_warmup_steps < 0 and self.lr_warmup_steps_ratio > 0)
        if needs_total and self.total_training_steps <= 0:
            raise ValueError(
                f"{p}.total_training_steps must be set (> 0) for warmup_style={self.warmup_style!r} / "
                f"lr_warmup_steps_ratio={self.lr_warmup_steps_ratio}; the trainer fills it from the epoch count"
            )

    def warmup_steps(self) -> int:
        if self.lr_warmup_steps >= 0:
            return self.lr_warmup_steps
        return int(self.lr_warmup_steps_ratio * max(self.total_training_steps, 0))

    def final_lr(self) -> float:
        return self.lr * self.min_lr_ratio


def wrap_ddp(model_chunks: Sequence[torch.nn.Module], use_distributed_optimizer: bool,
             overlap_grad_reduce: bool = False, overlap_param_gather: bool = False) -> List[DistributedDataParallel]:
    """Megatron DDP around each chunk; sets ``finalize_model_grads`` as the schedule's gradient hook (and the
    ``no_sync`` hook when reduces overlap the backward).

    Gradients are scaled by 1/dp and summed (megatron's default); the engine's loss scaling undoes the 1/dp.
    """
    if overlap_param_gather and not (use_distributed_optimizer and overlap_grad_reduce):
        raise ValueError("overlap_param_gather needs use_distributed_optimizer and overlap_grad_reduce")
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        use_distributed_optimizer=use_distributed_optimizer,
        average_in_collective=False,
    )
    wrapped = []
    for i, chunk in enumerate(model_chunks):
        wrapped.append(DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk,
            disable_bucketing=i > 0,  # as megatron's training loop: only the first chunk may bucket
        ))
    config = model_chunks[0].config
    config.finalize_model_grads_func = finalize_model_grads
    if overlap_grad_reduce:  # grads are reduced only in the last micro-batch's backward
        no_sync = [chunk.no_sync for chunk in wrapped]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    config.grad_scale_func = None  # fp32 training: no loss scaling
    return wrapped


def build_optimizer(cfg: OptimConfig, ddp_chunks: Sequence[DistributedDataParallel]):
    """megatron ``get_megatron_optimizer`` over the DDP-wrapped chunks (Adam, decoupled weight decay)."""
    cfg.validate()
    params_dtype = ddp_chunks[0].module.config.params_dtype
    opt_config = OptimizerConfig(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        min_lr=cfg.final_lr(),
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.betas[0],
        adam_beta2=cfg.betas[1],
        adam_eps=cfg.eps,
        clip_grad=cfg.clip_grad,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
    )
    return get_megatron_optimizer(opt_config, list(ddp_chunks))


def build_scheduler(cfg: OptimConfig, optimizer) -> OptimizerParamScheduler:
    """megatron ``OptimizerParamScheduler`` for ``cfg`` (steps counted in ``update`` calls)."""
    cfg.validate()
    warmup = cfg.warmup_steps()
    decay_steps = max(cfg.total_training_steps, warmup + 1, 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.final_lr(),
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=cfg.warmup_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


def current_lr(optimizer) -> float:
    """The learning rate the next ``optimizer.step()`` uses (first param group)."""
    return float(optimizer.param_groups[0]["lr"])
