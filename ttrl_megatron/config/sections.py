"""Typed config sections outside the Megatron roles (data, algorithm, rewards, TTRL, trainer) and the ROOT config.

Pure dataclasses (stdlib only; no hydra/omegaconf, no torch). One default per field, here. The root's `__post_init__`
fills every "null = inherit" field from the field it names (one place, `_resolve_inherited`), so consumers read plain
values. Section names mirror verl/TTRL (`data`, `actor_rollout_ref`, `critic`, `algorithm`, `trainer`, `ttrl`, ...).
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from .model_sections import ActorConfig, CriticConfig, FsdpCompatConfig, MegatronConfig, ModelConfig, RefConfig, \
    RoleMegatronConfig
from .rollout_sections import RolloutConfig


@dataclass(kw_only=True)
class DataConfig:
    tokenizer: Optional[str] = None  # tokenizer directory; null = actor_rollout_ref.model.path
    train_files: Any = field(default_factory=list)  # parquet/jsonl files (list, or one path string)
    val_files: Any = field(default_factory=list)  # parquet/jsonl files for validation; empty = no validation
    prompt_key: str = "prompt"  # row field holding the prompt (chat messages or a plain string)
    reward_fn_key: str = "data_source"  # row field naming the dataset (metrics are grouped by it)
    max_prompt_length: int = 512  # tokens; prompts are left-padded to exactly this length
    max_response_length: int = 512  # tokens generated per rollout at most
    train_batch_size: int = 1024  # PROMPTS per training step, global
    val_batch_size: Optional[int] = None  # PROMPTS per validation batch, global; null = the whole validation set
    shuffle: bool = True  # reshuffle the training prompts every epoch (seeded by `seed` and the epoch)
    seed: int = 1  # sampler seed (verl's default)
    drop_last: bool = True  # drop the last incomplete training batch of each epoch
    filter_overlong_prompts: bool = False  # drop prompts longer than max_prompt_length at load (count logged)
    truncation: str = "error"  # overlong prompts not filtered: error | left (keep the end) | right (keep the start)
    prompt_template: str = "auto"  # auto (tokenizer's chat template if it has one, else plain) | chat | plain

    def __post_init__(self):
        # verl accepts a single path string as well as a list
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.val_files, str):
            self.val_files = [self.val_files]
        self.train_files = [str(p) for p in (self.train_files or [])]
        self.val_files = [str(p) for p in (self.val_files or [])]


@dataclass(kw_only=True)
class KLCtrlConfig:
    type: str = "fixed"  # in-reward KL coefficient controller: fixed | adaptive (Ziegler et al. 2019)
    kl_coef: float = 0.001  # initial/fixed beta
    horizon: int = 10000  # adaptive: rows over which the coefficient adapts, > 0
    target_kl: float = 0.1  # adaptive: target KL per token


@dataclass(kw_only=True)
class GrpoNsrConfig:
    """GRPO advantages re-weighted by correctness (ttrl-megatron/NSR-TTRL grpo_nsr); kwargs of that estimator."""

    positive_weight: float = 0.1  # advantage weight of rows judged correct (NSR paper's lambda), >= 0
    negative_weight: float = 1.0  # advantage weight of rows judged incorrect, >= 0
    correctness_threshold: float = 0.5  # a row is correct when its summed token_level_scores >= this


@dataclass(kw_only=True)
class PsrNsrConfig:
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347): +positive_weight on correct rows, -negative_weight on wrong ones.
    PSR only = negative_weight 0; NSR only = positive_weight 0. Same keys as grpo_nsr (kwargs of the estimator)."""

    positive_weight: float = 0.1  # weight of correct rows (paper's lambda; its recommended 0.1), >= 0
    negative_weight: float = 1.0  # weight of incorrect rows, >= 0
    correctness_threshold: float = 0.5  # a row is correct when its summed token_level_scores >= this


@dataclass(kw_only=True)
class FilterGroupsConfig:
    """DAPO dynamic sampling (verl `algorithm.filter_groups`): prompt groups whose kept rollouts all have the same
    metric value are dropped and further prompt batches are generated until data.train_batch_size prompts remain."""

    enable: bool = False  # drop no-signal prompt groups and generate more prompt batches to fill the step
    metric: Optional[str] = None  # per-rollout value compared: acc | score | seq_reward | seq_final_reward | a custom reward dict key
    max_num_gen_batches: int = 0  # prompt batches generated per step at most, then train on what there is; <= 0 = no limit
    max_inflight_gen_batches: int = 1  # verl's async knob; only 1 (prompt batches are generated one after another)


@dataclass(kw_only=True)
class RolloutCorrectionConfig:
    """Rollout-mismatch correction (verl `algorithm.rollout_correction`): importance weights / rejection between the
    rollout engine's log-probs and the actor's old log-probs (algorithms/rollout_corr.py). Off while both are null."""

    rollout_is: Optional[str] = None  # importance weights in the policy loss: null (off) | token | sequence
    rollout_is_threshold: Any = 2.0  # a number = cap of the weights (truncated IS); a "lower_upper" string = IcePop bounds
    rollout_is_batch_normalize: bool = False  # divide the weights by their batch mean
    rollout_rs: Optional[str] = None  # rejection sampling: null (off) or a comma list of token_k1..3, seq_sum_k1..3, seq_mean_k1..3, seq_max_k2/k3
    rollout_rs_threshold: Any = None  # one spec, or one per rollout_rs option (comma list): k1 "lower_upper" or a ratio bound; k2/k3 an upper bound
    bypass_mode: bool = False  # verl's bypass mode (old log-probs = rollout log-probs): not supported, must be False
    loss_type: str = "ppo_clip"  # verl's bypass-mode loss (ppo_clip | reinforce); unused while bypass_mode is False


@dataclass(kw_only=True)
class AlgorithmConfig:
    adv_estimator: str = "gae"  # advantage estimator name (registry in ttrl_megatron.algorithms); verl default gae
    gamma: float = 1.0  # discount (gae, reinforce_plus_plus)
    lam: float = 1.0  # GAE lambda
    norm_adv_by_std_in_grpo: bool = True  # grpo-family: divide by the group std (False = mean-only baseline, Dr.GRPO)
    use_kl_in_reward: bool = False  # subtract beta * KL(actor_old || ref) from the token rewards (needs the ref model)
    kl_penalty: str = "kl"  # in-reward KL estimator: kl|k1 | abs | mse|k2 | low_var_kl|k3
    kl_ctrl: KLCtrlConfig = field(default_factory=KLCtrlConfig)
    grpo_nsr: GrpoNsrConfig = field(default_factory=GrpoNsrConfig)
    psr_nsr: PsrNsrConfig = field(default_factory=PsrNsrConfig)
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)


@dataclass(kw_only=True)
class CustomRewardFunctionConfig:
    path: Optional[str] = None  # python file defining the scoring function; null = the built-in math grader
    name: str = "compute_score"  # function in that file; verl signature (data_source, solution_str, ground_truth, extra_info)


@dataclass(kw_only=True)
class OverlongBufferConfig:
    """DAPO's soft overlong punishment (verl `reward_model.overlong_buffer`, algorithms/overlong.py)."""

    enable: bool = False  # responses longer than data.max_response_length - len lose up to penalty_factor reward
    len: int = 0  # buffer in tokens before data.max_response_length over which the penalty grows; 1..max_response_length
    penalty_factor: float = 1.0  # reward lost by a response of data.max_response_length tokens, >= 0
    log: bool = False  # log reward/overlong_penalty_mean and reward/overlong_ratio every step


@dataclass(kw_only=True)
class RewardModelConfig:
    enable: bool = False  # a neural reward model; not supported (validate rejects True)
    reward_manager: Optional[str] = None  # majority | rule | custom; null = majority when ttrl.enable else rule
    overlong_buffer: OverlongBufferConfig = field(default_factory=OverlongBufferConfig)


@dataclass(kw_only=True)
class TTRLConfig:
    enable: bool = False  # test-time RL: pseudo labels by majority vote instead of ground truth (TTRL default off)
    n_votes_per_prompt: Optional[int] = None  # rollouts generated per prompt for the vote; null = rollout.n
    n_samples_per_prompt: Optional[int] = None  # of those, rollouts kept for training (<= votes); null = rollout.n
    sample_selection: str = "first"  # which rollouts are kept: first (TTRL) | random (seeded by trainer.seed)
    grader_workers: int = 2  # grader processes per rank (answers are graded in killable workers)
    grade_timeout_s: float = 5.0  # seconds per answer before its grader is killed and it scores 0
    min_majority_ratio: float = 0.0  # consensus filter: skip prompts whose winning answer holds less of the votes; 0 = off
    skip_no_answer: bool = False  # consensus filter: skip prompts whose votes hold no extractable answer (no label)
    answer_extraction: str = "boxed"  # boxed (last \boxed{}; several boxes = a list) | any (also unboxed conclusions)


@dataclass(kw_only=True)
class WatchdogConfig:
    """Per-rank hang watchdog (trainer/watchdog.py): a phase that runs past its budget makes every rank write its
    Python stacks to ``<run_dir>/hangs/`` and the job exit 124 naming the phase and rank. Budgets must stay below
    trainer.collective_timeout_s (validate checks it), so a rank waiting in a collective is reported first."""

    enable: bool = True  # run the watchdog thread on every rank
    generation_s: Optional[float] = 1200.0  # seconds per rollout generation (timing_s/gen); null = no budget
    reward_s: Optional[float] = 1200.0  # seconds per grading + voting phase (timing_s/reward); null = no budget
    update_s: Optional[float] = 1200.0  # seconds per log-prob / values / critic / actor update phase; null = no budget
    sync_s: Optional[float] = 600.0  # seconds per actor -> rollout weight push (timing_s/update_weights); null = none
    checkpoint_s: Optional[float] = 1500.0  # seconds per checkpoint save or load; null = no budget
    validation_s: Optional[float] = 1500.0  # seconds per validation run (timing_s/testing); null = no budget
    step_s: Optional[float] = None  # seconds per whole training step (catches hangs between phases); null = none
    heartbeat_timeout_s: Optional[float] = 300.0  # a rank whose watchdog thread is silent this long is reported gone
    poll_s: float = 1.0  # seconds between the watchdog's checks (and heartbeats), > 0


@dataclass(kw_only=True)
class TrainerConfig:
    logger: list[str] = field(default_factory=lambda: ["console", "jsonl"])  # of: console, jsonl, tensorboard, wandb
    project_name: str = "ttrl_megatron"  # tracker project / directory name
    experiment_name: str = "default"  # tracker run / directory name
    n_gpus_per_node: int = 8  # processes per node (GPUs, or CPU processes when device=cpu)
    nnodes: int = 1  # nodes
    device: str = "cuda"  # cuda | cpu
    total_epochs: int = 30  # passes over the training prompts (capped by total_training_steps)
    total_training_steps: Optional[int] = None  # steps to run; null = total_epochs x batches per epoch
    save_freq: int = -1  # checkpoint every this many steps (and at the end); -1 = never
    test_freq: int = -1  # validate every this many steps (and at the end); -1 = never
    val_before_train: bool = True  # validate once before the first step
    balance_batch: bool = True  # reorder rows so every DP rank gets about the same number of tokens
    default_local_dir: Optional[str] = None  # checkpoint root; null = checkpoints/<project_name>/<experiment_name>
    resume_mode: str = "auto"  # auto (latest checkpoint in default_local_dir if any) | disable | resume_path
    resume_from_path: Optional[str] = None  # global_step_<k> directory when resume_mode=resume_path
    max_actor_ckpt_to_keep: Optional[int] = None  # newest actor checkpoints kept; null = all
    max_critic_ckpt_to_keep: Optional[int] = None  # newest critic checkpoints kept; null = all
    rollout_data_dir: Optional[str] = None  # dump each step's rollouts as <step>.jsonl here; null = off
    validation_data_dir: Optional[str] = None  # dump validation generations here; null = off
    seed: int = 42  # global seed of the driver (uids, random sample selection, torch default generator)
    run_dir: Optional[str] = None  # resolved config, metrics and logs go here; null = default_local_dir
    collective_timeout_s: float = 1800.0  # torch.distributed timeout of one collective (NCCL/gloo), seconds
    # signals (names) that make every rank stop after the current step, checkpoint and exit 75; [] = none
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    memory_check: bool = True  # device=cuda: validate() refuses a config whose memory plan does not fit the GPU; False = run anyway
    gpu_memory_gib: Optional[float] = None  # GPU size the memory plan checks; null = this GPU's total memory, else 79 (H100 80GB)


@dataclass(kw_only=True)
class ActorRolloutRefConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass(kw_only=True)
class TTRLTrainerConfig:
    """The root config (Hydra config name `ttrl_trainer`). Build it with `compose()` or directly in Python."""

    data: DataConfig = field(default_factory=DataConfig)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    custom_reward_function: CustomRewardFunctionConfig = field(default_factory=CustomRewardFunctionConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    ttrl: TTRLConfig = field(default_factory=TTRLConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self):
        _resolve_inherited(self)


def _inherit(obj, name: str, value) -> None:
    if getattr(obj, name) is None:
        setattr(obj, name, value)


def _resolve_role_megatron(role: RoleMegatronConfig, actor: MegatronConfig) -> None:
    _inherit(role, "tensor_model_parallel_size", actor.tensor_model_parallel_size)
    _inherit(role, "pipeline_model_parallel_size", actor.pipeline_model_parallel_size)
    _inherit(role, "use_distributed_optimizer", actor.use_distributed_optimizer)


def _fold_fsdp_offload(megatron: MegatronConfig | RoleMegatronConfig, fsdp: FsdpCompatConfig) -> None:
    """verl FSDP offload knobs switch on the same-named Megatron offload (see FsdpCompatConfig)."""
    megatron.param_offload = megatron.param_offload or fsdp.param_offload
    megatron.optimizer_offload = megatron.optimizer_offload or fsdp.optimizer_offload


def _resolve_inherited(cfg: TTRLTrainerConfig) -> None:
    """Fill every `null = <other field>` default from that field. The only place such defaults are resolved."""
    arr = cfg.actor_rollout_ref
    actor, ref, rollout, critic = arr.actor, arr.ref, arr.rollout, cfg.critic
    _inherit(cfg.ttrl, "n_votes_per_prompt", rollout.n)
    _inherit(cfg.ttrl, "n_samples_per_prompt", rollout.n)
    _inherit(cfg.reward_model, "reward_manager", "majority" if cfg.ttrl.enable else "rule")
    _inherit(critic, "enable", cfg.algorithm.adv_estimator == "gae")
    for role, prefix in ((ref, "log_prob_"), (rollout, "log_prob_")):
        _inherit(role, prefix + "micro_batch_size_per_gpu", actor.ppo_micro_batch_size_per_gpu)
        _inherit(role, prefix + "use_dynamic_bsz", actor.use_dynamic_bsz)
        _inherit(role, prefix + "max_token_len_per_gpu", actor.ppo_max_token_len_per_gpu)
    for name in ("ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "use_dynamic_bsz", "ppo_epochs", "shuffle",
                 "loss_agg_mode"):
        _inherit(critic, name, getattr(actor, name))
    _inherit(critic.model, "path", arr.model.path)
    _resolve_role_megatron(ref.megatron, actor.megatron)
    _resolve_role_megatron(critic.megatron, actor.megatron)
    _fold_fsdp_offload(actor.megatron, actor.fsdp_config)
    _fold_fsdp_offload(ref.megatron, ref.fsdp_config)
    for ckpt in (actor.checkpoint, critic.checkpoint):
        _inherit(ckpt, "load_contents", list(ckpt.save_contents))
    _inherit(rollout, "max_model_len", cfg.data.max_prompt_length + cfg.data.max_response_length)
    _inherit(cfg.data, "tokenizer", arr.model.path)
    tr = cfg.trainer
    _inherit(tr, "default_local_dir", f"checkpoints/{tr.project_name}/{tr.experiment_name}")
    _inherit(tr, "run_dir", tr.default_local_dir)
