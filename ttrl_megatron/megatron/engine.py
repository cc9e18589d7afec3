"""Shared machinery of the actor, reference and critic engines: micro-batches through megatron-core's pipeline
schedule (``run_schedule``) and ``RoleEngine`` (model chunks + DDP + optimizer, forward-only and training loops),
plus construction from the typed config (``build_model_chunks``, ``reject_unsupported``).

Data contract: every rank receives the SAME full batch (the driver math runs on every rank, ARCHITECTURE.md).
A rank processes only its data-parallel share; results are broadcast from the last pipeline stage over the PP
group and all-gathered over DP (collectives.py), so every rank returns the full ``[B, R]`` result.

Loss scaling, stated once (reference/algorithms-semantics.md §1.6, PLATFORM.md): megatron-core's schedule divides
the loss returned by the loss function IN PLACE by ``num_microbatches`` (the 2-tuple loss path), and megatron DDP
pre-multiplies gradients by ``1/dp_size`` before summing them over DP (``average_in_collective=False``). Our
losses are already additive shares of the global mini-batch loss (global token/sequence counts), so
``run_schedule`` hands the schedule ``share * num_microbatches * dp_size``: after both divisions the accumulated
gradient is exactly d(global loss)/d(theta). Logged values are detached clones taken before the schedule touches
the tensor.

Imports megatron.core; must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from ttrl_megatron.megatron import batching
from ttrl_megatron.megatron.batching import MicroBatch
from ttrl_megatron.megatron.collectives import (
    all_gather_dp_rows, all_reduce_dp_sum, broadcast_from_last_stage, device, dp_shard_rows, sum_over_dp_last_stage,
)
from ttrl_megatron.megatron.model import left_padded_inputs

if TYPE_CHECKING:
    from ttrl_megatron.megatron.optimizer import OptimConfig

# A loss function of one micro-batch: (micro-batch, last-stage model output) -> (loss share or None, outputs).
LossFn = Callable[[MicroBatch, torch.Tensor], Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside a megatron DDP / Float16Module wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model


@dataclass(frozen=True)
class Ranks:
    """This process's coordinates in megatron's parallel state (read once per call)."""

    tp: int
    tp_size: int
    pp_size: int
    dp: int
    dp_size: int
    is_last_stage: bool

    @classmethod
    def current(cls) -> "Ranks":
        ps = parallel_state
        return cls(
            tp=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
            pp_size=ps.get_pipeline_model_parallel_world_size(),
            dp=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
            is_last_stage=ps.is_pipeline_last_stage(),
        )


# ---------------------------------------------------------------------------------------------------------------
# the pipeline schedule


def _forward_step(loss_fn: LossFn, scale: float, data_iterator, model):
    mb: MicroBatch = next(data_iterator)
    dev = device()
    mb.tensors = t = {k: v.to(dev, non_blocking=True) for k, v in mb.tensors.items()}
    position_ids, mask = left_padded_inputs(t["attention_mask"])
    output = model(t["input_ids"], position_ids, mask)

    def loss_func(output_tensor):
        loss, outputs = loss_fn(mb, output_tensor)
        if loss is None:  # forward-only: the schedule still wants a scalar it can divide in place
            return torch.zeros((), device=output_tensor.device), outputs
        outputs = dict(outputs)
        outputs["_loss"] = loss.detach().clone()
        return loss * scale, outputs

    return output, loss_func


def run_schedule(
    model_chunks: Sequence[torch.nn.Module],
    micro_batches: List[MicroBatch],
    loss_fn: LossFn,
    forward_only: bool,
    dp_size: int = 1,
) -> List[Dict[str, torch.Tensor]]:
    """Run ``micro_batches`` through megatron's forward(-backward) schedule; per-micro-batch outputs on the last stage.

    ``loss_fn`` returns this micro-batch's additive share of the global loss (None when forward-only); the
    share is multiplied by ``num_microbatches * dp_size`` to undo the schedule's and DDP's averaging (module
    docstring). Non-last pipeline stages get ``[]``. Shapes may vary between micro-batches (dynamic batching):
    with PP > 1 ``variable_seq_lengths`` is switched on so that stages exchange activation shapes.
    """
    if not micro_batches:
        return []
    config = get_model_config(model_chunks[0])
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        config.variable_seq_lengths = True
    n = len(micro_batches)
    first = micro_batches[0].tensors["input_ids"]
    out = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, loss_fn, float(n * dp_size)),
        data_iterator=iter(micro_batches),
        model=list(model_chunks),
        num_microbatches=n,
        seq_length=first.shape[1],
        micro_batch_size=first.shape[0],
        forward_only=forward_only,
    )
    return list(out) if parallel_state.is_pipeline_last_stage() else []


# ---------------------------------------------------------------------------------------------------------------
# the role engine shared by actor, reference and critic


@dataclass(frozen=True)
class BatchingConfig:
    """How one rank cuts its rows into micro-batches: a fixed row count, or a token budget (dynamic)."""

    micro_batch_size: Optional[int]  # rows per micro-batch (per rank)
    use_dynamic_bsz: bool
    max_token_len: int  # padded tokens per micro-batch when use_dynamic_bsz
    prefix: str  # config path used in error messages

    def validate(self) -> None:
        if self.use_dynamic_bsz:
            if not isinstance(self.max_token_len, int) or self.max_token_len < 1:
                raise ValueError(f"{self.prefix}: the max token length per GPU must be a positive int with "
                                 f"use_dynamic_bsz, got {self.max_token_len!r}")
        elif not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise ValueError(f"{self.prefix}: the micro batch size per GPU must be a positive int when "
                             f"use_dynamic_bsz is off, got {self.micro_batch_size!r}")

    def split(self, mask: torch.Tensor, rows: torch.Tensor, response_width: int) -> List[torch.Tensor]:
        if self.use_dynamic_bsz:
            p, r = batching.sequence_lengths(mask, response_width)
            return batching.split_by_token_budget(rows, p, r, self.max_token_len)
        return batching.split_fixed(rows, self.micro_batch_size)


@dataclass(frozen=True)
class GlobalCounts:
    """Whole-mini-batch denominators: valid response tokens and sequences with >= 1 valid token (all DP ranks)."""

    tokens: float
    seqs: float


def response_mask_of(tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``response_mask [B, R]``; derived from ``attention_mask[:, -R:]`` when the batch has none (as verl)."""
    if "response_mask" in tensors:
        return tensors["response_mask"]
    width = tensors["responses"].shape[1]
    return tensors["attention_mask"][:, -width:]


def require_keys(tensors: Dict[str, torch.Tensor], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise KeyError(f"{where}: batch is missing {missing} (present: {sorted(tensors)})")


class RoleEngine:
    """Model chunks (+ DDP, optimizer and lr scheduler when trainable) and the two loops every role needs:
    ``forward_rows`` (forward-only over this rank's DP share, results on every rank) and ``train`` (epochs x
    mini-batches x micro-batches, one optimizer step per mini-batch)."""

    def __init__(
        self, model_chunks: Sequence[torch.nn.Module], optim: Optional["OptimConfig"], *,
        gradient_checkpointing: bool = False, param_offload: bool = False,
    ):
        """``model_chunks``: this rank's GPTModel stage(s), weights loaded. ``optim=None`` = frozen model.

        gradient_checkpointing: megatron full activation recompute, one layer per checkpoint (verl:
        ``model.enable_gradient_checkpointing``). param_offload: frozen models only, and only with CUDA: parameters
        live in host memory and visit the GPU for each ``forward_rows`` call.
        """
        from ttrl_megatron.megatron import optimizer as opt

        self.arch = unwrap(model_chunks[0]).ttrl_arch
        self.optim_config = optim
        config = model_chunks[0].config
        if gradient_checkpointing:
            # Read by TransformerBlock at forward time, so setting them on the built model's config is enough.
            config.recompute_granularity, config.recompute_method, config.recompute_num_layers = "full", "uniform", 1
        if param_offload and (optim is not None or not torch.cuda.is_available()):
            raise ValueError("param_offload is supported for the frozen reference model on a CUDA machine only "
                             "(set actor_rollout_ref.ref.megatron.param_offload=False)")
        self.param_offload = param_offload
        if config.bf16 or config.fp16:  # megatron's half-precision wrapper: casts inputs, returns fp32 outputs
            from megatron.core.transformer.module import Float16Module

            model_chunks = [Float16Module(config, chunk) for chunk in model_chunks]
        if optim is None:  # frozen (reference policy): no grads, no DDP, no optimizer
            for chunk in model_chunks:
                chunk.requires_grad_(False)
                chunk.eval()
                if param_offload:
                    chunk.to("cpu")
            self.model, self.optimizer, self.scheduler = list(model_chunks), None, None
        else:
            optim.validate()
            self.model = opt.wrap_ddp(model_chunks, optim.use_distributed_optimizer)
            self.optimizer = opt.build_optimizer(optim, self.model)
            self.scheduler = opt.build_scheduler(optim, self.optimizer)

    def sharded_state_dict(self, for_loading: bool = False) -> Dict[str, object]:
        """dist_checkpointing state of this role: ``model`` (per chunk ``model0``..), ``optimizer``, ``scheduler``.

        Model entries are megatron ShardedTensors (resharding-safe); the optimizer's are built from them, as
        megatron's own checkpointing does. Frozen models return only the model part. Pass ``for_loading=True``
        for the template given to ``dist_checkpointing.load``: it creates the optimizer state (Adam moments)
        that a fresh optimizer does not have yet, so that there is something to load into.
        """
        state: Dict[str, object] = {}
        model_sd = {}
        for i, chunk in enumerate(self.model):
            model_sd[f"model{i}"] = unwrap(chunk).sharded_state_dict()
        state["model"] = model_sd
        if self.optimizer is not None:
            flat = {}
            for sd in model_sd.values():
                flat.update(sd)
            state["optimizer"] = self.optimizer.sharded_state_dict(flat, is_loading=for_loading)
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore what ``sharded_state_dict`` described, as returned by ``dist_checkpointing.load``."""
        for i, chunk in enumerate(self.model):
            unwrap(chunk).load_state_dict(state["model"][f"model{i}"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    def forward_rows(
        self, tensors: Dict[str, torch.Tensor], keys: Sequence[str], plan: BatchingConfig, loss_fn: LossFn,
        out_keys: Sequence[str],
    ) -> Dict[str, torch.Tensor]:
        """Run ``loss_fn`` (forward-only) on this rank's DP share; ``{key: [B, R]}`` on every rank.

        ``loss_fn`` returns ``(None, {key: [b, R']})`` per micro-batch; positions with ``response_mask == 0``
        are zeroed so results do not depend on how rows were grouped.
        """
        ranks = Ranks.current()
        width = tensors["responses"].shape[1]
        rows = dp_shard_rows(tensors["responses"].shape[0], ranks.dp, ranks.dp_size)
        local = {k: tensors[k][rows] for k in keys}
        mbs = [batching.trim_columns(local, r, width, keys)
               for r in plan.split(local["attention_mask"], torch.arange(rows.numel()), width)]
        with torch.no_grad(), self._on_device():
            outs = run_schedule(self.model, mbs, loss_fn, forward_only=True)
        mask = response_mask_of(local).to(torch.float32)
        result = {}
        for key in out_keys:
            if ranks.is_last_stage:
                value = batching.scatter_rows(mbs, [o[key].float().cpu() for o in outs], rows.numel(), width) * mask
            else:
                value = torch.empty(rows.numel(), width, dtype=torch.float32)
            result[key] = all_gather_dp_rows(broadcast_from_last_stage(value))
        return result

    @contextlib.contextmanager
    def _on_device(self):
        """Bring offloaded parameters to the GPU for the duration of a forward pass (no-op without offload)."""
        if not self.param_offload:
            yield
            return
        for chunk in self.model:
            chunk.to(torch.cuda.current_device())
        try:
            yield
        finally:
            for chunk in self.model:
                chunk.to("cpu")

    def train(
        self, tensors: Dict[str, torch.Tensor], keys: Sequence[str], plan: BatchingConfig, mini_batch_rows: int,
        epochs: int, shuffle: bool, seed: int, loss_fn: Callable[..., Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
    ) -> Tuple[Dict[str, float], int]:
        """Epochs over global mini-batches of ``mini_batch_rows`` rows; one optimizer step each.

        ``loss_fn(counts, mb, output)`` returns this micro-batch's additive loss share and metric shares (values
        that SUM to the mini-batch metric over micro-batches and DP ranks). Returns (metrics averaged over the
        optimizer steps, including ``grad_norm`` and ``lr``, number of steps). The lr scheduler is NOT stepped
        here (the caller steps it once per training step, as verl).
        """
        if self.optimizer is None:
            raise RuntimeError("this engine has no optimizer (a frozen reference model cannot be updated)")
        ranks = Ranks.current()
        num_rows, width = tensors["responses"].shape
        gen = torch.Generator().manual_seed(seed)
        totals: Dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            order = torch.randperm(num_rows, generator=gen) if shuffle else None
            for rows in batching.mini_batch_rows(num_rows, mini_batch_rows, ranks.dp, ranks.dp_size, order):
                metrics = self._train_step(tensors, keys, plan, rows, width, ranks, loss_fn)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                steps += 1
        return {k: v / max(steps, 1) for k, v in totals.items()}, steps

    def _train_step(self, tensors, keys, plan, rows, width, ranks: Ranks, loss_fn) -> Dict[str, float]:
        from ttrl_megatron.megatron.optimizer import current_lr

        local = {k: tensors[k][rows] for k in keys}
        mask = response_mask_of(local)
        counts_vec = all_reduce_dp_sum(torch.tensor(
            [float(mask.sum()), float((mask.sum(-1) > 0).sum())], dtype=torch.float64))
        counts = GlobalCounts(tokens=float(counts_vec[0]), seqs=float(counts_vec[1]))
        mbs = [batching.trim_columns(local, r, width, keys)
               for r in plan.split(local["attention_mask"], torch.arange(rows.numel()), width)]
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = current_lr(self.optimizer)
        outs = run_schedule(self.model, mbs, partial(loss_fn, counts), forward_only=False, dp_size=ranks.dp_size)
        _, grad_norm, _ = self.optimizer.step()
        if grad_norm is None or self.optim_config.clip_grad == 0:
            grad_norm = self.optimizer.get_grad_norm()
        names = sorted(outs[0]) if outs else []
        names = _agree_on_names(names)
        local_sums = torch.tensor([sum(float(o[n]) for o in outs) for n in names], dtype=torch.float64)
        summed = sum_over_dp_last_stage(local_sums)
        metrics = {n: float(v) for n, v in zip(names, summed)}
        metrics["grad_norm"], metrics["lr"] = float(grad_norm), lr
        return metrics


def _agree_on_names(names: List[str]) -> List[str]:
    """Metric names as seen by the last pipeline stage, on every rank (other stages see no outputs)."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return names
    box = [names if parallel_state.is_pipeline_last_stage() else None]
    dist.broadcast_object_list(
        box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return box[0]


# ---------------------------------------------------------------------------------------------------------------
# construction from the typed config (ttrl_megatron.config sections)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model_chunks(hf_dir: str, dtype: str, *, value_head: bool = False,
                       load_format: str = "auto") -> List[torch.nn.Module]:
    """This rank's model stage(s) for the HF checkpoint ``hf_dir``, weights loaded (a value model gets the HF
    trunk and a zero value head). Needs megatron's parallel state (``parallel.init_distributed``).

    ``load_format`` (``model.load_format``): a folder without ``config.json`` (or a non-``hf`` format) is a NeMo-2,
    Megatron-Bridge / NeMo-RL, Megatron-LM or ttrl checkpoint, read by ``megatron/foreign`` (format detected and
    checked against ``load_format``)."""
    import os

    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    if dtype not in DTYPES:
        raise ValueError(f"megatron.dtype={dtype!r} is not one of {sorted(DTYPES)}")
    if load_format not in ("auto", "hf") or not os.path.isfile(os.path.join(hf_dir, "config.json")):
        from ttrl_megatron.megatron.foreign.api import load_initial_model

        return [load_initial_model(hf_dir, load_format, DTYPES[dtype], value_head=value_head)]
    model = build_gpt_model(ModelArchConfig.from_hf(hf_dir), value_head=value_head, params_dtype=DTYPES[dtype])
    if value_head:
        from ttrl_megatron.megatron.critic import load_critic_weights

        load_critic_weights(model, hf_dir)
    else:
        load_hf_weights(model, hf_dir)
    return [model]


def reject_model_overrides(model, prefix: str) -> None:
    """``*.model.override_config`` would change the architecture read from config.json; not supported here."""
    if model.override_config:
        raise ValueError(f"{prefix}.override_config={dict(model.override_config)} is not supported by the megatron "
                         "engine (the architecture comes from the checkpoint's config.json); remove it")


def reject_unsupported(megatron, prefix: str, *, trainable: bool) -> None:
    """One clear error for a ``*.megatron`` knob this engine cannot honour (checked when an engine is built).

    ``megatron`` is ``config.MegatronConfig`` (actor) or ``config.RoleMegatronConfig`` (ref, critic).
    """
    offloads = [n for n in ("param_offload", "optimizer_offload", "grad_offload") if getattr(megatron, n)]
    if trainable and offloads and not torch.cuda.is_available():  # they act around generation (megatron/offload.py)
        raise ValueError(f"{prefix}.{offloads[0]}=True moves a trained model's state off the GPU while vLLM generates; "
                         "there is no GPU here: set it False")
    if not trainable and set(offloads) - {"param_offload"}:
        raise ValueError(f"{prefix}: only param_offload applies to the frozen reference model; got {offloads}")
    from ttrl_megatron.config import MegatronConfig

    if isinstance(megatron, MegatronConfig):
        if megatron.virtual_pipeline_model_parallel_size not in (None, 1):
            raise ValueError(f"{prefix}.virtual_pipeline_model_parallel_size="
                             f"{megatron.virtual_pipeline_model_parallel_size}: the interleaved schedule is not "
                             "supported by this engine yet; set it to null")
        if megatron.context_parallel_size != 1:
            raise ValueError(f"{prefix}.context_parallel_size={megatron.context_parallel_size}: only 1 is supported")
        if megatron.sequence_parallel:
            raise ValueError(f"{prefix}.sequence_parallel=True is not supported by this engine (needs TE/Apex norms "
                             "and sequence-sharded activations); set it False")


class EngineHandles:
    """What a role exposes of its ``RoleEngine`` (``self.engine``) for checkpointing: model chunks, optimizer,
    lr scheduler and megatron's own sharded state. The trainer checkpoints through
    megatron/engine_checkpoint.py, which also handles the distributed optimizer's resharding on CPU."""

    engine: "RoleEngine"

    @property
    def model(self):
        return self.engine.model

    @property
    def optimizer(self):
        return self.engine.optimizer

    @property
    def scheduler(self):
        return self.engine.scheduler

    def sharded_state_dict(self, for_loading: bool = False):
        """Model (+ optimizer + lr scheduler) state for megatron dist_checkpointing (see RoleEngine)."""
        return self.engine.sharded_state_dict(for_loading)

    def load_state_dict(self, state) -> None:
        """Restore from ``dist_checkpointing.load(self.sharded_state_dict(for_loading=True), dir)``."""
        self.engine.load_state_dict(state)


def validate_update_settings(cfg) -> None:
    """Checks shared by the actor's and the critic's update configs (``cfg.prefix`` names the config section):
    positive batch/epoch counts and a known ``loss_agg_mode``."""
    from ttrl_megatron.algorithms.agg import LOSS_AGG_MODES

    for name in ("ppo_mini_batch_size", "rows_per_prompt", "ppo_epochs"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{cfg.prefix}.{name} must be a positive int, got {value!r}")
    if cfg.loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"{cfg.prefix}.loss_agg_mode={cfg.loss_agg_mode!r}; valid: {', '.join(LOSS_AGG_MODES)}")
