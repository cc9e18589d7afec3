"""The run-environment part of `validate()`: reliability fields (collective timeout, preemption signals, the hang
watchdog's budgets: trainer/preemption.py, trainer/watchdog.py) and the GPU memory plan (memory/plan.py). Each
returns its problems as lines naming the field, as the rest of validate.py does. Stdlib only at import time."""

from . import names as N
from .sections import TTRLTrainerConfig


# Signals a preemption handler cannot (SIGKILL, SIGSTOP) or must not (SIGINT: Ctrl-C stays a hard interrupt) take.
_UNCATCHABLE = ("SIGKILL", "SIGSTOP", "SIGINT")


def check_reliability(cfg: TTRLTrainerConfig) -> list[str]:
    """Collective timeout, preemption signals and the watchdog's budgets (trainer/preemption.py, trainer/watchdog.py)."""
    import signal

    tr, wd, p = cfg.trainer, cfg.trainer.watchdog, []
    if not tr.collective_timeout_s > 0:
        p.append(f"trainer.collective_timeout_s={tr.collective_timeout_s} must be > 0 (seconds)")
    for i, name in enumerate(tr.preempt_signals):
        if name in _UNCATCHABLE or not name.startswith("SIG") or not hasattr(signal, name):
            p.append(f"trainer.preempt_signals[{i}]={name!r} is not a signal a run can stop on; use names such as "
                     f"SIGTERM, SIGUSR1, SIGUSR2 (not {', '.join(_UNCATCHABLE)})")
    if not wd.poll_s > 0:
        p.append(f"trainer.watchdog.poll_s={wd.poll_s} must be > 0")
    if not wd.enable:
        return p
    for name in ("generation_s", "reward_s", "update_s", "sync_s", "checkpoint_s", "validation_s", "step_s",
                 "heartbeat_timeout_s"):
        value = getattr(wd, name)
        if value is None:
            continue
        if value <= wd.poll_s:
            p.append(f"trainer.watchdog.{name}={value} must be > trainer.watchdog.poll_s={wd.poll_s} (or null = off)")
        elif name not in ("step_s", "heartbeat_timeout_s") and value >= tr.collective_timeout_s:
            p.append(f"trainer.watchdog.{name}={value} is not below trainer.collective_timeout_s="
                     f"{tr.collective_timeout_s}: ranks waiting in a collective would time out before the watchdog "
                     f"reports where the run hangs; lower the budget or raise the timeout")
    return p


def check_memory(cfg: TTRLTrainerConfig, world: int) -> list[str]:
    """device=cuda: the memory plan (ttrl_megatron/memory/plan.py) of every phase must fit the GPU
    (trainer.gpu_memory_gib, else this GPU, else an H100 80GB); each phase over names itself and the knob to turn.
    trainer.memory_check=False turns the refusal into a warning. CPU runs are not planned against host memory (the
    CPU path is for tiny models and shares the host with vLLM's KV cache and the OS). Models without a config.json
    at model.path (foreign checkpoints) are planned by ``python -m ttrl_megatron.plan_memory`` only."""
    if cfg.trainer.device != "cuda":
        return []
    from ttrl_megatron.megatron.arch import ArchConfigError
    from ttrl_megatron.memory.inputs import device_memory, read_arch, te_available
    from ttrl_megatron.memory.plan import plan_memory
    from ttrl_megatron.memory.report import refusal

    try:
        arch = read_arch(cfg.actor_rollout_ref.model)
        critic_arch = read_arch(cfg.critic.model) if N.need_critic(cfg) else None
    except (ArchConfigError, OSError, ValueError):
        return []  # the model builders report an unreadable architecture with their own error
    if arch is None:
        return []
    device_bytes, source = device_memory(cfg.trainer.gpu_memory_gib)
    plan = plan_memory(cfg, arch, world=world, device_bytes=device_bytes, device_source=source,
                       te_available=te_available(), critic_arch=critic_arch)
    lines = refusal(plan)
    if lines and not cfg.trainer.memory_check:
        import warnings

        for line in lines:
            warnings.warn(line.replace("; or set trainer.memory_check=False to run anyway",
                                       " (trainer.memory_check=False: running anyway)"), stacklevel=3)
        return []
    return lines
