"""Typed config of the rollout engine (vLLM): sampling, memory, validation sampling, weight-sync checks.

Pure dataclasses (stdlib only). One default per field, here; keys follow verl's `actor_rollout_ref.rollout.*`.
"""

from dataclasses import dataclass, field
from typing import Optional


@dataclass(kw_only=True)
class ValKwargsConfig:
    n: int = 1  # samples per validation prompt (maj@n / mean@n are computed over them)
    temperature: float = 0.0  # validation sampling temperature (0 = greedy)
    top_p: float = 1.0  # nucleus mass, in (0, 1]
    top_k: int = -1  # top-k cut; -1 = off
    do_sample: bool = False  # False = greedy decoding whatever the temperature


@dataclass(kw_only=True)
class SyncConfig:
    """Actor -> rollout weight push and its parity check (rollout logprobs vs the actor's recomputed logprobs)."""

    check_freq: int = 1  # run the parity check every this many weight pushes; 0 = never
    logprob_diff_threshold: float = 0.05  # bound on token_mult_prob_error - 1 = mean exp|logp_rollout - logp_actor| - 1 over the check's tokens (the model's own samples); ~ mean |dlogp|: healthy bf16 0.01-0.03, fp32 ~1e-6
    on_mismatch: str = "raise"  # raise | warn when the threshold is exceeded
    bucket_size_mb: int = 512  # weights are pushed in buckets of about this many MiB (whole vLLM modules; peak extra memory ~ one bucket)


@dataclass(kw_only=True)
class RolloutConfig:
    name: str = "vllm"  # rollout engine; only vllm
    n: int = 1  # rollouts per prompt used for TRAINING (= ttrl.n_samples_per_prompt when ttrl.enable)
    temperature: float = 1.0  # training sampling temperature
    top_p: float = 1.0  # nucleus mass, in (0, 1]
    top_k: int = -1  # top-k cut; -1 = off
    do_sample: bool = True  # False = greedy (then all n rollouts of a prompt coincide)
    ignore_eos: bool = False  # training rollouts keep generating after EOS up to max_response_length
    max_model_len: Optional[int] = None  # vLLM context length, tokens; null = data.max_prompt_length + max_response_length
    max_num_batched_tokens: int = 8192  # vLLM scheduler token budget per engine step
    max_num_seqs: int = 1024  # vLLM max concurrent sequences per engine
    gpu_memory_utilization: float = 0.5  # fraction of GPU memory vLLM may take (GPU only), in (0, 1]
    kv_cache_gib: float = 4.0  # KV cache size on CPU, GiB per engine (VLLM_CPU_KVCACHE_SPACE); CPU only
    enforce_eager: Optional[bool] = None  # no CUDA graphs / torch.compile; null = eager on CPU (starts in seconds), CUDA graphs on GPU (verl: false)
    cudagraph_capture_sizes: Optional[list[int]] = None  # batch sizes captured as CUDA graphs when not eager (verl name); null = vLLM's list; graph memory stays allocated through sleep
    free_cache_engine: bool = True  # the engine sleeps while the trainer works (vLLM sleep mode on GPU; on CPU the order is kept, nothing is freed)
    sleep_level: int = 2  # what sleep frees on GPU: 2 = weights + KV cache (every push reloads the full model), 1 = KV cache, weights backed up to host
    enable_chunked_prefill: bool = True  # vLLM chunked prefill
    dtype: str = "bfloat16"  # vLLM weights/compute dtype: bfloat16 | float16 | float32
    tensor_model_parallel_size: int = 1  # vLLM TP: one engine over each group of this many consecutive ranks (external_launcher); 1 = one engine per rank
    seed: int = 0  # sampling seed; each rollout group (TP group) samples with seeds derived from it, the step and the group
    log_prob_micro_batch_size_per_gpu: Optional[int] = None  # ROWS per old-logprob forward, per-rank; null = actor's
    log_prob_use_dynamic_bsz: Optional[bool] = None  # null = actor.use_dynamic_bsz
    log_prob_max_token_len_per_gpu: Optional[int] = None  # tokens per micro-batch, per-rank; null = actor's
    val_kwargs: ValKwargsConfig = field(default_factory=ValKwargsConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
