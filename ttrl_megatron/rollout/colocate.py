"""The colocated step's memory choreography: vLLM and the trainer take turns on each GPU.

Order (vLLM's sleep-mode docs; verl `rollout_mode`; NeMo-RL `refit_policy_generation`; reference/
gpu-bringup-anchors.md §2, pitfalls 5-7), called by the trainer at three points:

  generate (engine awake, trainer state offloaded when configured)
  after_generate():  engine.sleep(level)  ->  trainer state back on the device
  ... old/ref log-probs, values, critic and actor updates ...
  refit():           offload grads + optimizer state  ->  actor scores the parity sequences  ->
                     engine.wake_up(["weights"])  ->  push (full weights; prefix cache reset)  ->
                     offload actor params  ->  engine.wake_up(["kv_cache"])  ->  engine scores the parity sequences
  trainer_state():   a context for work that needs the trainer's state between steps (checkpoint saves): the
                     engine sleeps, the state comes back, and a refit follows

Sleep level: 2 by default (verl with vLLM >= 0.18, TRL colocate). Level 2 discards the weights instead of copying
them to host memory (level 1): the sleep is faster and needs no host RAM for a second copy of the model, and
nothing is lost because every refit pushes the full model anyway (the engine refuses to sample until a full update
has been loaded, so a partial push after a level-2 sleep fails loudly instead of sampling from garbage). The KV
cache never wakes before the weights (illegal memory access, vllm-project/vllm#45619), and the prefix cache is
dropped after every weight load and every KV-cache wake.

What is offloaded: the trained roles' params / grads / optimizer state as their `*.megatron.*_offload` keys say
(megatron/offload.py). The frozen reference needs no hook here: with `ref.megatron.param_offload` its parameters
live in host memory and visit the device only for its own forward (megatron/engine.py `_on_device`), so they are
off the device during generation already.

Why the parity check is split: the engine's half needs the KV cache (a prefill), the actor's half needs the actor's
parameters on the device; scoring the actor before the push lets its parameters leave before the KV cache returns,
so the step never holds the full engine and the actor's parameters at once.

No vllm and no megatron imports: the engine, the weight sync (bridge/sync.py) and the offloaders
(megatron/offload.py `Offloaders`, with offload(parts)/load()) are duck-typed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _NoOffload:
    def __bool__(self) -> bool:
        return False

    def offload(self, parts=None) -> dict:
        return {}

    def load(self) -> None:
        pass


class ColocatedRollout:
    """Sleep/wake of one rank's engine around the trainer's phases, with optional trainer-state offload.

    engine: the rank's RolloutEngine (sleep/wake_up). sync: the `WeightSync` (begin_check/load/end_check).
    offload: the trained roles' offloaders (None = keep the trainer's state on the device).
    """

    def __init__(self, engine, sync, offload=None):
        self.engine, self.sync = engine, sync
        self.offload = offload if offload is not None else _NoOffload()

    def after_generate(self) -> None:
        """Generation is over: the engine frees its memory, the trainer's state comes back."""
        self.engine.sleep()
        self.offload.load()

    def refit(self, check: bool = True) -> dict[str, float]:
        """Updates are over: push the actor into the woken engine, in the anchors' order; returns the sync stats
        (+ parity metrics when due, + bytes offloaded). `check=False` skips a due parity check."""
        stats = dict(self.offload.offload(("grads", "optimizer")))
        pending = self.sync.begin_check() if check else None
        self.engine.wake_up(["weights"])
        stats.update(self.sync.load())
        stats.update(self.offload.offload(("params",)))
        self.engine.wake_up(["kv_cache"])
        stats.update(self.sync.end_check(pending))
        return stats

    @contextlib.contextmanager
    def trainer_state(self) -> Iterator[None]:
        """The trainer's full state on the device inside the block (e.g. to save a checkpoint); a no-op without
        offload. With offload, the engine sleeps meanwhile (the memory plan of the update phase holds) and is
        refit afterwards (without a parity check: the weights did not change)."""
        if not self.offload:
            yield
            return
        self.after_generate()
        try:
            yield
        finally:
            self.refit(check=False)
