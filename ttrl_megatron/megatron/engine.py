"""The engine shared by the actor, reference and critic: ``RoleEngine`` = model chunks (+ DDP, optimizer and lr
scheduler when trainable) and the two loops every role needs, ``forward_rows`` (forward-only) and ``train``
(epochs x mini-batches x micro-batches, one optimizer step per mini-batch); plus what the roles share around it.

Data contract: every rank receives the SAME full batch (the driver math runs on every rank, ARCHITECTURE.md).
A rank processes only its data-parallel share; results are broadcast from the last pipeline stage over the PP
group and all-gathered over DP (collectives.py), so every rank returns the full ``[B, R]`` result.

Micro-batches: a fixed row count, or a token budget (``use_dynamic_bsz``) with the same micro-batch count on every
DP rank (batching.py); each is trimmed of all-padding columns, then laid out packed (THD, ``packed=True``, the
default) or right-aligned (packing.py), with sequences aligned to the TP size under sequence parallelism. The
pipeline schedule and the loss scaling are in schedule.py; model construction from the config in build.py.

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

from ttrl_megatron.config.perf import PerfSettings
from ttrl_megatron.megatron import batching
from ttrl_megatron.megatron.batching import MicroBatch
from ttrl_megatron.megatron.build import (  # noqa: F401 - re-exported: the engines' construction helpers
    DTYPES, build_model_chunks, engine_perf, reject_model_overrides, reject_unsupported,
)
from ttrl_megatron.megatron.collectives import (
    all_gather_dp_rows, all_reduce_dp_sum, broadcast_from_last_stage, dp_shard_rows, sum_over_dp_last_stage,
)
from ttrl_megatron.megatron.model import unwrap_model as unwrap
from ttrl_megatron.megatron.packing import build_layout
from ttrl_megatron.megatron.schedule import LossFn, Ranks, run_schedule  # noqa: F401 - Ranks re-exported

if TYPE_CHECKING:
    from ttrl_megatron.megatron.optimizer import OptimConfig


# ---------------------------------------------------------------------------------------------------------------
# the role engine shared by actor, reference and critic


@dataclass(frozen=True)
class BatchingConfig:
    """How one rank cuts its rows into micro-batches: a fixed row count, or a token budget (dynamic)."""

    micro_batch_size: Optional[int]  # rows per micro-batch (per rank)
    use_dynamic_bsz: bool
    max_token_len: int  # tokens the model processes per micro-batch when use_dynamic_bsz (batching.layout_tokens)
    prefix: str  # config path used in error messages

    def validate(self) -> None:
        if self.use_dynamic_bsz:
            if not isinstance(self.max_token_len, int) or self.max_token_len < 1:
                raise ValueError(f"{self.prefix}: the max token length per GPU must be a positive int with "
                                 f"use_dynamic_bsz, got {self.max_token_len!r}")
        elif not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise ValueError(f"{self.prefix}: the micro batch size per GPU must be a positive int when "
                             f"use_dynamic_bsz is off, got {self.micro_batch_size!r}")

    def split(self, lengths: torch.Tensor, shares: Sequence[torch.Tensor], rank: int, *, packed: bool,
              align: int) -> List[torch.Tensor]:
        """Micro-batches of ``shares[rank]`` as positions into that share. ``lengths [B]``: real tokens per row of
        the whole batch; ``shares``: every DP rank's row ids (token budgets give every rank the same count)."""
        if self.use_dynamic_bsz:
            return batching.plan_token_budget(shares, lengths, rank, self.max_token_len, packed=packed, align=align)
        return batching.split_fixed(torch.arange(shares[rank].numel()), self.micro_batch_size)  # host: positions


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
        gradient_checkpointing: bool = False, param_offload: bool = False, packed: bool = True,
        perf: Optional[PerfSettings] = None,
    ):
        """``model_chunks``: this rank's GPTModel stage(s), weights loaded (built with ``perf``). ``optim=None`` =
        frozen model.

        gradient_checkpointing: megatron full activation recompute, one layer per checkpoint (verl:
        ``model.enable_gradient_checkpointing``), unless the model was built with a recompute setting.
        param_offload: frozen models only, and only with CUDA: parameters live in host memory and visit the GPU for
        each ``forward_rows`` call. packed: THD packing of micro-batches (``model.use_remove_padding``), else
        right-aligned padded rows. perf: the settings the chunks were built with; its DDP overlap flags apply here.
        """
        from ttrl_megatron.megatron import optimizer as opt

        self.arch = unwrap(model_chunks[0]).ttrl_arch
        self.optim_config = optim
        self.perf = perf or PerfSettings()
        self.packed = packed
        config = model_chunks[0].config
        # Sequence parallelism splits the token dim over TP: every sequence (packed) or row width (padded) is
        # padded to a multiple of the TP size, as verl and NeMo-RL do.
        self.align = config.tensor_model_parallel_size if config.sequence_parallel else 1
        if gradient_checkpointing and config.recompute_granularity is None:
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
            # (a critic may run without the distributed optimizer while the actor's section turns the gather on)
            self.overlap_param_gather = self.perf.overlap_param_gather and optim.use_distributed_optimizer
            self.model = opt.wrap_ddp(model_chunks, optim.use_distributed_optimizer, self.perf.overlap_grad_reduce,
                                      self.overlap_param_gather)
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
        num_rows, width = tensors["responses"].shape
        shares = [dp_shard_rows(num_rows, r, ranks.dp_size) for r in range(ranks.dp_size)]
        rows = shares[ranks.dp]
        local = {k: tensors[k][rows] for k in keys}
        mbs = self._micro_batches(tensors, local, keys, plan, shares, ranks.dp, width)
        with torch.no_grad(), self._on_device():
            outs = run_schedule(self.model, mbs, loss_fn, forward_only=True)
        mask = response_mask_of(local).to(torch.float32)
        result = {}
        for key in out_keys:
            if ranks.is_last_stage:
                value = batching.scatter_rows(mbs, [o[key].float().cpu() for o in outs], rows.numel(), width) * mask
            else:
                value = torch.empty(rows.numel(), width, dtype=torch.float32)  # host: results come back there
            result[key] = all_gather_dp_rows(broadcast_from_last_stage(value))
        return result

    def _micro_batches(self, tensors, local, keys, plan: BatchingConfig, shares, rank: int, width: int
                       ) -> List[MicroBatch]:
        """This rank's micro-batches of ``local`` (= ``tensors`` at ``shares[rank]``), trimmed and laid out."""
        lengths = tensors["attention_mask"].sum(dim=-1)
        mbs = []
        for part in plan.split(lengths, shares, rank, packed=self.packed, align=self.align):
            mb = batching.trim_columns(local, part, width, keys)
            mb.layout = build_layout(mb.tensors["input_ids"], mb.tensors["attention_mask"], mb.prompt_width,
                                     packed=self.packed, align=self.align)
            mbs.append(mb)
        return mbs

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
        gen = torch.Generator().manual_seed(seed)  # host: shuffles row ids of the host batch
        totals: Dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            order = torch.randperm(num_rows, generator=gen) if shuffle else None  # host: row ids of the host batch
            shares = [batching.mini_batch_rows(num_rows, mini_batch_rows, r, ranks.dp_size, order)
                      for r in range(ranks.dp_size)]
            for k in range(len(shares[0])):
                metrics = self._train_step(tensors, keys, plan, [share[k] for share in shares], width, ranks,
                                           loss_fn)
                for name, v in metrics.items():
                    totals[name] = totals.get(name, 0.0) + v
                steps += 1
        if self.overlap_param_gather:
            # The last step's updated parameters are otherwise all-gathered only in the next forward's pre-hooks;
            # weight export, checkpoints and log-prob passes read them directly.
            for chunk in self.model:
                chunk.start_param_sync(force_sync=True)
        return {k: v / max(steps, 1) for k, v in totals.items()}, steps

    def _train_step(self, tensors, keys, plan, shares, width, ranks: Ranks, loss_fn) -> Dict[str, float]:
        from ttrl_megatron.megatron.optimizer import current_lr

        rows = shares[ranks.dp]
        local = {k: tensors[k][rows] for k in keys}
        mask = response_mask_of(local)
        counts_vec = all_reduce_dp_sum(torch.tensor(  # host: all_reduce_dp_sum moves it to the device
            [float(mask.sum()), float((mask.sum(-1) > 0).sum())], dtype=torch.float64))
        counts = GlobalCounts(tokens=float(counts_vec[0]), seqs=float(counts_vec[1]))
        mbs = self._micro_batches(tensors, local, keys, plan, shares, ranks.dp, width)
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
        local_sums = torch.tensor([sum(float(o[n]) for o in outs) for n in names],  # host: moved by the sum
                                  dtype=torch.float64)
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
