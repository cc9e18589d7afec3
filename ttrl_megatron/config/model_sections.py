"""Typed config sections for the Megatron roles: model, optimizer, parallel layout, actor, reference, critic.

Pure dataclasses (stdlib only; no hydra/omegaconf, no torch). Each field has exactly one default, here. Field comments give
the unit and the scope: "global" = summed over all data-parallel ranks, "per-rank" = what one process handles.
Names and defaults follow verl's `actor_rollout_ref.*` / `critic.*` keys so verl/TTRL overrides keep working.
"""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(kw_only=True)
class ModelConfig:
    path: Optional[str] = None  # HF model directory (config.json + weights + tokenizer); required
    load_format: str = "auto"  # weights format at `path`: auto | hf | nemo2 | mbridge | megatron_lm
    enable_gradient_checkpointing: bool = False  # recompute activations in backward (megatron full recompute)
    use_remove_padding: bool = True  # pack each micro-batch's sequences end to end, no pad tokens (THD; verl name)
    logprob_chunk_size: int = 512  # response tokens per chunk of the log-prob/entropy computation (output layer fused)
    trust_remote_code: bool = False  # passed to transformers when reading the HF config/tokenizer
    external_lib: Optional[str] = None  # modules to import on every rank, comma-separated (verl name): user algorithms
    override_config: dict[str, Any] = field(default_factory=dict)  # HF config attributes to override (verl name)


@dataclass(kw_only=True)
class OptimConfig:
    optimizer: str = "adam"  # adam (AdamW with decoupled weight decay) | sgd
    lr: float = 1e-6  # peak learning rate (verl actor default)
    lr_warmup_steps: int = -1  # warmup length in optimizer steps; -1 = use lr_warmup_steps_ratio
    lr_warmup_steps_ratio: float = 0.0  # warmup as a fraction of total_training_steps, in [0, 1]
    warmup_style: str = "constant"  # lr schedule after warmup: constant | linear | cosine (decay to min_lr_ratio*lr)
    min_lr_ratio: float = 0.0  # final lr of the decay as a fraction of lr, in [0, 1]
    weight_decay: float = 0.01  # decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam (beta1, beta2)
    eps: float = 1e-8  # Adam epsilon
    clip_grad: float = 1.0  # global grad-norm clip (over all ranks); 0 = off
    total_training_steps: int = -1  # optimizer steps for the schedule; -1 = filled in by the trainer at start-up


@dataclass(kw_only=True)
class TransformerOverrideConfig:
    """megatron-core TransformerConfig knobs (verl: `megatron.override_transformer_config`; megatron's names).

    null = chosen by the stack at start-up: on where the kernel exists (Transformer Engine / Apex / CUDA), off on
    CPU. An explicit True the stack cannot honour is refused by validate(), naming the field.
    """

    apply_rope_fusion: Optional[bool] = None  # TE fused RoPE; null = on when Transformer Engine is used
    bias_activation_fusion: bool = True  # fused bias + SwiGLU (torch.jit; runs on every stack)
    masked_softmax_fusion: Optional[bool] = None  # fused scale+mask+softmax kernel; null = on with CUDA (TE or kernel)
    gradient_accumulation_fusion: Optional[bool] = None  # wgrad GEMM into fp32 main_grad; null = on with Apex's kernel
    recompute_granularity: Optional[str] = None  # full | selective; null = full iff enable_gradient_checkpointing
    recompute_method: Optional[str] = None  # full recompute: uniform | block; null = uniform
    recompute_num_layers: Optional[int] = None  # full recompute: layers per checkpoint (uniform/block); null = 1
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])  # selective: what is recomputed


@dataclass(kw_only=True)
class DDPOverrideConfig:
    """megatron-core DistributedDataParallelConfig knobs (verl: `megatron.override_ddp_config`; megatron's names)."""

    overlap_grad_reduce: bool = True  # reduce grads bucket by bucket during backward (NeMo-RL default; any stack)
    overlap_param_gather: Optional[bool] = None  # gather updated params during the next forward; null = on w/ distopt


@dataclass(kw_only=True)
class MegatronConfig:
    """The actor's Megatron layout. megatron-core keeps ONE parallel layout per process, so ref and critic share it."""

    tensor_model_parallel_size: int = 1  # TP degree (ranks per tensor-parallel group)
    pipeline_model_parallel_size: int = 1  # PP degree (pipeline stages)
    virtual_pipeline_model_parallel_size: Optional[int] = None  # interleaved PP chunks per stage; null = off
    context_parallel_size: int = 1  # CP degree; only 1 is supported for now
    sequence_parallel: Optional[bool] = None  # megatron SP; null = on iff TP > 1 with Transformer Engine (verl)
    use_distributed_optimizer: bool = True  # shard optimizer state over DP ranks (verl default)
    seed: int = 42  # megatron model-parallel RNG seed (same on every rank; TP ranks get offsets)
    dtype: str = "bfloat16"  # parameter/compute dtype of the Megatron model: bfloat16 | float16 | float32
    param_offload: bool = False  # actor parameters in host memory while vLLM generates (GPU only)
    optimizer_offload: bool = False  # actor optimizer state (Adam moments, fp32 main params) in host memory while vLLM generates (GPU only)
    grad_offload: bool = False  # actor gradient buffers freed while vLLM generates (GPU only; they are zeroed before each update anyway)
    use_dist_checkpointing: bool = False  # load initial weights from a megatron dist checkpoint instead of HF
    dist_checkpointing_path: Optional[str] = None  # that checkpoint's directory when use_dist_checkpointing
    # fusions / recompute of every model (actor, reference, critic: one model family per process)
    override_transformer_config: TransformerOverrideConfig = field(default_factory=TransformerOverrideConfig)
    # gradient reduce / param gather overlap of the trained models (actor and critic)
    override_ddp_config: DDPOverrideConfig = field(default_factory=DDPOverrideConfig)


@dataclass(kw_only=True)
class RoleMegatronConfig:
    """Megatron knobs of the reference and critic. Parallel sizes must equal the actor's (one layout per process)."""

    tensor_model_parallel_size: Optional[int] = None  # null = the actor's; any other value must equal it
    pipeline_model_parallel_size: Optional[int] = None  # null = the actor's; any other value must equal it
    use_distributed_optimizer: Optional[bool] = None  # critic only; null = the actor's
    param_offload: bool = False  # ref: parameters in host memory except during its forward; critic: while vLLM generates (GPU only)
    optimizer_offload: bool = False  # critic only: optimizer state in host memory while vLLM generates (GPU only)
    grad_offload: bool = False  # critic only: gradient buffers freed while vLLM generates (GPU only)


@dataclass(kw_only=True)
class FsdpCompatConfig:
    """verl's FSDP knobs, accepted so FSDP-era commands compose. There is no FSDP here; per knob:

    - param_offload / optimizer_offload = True turn on the same-named `megatron.*` offload (either knob suffices).
    - offload_policy, forward_prefetch, fsdp_size have no Megatron meaning: validate() rejects non-default values.
    """

    param_offload: bool = False  # True => megatron.param_offload = True
    optimizer_offload: bool = False  # True => megatron.optimizer_offload = True
    offload_policy: bool = False  # FSDP2 CPUOffloadPolicy: rejected if True (use megatron.*_offload)
    forward_prefetch: bool = False  # FSDP prefetch: rejected if True (no Megatron equivalent)
    fsdp_size: int = -1  # FSDP shard group size: rejected unless -1 (Megatron shards by TP x PP x DP)


@dataclass(kw_only=True)
class PolicyLossConfig:
    loss_mode: str = "vanilla"  # vanilla|gspo|sapo|geo_mean|cispo|clip_cov|kl_cov|gpg or one from external_lib
    clip_cov_ratio: float = 0.0002  # clip_cov: fraction of valid tokens whose loss is zeroed
    clip_cov_lb: float = 1.0  # clip_cov: lower covariance bound of the candidates
    clip_cov_ub: float = 5.0  # clip_cov: upper covariance bound of the candidates
    kl_cov_ratio: float = 0.0002  # kl_cov: fraction of valid tokens that get the KL term
    ppo_kl_coef: float = 0.1  # kl_cov: coefficient of |logp - old_logp| on those tokens


@dataclass(kw_only=True)
class CheckpointConfig:
    # what a checkpoint holds, of: model, optimizer, extra (rng, sampler, step), hf_model (HF safetensors export)
    save_contents: list[str] = field(default_factory=lambda: ["model", "optimizer", "extra"])
    load_contents: Optional[list[str]] = None  # what to restore on resume; null = save_contents
    async_save: bool = False  # megatron dist_checkpointing async save


@dataclass(kw_only=True)
class ActorConfig:
    strategy: str = "megatron"  # training backend; only megatron exists here (verl's fsdp/fsdp2 are rejected)
    ppo_mini_batch_size: int = 256  # PROMPTS per optimizer step, global; x rollout.n rows, split over DP
    ppo_micro_batch_size_per_gpu: Optional[int] = None  # ROWS per fwd/bwd, per-rank; required unless use_dynamic_bsz
    use_dynamic_bsz: bool = True  # micro-batches by REAL token count (balanced, equal count over DP), not rows
    ppo_max_token_len_per_gpu: int = 16384  # tokens per micro-batch, per-rank, when use_dynamic_bsz
    ppo_epochs: int = 1  # passes over each rollout batch
    shuffle: bool = False  # shuffle rows between ppo epochs
    clip_ratio: float = 0.2  # PPO epsilon; used for clip_ratio_low/high when those are null
    clip_ratio_low: Optional[float] = 0.2  # lower PPO clip epsilon; null = clip_ratio
    clip_ratio_high: Optional[float] = 0.2  # upper PPO clip epsilon; null = clip_ratio
    clip_ratio_c: float = 3.0  # dual-clip constant for negative advantages, > 1
    loss_agg_mode: str = "token-mean"  # token-mean|token-sum|seq-mean-token-{sum,mean}|seq-mean-token-sum-norm
    loss_scale_factor: Optional[float] = None  # seq-mean-token-sum-norm divisor; null = max_response_length
    entropy_coeff: float = 0.0  # entropy bonus coefficient (subtracted from the loss)
    tau_pos: float = 1.0  # sapo: gate temperature of tokens with advantage > 0, > 0
    tau_neg: float = 1.05  # sapo: gate temperature of tokens with advantage <= 0, > 0
    calculate_sum_pi_squared: bool = False  # sum_v pi^2 per token (optimal_token_baseline); not computed yet: refused
    use_kl_loss: bool = False  # add kl_loss_coef * KL(actor || ref) to the loss (needs the reference model)
    kl_loss_coef: float = 0.001  # weight of that KL loss
    kl_loss_type: str = "low_var_kl"  # KL estimator: kl|k1 | abs | mse|k2 | low_var_kl|k3
    grad_clip: Optional[float] = None  # verl-FSDP name of optim.clip_grad; if set it must equal optim.clip_grad
    mask_truncated_responses: bool = False  # DAPO overlong filtering: responses cut at max_response_length get no policy loss
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    fsdp_config: FsdpCompatConfig = field(default_factory=FsdpCompatConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass(kw_only=True)
class RefConfig:
    log_prob_micro_batch_size_per_gpu: Optional[int] = None  # ROWS per forward, per-rank; null = actor's micro batch
    log_prob_use_dynamic_bsz: Optional[bool] = None  # null = actor.use_dynamic_bsz
    log_prob_max_token_len_per_gpu: Optional[int] = None  # tokens per micro-batch, per-rank; null = actor's
    megatron: RoleMegatronConfig = field(default_factory=RoleMegatronConfig)
    fsdp_config: FsdpCompatConfig = field(default_factory=FsdpCompatConfig)


@dataclass(kw_only=True)
class CriticModelConfig:
    path: Optional[str] = None  # HF model directory of the value model; null = the actor's model path
    use_remove_padding: bool = True  # pack each micro-batch's sequences end to end, no pad tokens (THD; verl name)
    enable_gradient_checkpointing: bool = False  # recompute activations in backward
    trust_remote_code: bool = False  # passed to transformers
    override_config: dict[str, Any] = field(default_factory=dict)  # HF config attributes to override


def _critic_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5)  # verl's critic lr default differs from the actor's


@dataclass(kw_only=True)
class CriticConfig:
    enable: Optional[bool] = None  # build a critic; null = only when algorithm.adv_estimator == gae
    model: CriticModelConfig = field(default_factory=CriticModelConfig)
    optim: OptimConfig = field(default_factory=_critic_optim)
    ppo_mini_batch_size: Optional[int] = None  # PROMPTS per optimizer step, global; null = actor's
    ppo_micro_batch_size_per_gpu: Optional[int] = None  # ROWS per forward/backward, per-rank; null = actor's
    use_dynamic_bsz: Optional[bool] = None  # null = actor.use_dynamic_bsz
    ppo_max_token_len_per_gpu: int = 32768  # tokens per micro-batch, per-rank, when use_dynamic_bsz
    ppo_epochs: Optional[int] = None  # null = actor.ppo_epochs
    shuffle: Optional[bool] = None  # null = actor.shuffle
    cliprange_value: float = 0.5  # value clipping range around the old values
    loss_agg_mode: Optional[str] = None  # null = actor.loss_agg_mode
    grad_clip: Optional[float] = None  # verl-FSDP name of optim.clip_grad; if set it must equal optim.clip_grad
    megatron: RoleMegatronConfig = field(default_factory=RoleMegatronConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
