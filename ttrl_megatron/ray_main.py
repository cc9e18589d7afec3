"""Entry point under Ray: ``python -m ttrl_megatron.ray_main [launcher flags] <the same hydra overrides as main>``.

Composes and validates the config exactly like ``ttrl_megatron.main`` (ConfigError -> one message, exit 2), then
``launch/ray_job.run_job`` runs ``ttrl_megatron.main.run`` -- the same per-rank worker program torchrun runs -- in
one Ray actor per ``trainer.nnodes x trainer.n_gpus_per_node`` slot. Launcher flags (not training config):

  --address ADDR         Ray cluster to join (default: $RAY_ADDRESS, else start a local one)
  --grader {ray,local}   grade answers with Ray tasks spread over the cluster (default) or rank 0's process pool
  --dashboard            start Ray's dashboard on 127.0.0.1 (local cluster only; off by default)
  --no-log-to-driver     do not stream the workers' output here
  --config-name NAME     Hydra root config (as main's --config-name)

Ray is an optional dependency: without it this prints how to install it and exits 2. Docs: docs/ray.md.
Exit status as ``ttrl_megatron.main``'s: 0, 1 (a rank failed: its traceback), 2 (bad config/data: one line),
75 (SIGUSR1/SIGTERM: every rank checkpointed after its step; run the same command to resume), 130 (interrupted).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m ttrl_megatron.ray_main", allow_abbrev=False,
                                     description="Run TTRL training as Ray actors (same worker code as torchrun).")
    parser.add_argument("--address", default=None)
    parser.add_argument("--grader", choices=("ray", "local"), default="ray")
    parser.add_argument("--dashboard", action="store_true")
    parser.add_argument("--no-log-to-driver", dest="log_to_driver", action="store_false")
    parser.add_argument("--config-name", "-cn", default="ttrl_trainer")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown launcher flag(s) {unknown}; training settings are hydra overrides key=value")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    from ttrl_megatron.config import ConfigError, validate
    from ttrl_megatron.config.loader import compose

    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # all ranks' lines, not "repeated Nx" (read at import)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ttrl_megatron.ray_main needs Ray: pip install 'ray[default]==2.60.*' (or use torchrun with "
              "ttrl_megatron.main)", file=sys.stderr)
        return 2
    try:
        cfg = compose(overrides, config_name=args.config_name)
        validate(cfg, world_size=cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from ttrl_megatron.launch.ray_job import RayOptions, run_job

    opts = RayOptions(address=args.address, grader=args.grader, dashboard=args.dashboard,
                      log_to_driver=args.log_to_driver)
    return run_job(cfg, opts)


if __name__ == "__main__":
    sys.exit(main())
