"""``python -m ttrl_megatron.plan_memory <the training command's Hydra overrides>``: the predicted per-GPU memory
of every phase of a colocated step (memory/plan.py), the largest phase, and whether it fits the GPU.

    python -m ttrl_megatron.plan_memory --config-name examples/qwen2.5-math-1.5b \\
        actor_rollout_ref.model.path=/models/Qwen2.5-Math-1.5B

The config is composed exactly as ``ttrl_megatron.main`` composes it (``config.compose``: same conf/ tree, same
overrides, same unknown-key errors). The GPU size is ``trainer.gpu_memory_gib`` when set, else this machine's GPU
(``LOCAL_RANK``) when CUDA is present, else an H100 80GB. Options (before or between the overrides):

- ``--config-name NAME`` (``-cn``): the root config, as for ``main`` (default ``ttrl_trainer``);
- ``--world N``: processes (default ``trainer.nnodes x trainer.n_gpus_per_node``);
- ``--json``: the plan as JSON (scripts/gpu_check.sh reads it);
- ``--no-te``: plan a GPU run without Transformer Engine (unfused attention, torch Adam);
- ``--measure-rank R``: also build rank R of the layout with fake tensors (no memory, no GPU: megatron's local spec
  on a fake process group, memory/measure.py) and print what it allocates per phase next to the plan for that
  spec. Needs ``model.path`` with a ``config.json``; takes seconds to a few minutes.

Exit status: 0 = fits, 1 = does not fit, 2 = config error.
"""
from __future__ import annotations

import argparse
import json
import sys

from ttrl_megatron.config import ConfigError, compose


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m ttrl_megatron.plan_memory", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-name", "-cn", default="ttrl_trainer")
    parser.add_argument("--config-dir", default=None, help="conf/ tree to compose from (default: the repo's)")
    parser.add_argument("--world", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-te", action="store_true")
    parser.add_argument("--measure-rank", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; Hydra overrides are key=value")
    return args, overrides


def _arch(model, prefix: str):
    from ttrl_megatron.memory.inputs import read_arch

    try:
        arch = read_arch(model, foreign=True)
    except (ValueError, OSError) as exc:  # unknown format, unsupported architecture, unreadable file
        raise ConfigError(f"{prefix}.path={model.path!r}: {exc}") from exc
    if arch is None:
        raise ConfigError(f"{prefix}.path is not set; give the model folder (an HF folder with config.json, or a "
                          "NeMo-2 / Megatron-Bridge / Megatron-LM / ttrl checkpoint)")
    return arch


def plan_from_args(args, overrides):
    """(config, arch, plan) for the CLI's arguments."""
    from ttrl_megatron.memory.inputs import device_memory, te_available
    from ttrl_megatron.memory.plan import plan_memory

    cfg = compose(overrides, config_name=args.config_name, config_dir=args.config_dir)
    arr = cfg.actor_rollout_ref
    arch = _arch(arr.model, "actor_rollout_ref.model")
    critic_arch = _arch(cfg.critic.model, "critic.model") if cfg.critic.enable else None
    device_bytes, source = device_memory(cfg.trainer.gpu_memory_gib)
    plan = plan_memory(cfg, arch, world=args.world, device_bytes=device_bytes, device_source=source,
                       te_available=te_available() and not args.no_te, critic_arch=critic_arch)
    return cfg, arch, plan


def measure_vs_plan(cfg, arch, rank: int) -> dict:
    """Fake-tensor measurement of ``rank`` next to the plan of the same spec (megatron's local spec on CPU, offloads
    off: ``measure.measurable_config``): ``{"rank", "stage", "state": {item: [measured, planned]}, "phases":
    {phase: [measured, planned]}}`` in bytes. Phases are above the state; update phases are forward + backward (the
    fake run skips the optimizer step); the first forward also allocates megatron's attention score buffer."""
    from ttrl_megatron.memory.measure import measurable_config, measure_rank
    from ttrl_megatron.memory.plan import plan_memory

    stage, measured = measure_rank(cfg, arch, rank)
    local = plan_memory(measurable_config(cfg), arch, te_available=False).stages[stage]
    planned_state = {t.name: t.bytes for p in local.values() for t in p.resident}
    first_forward = next(iter(measured.phases), None)
    phases = {}
    for name, nbytes in measured.phases.items():
        plan = local[name]
        scratch = sum(t.bytes for t in plan.resident if "score buffer" in t.name) if name == first_forward else 0
        phases[name] = [nbytes, plan.forward_backward_bytes + scratch]
    return {"rank": rank, "stage": stage, "phases": phases,
            "state": {k: [v, planned_state.get(k, 0)] for k, v in measured.state.items()}}


def format_measurement(result: dict) -> str:
    from ttrl_megatron.memory.plan import GIB

    lines = [f"fake-tensor measurement of rank {result['rank']} (pipeline stage {result['stage']}) with megatron's "
             "local spec (unfused attention) next to the plan for that spec (phases: above the state; updates: "
             "forward + backward, the step is not run)", f"{'item':<22}{'measured GiB':>14}{'planned GiB':>13}"]
    for group in ("state", "phases"):
        for name, (measured, planned) in result[group].items():
            lines.append(f"{name:<22}{measured / GIB:>14.3f}{planned / GIB:>13.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ttrl_megatron.memory.report import as_json, format_plan

    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg, arch, plan = plan_from_args(args, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    measured = measure_vs_plan(cfg, arch, args.measure_rank) if args.measure_rank is not None else None
    if args.json:
        print(json.dumps({**as_json(plan), **({"measured": measured} if measured else {})}, indent=1))
    else:
        print(format_plan(plan))
        if measured:
            print(format_measurement(measured))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
