"""Measure what the trainer's Megatron engines allocate, per phase, to check the memory plan (plan.py) against.

``measure_engine(cfg, arch, fake=...)`` builds the actor (and the reference and critic when the config has them)
with the TRAINER's builders (trainer/builders.py: the same config adapters, the same DDP/optimizer), then runs the
phases of one step on a synthetic batch at the planned shapes (every row full length: the worst case the plan
predicts) under a ``StorageCounter``:

=================  ==========================================================
phase              what runs
=================  ==========================================================
``old_log_prob``   ``actor.compute_log_prob(batch)``
``ref``            ``ref.compute_log_prob(batch)``
``values``         ``critic.compute_values(batch)``
``update_critic``  ``critic.update_critic(batch)`` (one optimizer step)
``update_actor``   ``actor.update_policy(batch)`` (one optimizer step)
``update_weights`` the weight-sync export (``export_buckets``), drained
=================  ==========================================================

Generation (vLLM) is not measured here: its memory is vLLM's budget (``gpu_memory_utilization``), checked on a GPU
by scripts/gpu_check.sh.

Two modes:
- real (``fake=False``): the tiny model's real weights on the CPU, real tensors, the whole engine path including
  the optimizer step (torch Adam on CPU). Run it in a process whose torch.distributed / megatron state is set up
  (``init_parallel``).
- fake (``fake=True``): real shapes (e.g. Qwen2.5-Math-1.5B) with no memory: the models, DDP buffers and optimizer
  state are built under ``FakeTensorMode`` inside ``megatron/fake_world.fake_world`` (one rank of the layout, no-op
  collectives). The batch stays real; fake mode is entered around each model forward (fake parameters carry it into
  every later op). Stand-ins, each only where fake tensors cannot go: no weight loading (values are irrelevant);
  the padded-vocab mask of the output layer is computed on real tensors; the float32 norm weights of the local
  spec are made bf16 as ``Float16Module`` would (it cannot swap fake parameters); the schedule's per-micro-batch
  outputs are replaced by real zeros of their shape (the engine reduces metrics with ``float()``) and each stage
  keeps its own metric names (the last stage broadcasts them as objects, which a fake group cannot carry); DP gradient
  reduction (in place on the grad buffer) and the optimizer step (data-dependent: the grad norm) are skipped, so
  the fake ``update_*`` phases are forward + backward; the optimizer state is sized by creating it.

Both modes create the optimizer state (Adam moments) before measuring, as after a run's first step.
Reported per role: bytes of parameters, gradient buffers and optimizer state (unique storages, counted on the
objects); per phase: the peak bytes allocated above what was alive when the phase started.

torch + our megatron package (no megatron.core import here; megatron/fake_world.py holds that part).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Dict, Iterator, Optional

import torch

from ttrl_megatron.memory.counter import StorageCounter


@dataclasses.dataclass
class Measured:
    """Bytes per state item (``"actor.params"``, ``"actor.grads"``, ``"actor.optimizer"``, ``"ref.params"`` ...)
    and peak bytes above the phase's starting point per phase."""

    state: Dict[str, int] = dataclasses.field(default_factory=dict)
    phases: Dict[str, int] = dataclasses.field(default_factory=dict)

    def gib(self) -> dict:
        return {"state": {k: v / 2**30 for k, v in self.state.items()},
                "phases": {k: v / 2**30 for k, v in self.phases.items()}}


# ---------------------------------------------------------------------------------------------------------------
# state sizes, counted on the objects


def _storage_bytes(tensors, seen: set) -> int:
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        st = t.untyped_storage()
        if st._cdata in seen:
            continue
        seen.add(st._cdata)
        total += st.nbytes()
    return total


def _grad_buffers(model_chunks) -> list:
    out = []
    for chunk in model_chunks:
        for buf in list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", [])):
            out.append(buf.grad_data)
    return out


def _optimizer_tensors(optimizer) -> Iterator[torch.Tensor]:
    """Every tensor the (chained / distributed / mixed-precision) optimizer owns: state and fp32 main params."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        for state in torch_opt.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
        for group in torch_opt.param_groups:
            yield from group["params"]  # fp32 main params (views of model params when those are fp32)


def init_optimizer_state(optimizer) -> None:
    """Create the Adam moments now (torch creates them lazily at the first step), as megatron does for loading."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        init = getattr(opt, "init_state_fn", None)
        if init is not None and getattr(opt, "optimizer", None) is not None:
            init(opt.optimizer, opt.config)
            for state in opt.optimizer.state.values():  # torch Adam then expects its step counter too
                state.setdefault("step", torch.zeros(()))  # host: torch keeps a CPU step counter


def role_state(name: str, engine) -> Dict[str, int]:
    """``{name.params, name.grads, name.optimizer}`` bytes of a RoleEngine (optimizer items only when trainable)."""
    seen: set = set()
    params = _storage_bytes([p for chunk in engine.model for p in chunk.parameters()], seen)
    out = {f"{name}.params": params}
    if engine.optimizer is not None:
        out[f"{name}.grads"] = _storage_bytes(_grad_buffers(engine.model), seen)
        out[f"{name}.optimizer"] = _storage_bytes(_optimizer_tensors(engine.optimizer), seen)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the synthetic batch


def synthetic_batch(cfg, vocab_size: int, rows: int, seed: int = 0):
    """A ``DataProto`` of ``rows`` full-length rows (no padding: the plan's worst case) with every key the phases
    read: ids/masks, responses, old/ref log-probs, advantages, values and returns."""
    from ttrl_megatron.protocol import DataProto

    p, r = cfg.data.max_prompt_length, cfg.data.max_response_length
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rows, p + r), generator=g)  # host: the driver's batch
    zeros = torch.zeros(rows, r)  # host: the driver's batch
    tensors = {"input_ids": ids, "attention_mask": torch.ones(rows, p + r, dtype=torch.long),  # host: driver batch
               "responses": ids[:, p:].clone(), "response_mask": torch.ones(rows, r, dtype=torch.long),  # host
               "old_log_probs": zeros - 1.0, "ref_log_prob": zeros - 1.0, "advantages": zeros + 1.0,
               "values": zeros.clone(), "returns": zeros + 0.5}
    return DataProto.from_dict(tensors)


# ---------------------------------------------------------------------------------------------------------------
# fake-mode stand-ins


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _to_dtype_in_place(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What ``Float16Module``'s ``module.bfloat16()`` does, for fake parameters (which ``Module._apply`` cannot swap):
    replace every floating parameter of another dtype (the local spec's float32 norms) by a ``dtype`` one."""
    for mod in module.modules():
        for pname, p in list(mod._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                mod._parameters[pname] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
    return module


def _skip_loading(*args, **kwargs) -> None:
    """Fake parameters hold no values: weight loading is skipped."""


# (module, attribute, stand-in): "real" = run the function on real tensors (its data-dependent host checks).
_OPTIONAL_STAND_INS = (
    ("ttrl_megatron.megatron.model", "_mask_vocab_padding", "real"),
    ("ttrl_megatron.megatron.model", "_install_output_modes", "real"),
    ("ttrl_megatron.megatron.hf_io", "load_hf_weights", _skip_loading),
    ("ttrl_megatron.megatron.critic", "load_critic_weights", _skip_loading),
    ("ttrl_megatron.megatron.build", "load_critic_weights", _skip_loading),
)


class _FakeBuild:
    """Context: the trainer's builders build models, DDP buffers and optimizers under ``fake_mode``."""

    def __init__(self, fake_mode, counter: StorageCounter):
        self.fake_mode, self.counter = fake_mode, counter
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        import importlib

        from torch._subclasses.fake_tensor import unset_fake_temporarily

        from ttrl_megatron.megatron import model as model_mod

        real_build = model_mod.build_gpt_model
        fake_mode = self.fake_mode

        def build(arch, *args, **kwargs):
            with fake_mode:
                return real_build(arch, *args, **kwargs)

        def on_real_tensors(fn):  # the padded-vocabulary mask is data-dependent (``pad.any()``)
            def wrapped(*args, **kwargs):
                with unset_fake_temporarily():
                    return fn(*args, **kwargs)
            return wrapped

        def as_module_dtype(module):
            dtype = next(p.dtype for p in module.parameters() if p.dtype in (torch.bfloat16, torch.float16))
            return _to_dtype_in_place(module, dtype)

        s = self.stack
        s.enter_context(_patched(model_mod, "build_gpt_model", build))
        s.enter_context(_patched(torch.nn.Module, "bfloat16", as_module_dtype))
        s.enter_context(_patched(torch.nn.Module, "half", as_module_dtype))
        # internals that moved between engine versions: patched where this checkout has them
        for module, name, replacement in _OPTIONAL_STAND_INS:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError:
                continue
            if hasattr(mod, name):
                value = on_real_tensors(getattr(mod, name)) if replacement == "real" else replacement
                s.enter_context(_patched(mod, name, value))
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)


def _fake_forwards(engine, fake_mode, counter: StorageCounter) -> None:
    """Run every model chunk's forward inside ``fake_mode`` with the counter innermost; skip the DP grad reduction
    and the optimizer step (see module doc)."""
    for chunk in engine.model:
        forward = chunk.forward

        def fake_forward(*args, _forward=forward, **kwargs):
            with fake_mode, counter.nested():
                return _forward(*args, **kwargs)

        chunk.forward = fake_forward
    engine.model[0].config.finalize_model_grads_func = None
    if engine.optimizer is not None:
        engine.optimizer.step = lambda: (True, 0.0, None)
        engine.optimizer.get_grad_norm = lambda: 0.0


def _real_outputs(run_schedule: Callable) -> Callable:
    """``run_schedule`` whose per-micro-batch outputs are real zeros of the fake outputs' shapes."""

    def wrapped(*args, **kwargs):
        outs = run_schedule(*args, **kwargs)
        return [{k: torch.zeros(v.shape, dtype=v.dtype) for k, v in o.items()} for o in outs]  # host: metrics

    return wrapped


# ---------------------------------------------------------------------------------------------------------------
# the measurement


def _phase(counter: StorageCounter, fn: Callable[[], object]) -> int:
    counter.reset_peak()
    start = counter.current
    out = fn()
    del out
    return counter.peak - start


def measure_engine(cfg, arch, *, fake: bool, rows: Optional[int] = None, seed: int = 0) -> Measured:
    """Build the config's Megatron roles with the trainer's builders and measure every engine phase (module doc).

    ``cfg``: the root config (``TTRLTrainerConfig``), already validated; its model path must hold a ``config.json``
    (the critic reads its architecture from there); ``arch``: the actor's ``ModelArchConfig``. Needs torch.distributed
    and megatron's parallel state (real: ``init_parallel``; fake: ``megatron.fake_world.fake_world``).
    ``rows``: global rows of the synthetic batch (default: one actor mini-batch, ppo_mini_batch_size x rollout.n).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ttrl_megatron.bridge.export import export_buckets
    from ttrl_megatron.config import need_critic, need_reference_policy
    from ttrl_megatron.megatron import engine as engine_mod
    from ttrl_megatron.trainer import builders as B

    arr, tr = cfg.actor_rollout_ref, cfg.trainer
    n = arr.rollout.n
    rows = rows or arr.actor.ppo_mini_batch_size * n
    counter = StorageCounter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    roles: Dict[str, object] = {}
    with counter, contextlib.ExitStack() as stack:
        if fake:
            stack.enter_context(_FakeBuild(fake_mode, counter))
            stack.enter_context(fake_mode)
            stack.enter_context(counter.nested())
        roles["actor"] = B.build_actor(arr.actor, arr.rollout, arr.model, arch, n, 1000, tr.seed)
        if need_reference_policy(cfg):
            roles["ref"] = B.build_reference(arr.ref, arr.model, arch, arr.actor.megatron.dtype, arr.rollout.temperature)
        if need_critic(cfg):
            roles["critic"] = B.build_critic(cfg.critic, arr.actor.megatron.dtype, n, 1000, tr.seed)
        for role in roles.values():
            if role.engine.optimizer is not None:
                init_optimizer_state(role.engine.optimizer)
    measured = Measured()
    for name, role in roles.items():
        measured.state.update(role_state(name, role.engine))
    if fake:
        for role in roles.values():
            _fake_forwards(role.engine, fake_mode, counter)
    batch = synthetic_batch(cfg, arch.vocab_size, rows, seed)
    actor, ref, critic = roles["actor"], roles.get("ref"), roles.get("critic")
    phases = [("old_log_prob", lambda: actor.compute_log_prob(batch))]
    if ref is not None:
        phases.append(("ref", lambda: ref.compute_log_prob(batch)))
    if critic is not None:
        phases += [("values", lambda: critic.compute_values(batch)), ("update_critic", lambda: critic.update_critic(batch))]
    phases.append(("update_actor", lambda: actor.update_policy(batch)))
    bucket_bytes = arr.rollout.sync.bucket_size_mb << 20
    phases.append(("update_weights", lambda: [len(b) for b in export_buckets(actor.model, bucket_bytes)]))
    with contextlib.ExitStack() as stack:
        if fake:
            stack.enter_context(_patched(engine_mod, "run_schedule", _real_outputs(engine_mod.run_schedule)))
            # the metric names come from the last stage over broadcast_object_list, which a fake group cannot carry
            stack.enter_context(_patched(engine_mod, "_agree_on_names", lambda names: names))
        stack.enter_context(counter)
        counter.track(t for role in roles.values() for chunk in role.engine.model for t in chunk.parameters())
        for name, fn in phases:
            measured.phases[name] = _phase(counter, fn)
    return measured


def measurable_config(cfg):
    """A copy of ``cfg`` the fake measurement can build: device=cpu (megatron's local spec), the GPU-only offloads
    off (an offload moves state between phases; the plan's residency accounts for it, the measurement reports each
    phase with its model on the device), DP communication overlap off and rows padded rather than packed."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.trainer.device = "cpu"
    for meg in (cfg.actor_rollout_ref.actor.megatron, cfg.actor_rollout_ref.ref.megatron, cfg.critic.megatron):
        meg.param_offload = meg.optimizer_offload = meg.grad_offload = False
        # overlapped DP grad reduce / param gather work in place on the grad and param buffers (no memory of their
        # own) through coalesced collectives that fake tensors cannot take: off, where this checkout has them
        ddp = getattr(meg, "override_ddp_config", None)
        for name in ("overlap_grad_reduce", "overlap_param_gather"):
            if hasattr(ddp, name):
                setattr(ddp, name, False)
    # packed (THD) micro-batches read their sequence boundaries on the host (data-dependent under fake tensors);
    # the measured rows are all full length, so the padded layout holds the same tokens
    cfg.actor_rollout_ref.model.use_remove_padding = cfg.critic.model.use_remove_padding = False
    return cfg


def measure_rank(cfg, arch, rank: int) -> tuple:
    """Fake-tensor measurement of global rank ``rank`` of the config's TP x PP x DP layout in this process
    (which must have no torch.distributed / megatron state). Returns (pipeline stage, ``Measured``)."""
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.fake_world import fake_world

    meg, tr = cfg.actor_rollout_ref.actor.megatron, cfg.trainer
    world = tr.nnodes * tr.n_gpus_per_node
    layout = ParallelLayout.from_world(world, meg.tensor_model_parallel_size, meg.pipeline_model_parallel_size)
    stage = layout.coords(rank)["pp"]
    with fake_world(layout.tp, layout.pp, rank, world, seed=tr.seed):
        measured = measure_engine(measurable_config(cfg), arch, fake=True)
    return stage, measured
