"""Entry point: ``torchrun --nproc-per-node N -m ttrl_megatron.main <hydra overrides>``.

Hydra composes conf/ (``--config-name examples/demo_cpu`` picks another root) -> typed dataclasses (``to_config``)
-> ``validate(cfg, WORLD_SIZE)`` -> the resolved config is written to ``trainer.run_dir/config.yaml`` -> fit.
This module and ttrl_megatron/config/loader.py are the only hydra consumers. Hydra's own output directory and
logging setup are switched off (the run directory is ours; every rank would otherwise write one).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra

from ttrl_megatron.config import ConfigError, register_schema, to_config, validate

# Hydra defaults that would make every rank create outputs/<date>/ and reconfigure logging.
_HYDRA_DEFAULTS = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")


def run(cfg) -> None:
    """Train with a validated root config (dataclass): the per-rank worker program, run by every torchrun process
    and by every Ray actor of ``ttrl_megatron.ray_main``."""
    from ttrl_megatron.trainer.trainer import TTRLTrainer

    trainer = TTRLTrainer(cfg).setup()
    try:
        trainer.fit()
    finally:
        trainer.close()


@hydra.main(config_path="../conf", config_name="ttrl_trainer", version_base=None)
def _hydra_main(composed) -> None:
    try:
        cfg = to_config(composed)
        validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(cfg)


def configure_logging(force: bool = False) -> None:
    """Rank-prefixed log lines at ``TTRL_LOG_LEVEL`` (``force``: replace handlers a host process, e.g. Ray, set)."""
    logging.basicConfig(level=os.environ.get("TTRL_LOG_LEVEL", "INFO"), force=force,
                        format=f"[rank{os.environ.get('RANK', '0')}] %(levelname)s %(name)s: %(message)s")


def main() -> None:
    configure_logging()
    given = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    sys.argv += [d for d in _HYDRA_DEFAULTS if d.split("=", 1)[0] not in given]
    register_schema()
    _hydra_main()


if __name__ == "__main__":
    main()
