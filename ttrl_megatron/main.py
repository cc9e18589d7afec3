"""Entry point: ``torchrun --nproc-per-node N -m ttrl_megatron.main <hydra overrides>``.

Hydra composes conf/ (``--config-name examples/demo_cpu`` picks another root) -> typed dataclasses (``to_config``)
-> ``validate(cfg, WORLD_SIZE)`` -> the resolved config is written to ``trainer.run_dir/config.yaml`` -> fit.
This module and ttrl_megatron/config/loader.py are the only hydra consumers. Hydra's own output directory and
logging setup are switched off (the run directory is ours; every rank would otherwise write one).

Exit status: 0 trained to the end; 1 a failure (its traceback); 2 bad config, data or directories (one line, no
traceback); 75 preempted after a committed checkpoint (requeue: trainer/preemption.py); 124 the hang watchdog stopped
the job (trainer/watchdog.py). torchrun reports any failing worker as 1: scripts/launch/torchrun.sh restores these.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import hydra

from ttrl_megatron.config import ConfigError, register_schema, to_config, validate

log = logging.getLogger("ttrl_megatron.main")

# Hydra defaults that would make every rank create outputs/<date>/ and reconfigure logging.
_HYDRA_DEFAULTS = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none")


def run(cfg, early_signal: str | None = None) -> int:
    """Train with a validated root config (dataclass): the per-rank worker program, run by every torchrun process
    and by every Ray actor of ``ttrl_megatron.ray_main``. Returns 0 (trained to the end) or ``EXIT_PREEMPTED`` (a
    signal stopped every rank after a step whose checkpoint is committed: requeue and resume).

    The preemption signals are caught from the start (a signal during setup stops the run before its first step);
    an exception gets, when other ranks are involved, a note naming the rank that failed or is gone (watchdog.py).
    ``early_signal``: a preemption signal the launcher caught before this ran (the Ray actor's process)."""
    import torch.distributed

    from ttrl_megatron.megatron.parallel import destroy_distributed
    from ttrl_megatron.trainer.preemption import EXIT_PREEMPTED, Preempted, PreemptionHandler
    from ttrl_megatron.trainer.trainer import TTRLTrainer
    from ttrl_megatron.trainer.watchdog import failure_report

    preemption = PreemptionHandler(cfg.trainer.preempt_signals).install()
    if early_signal is not None:
        preemption.request(early_signal)
    trainer, ended_together = None, False
    owns_world = not torch.distributed.is_initialized()  # the trainer will create it (torchrun, Ray actor, one process)
    try:
        with failure_report():  # inside: the failing rank is named before close() stops the watchdog
            trainer = TTRLTrainer(cfg, preemption=preemption).setup()
            try:
                trainer.fit()
            except Preempted as stop:
                if trainer.rank == 0:
                    log.warning("%s; exiting %d: resume with trainer.resume_mode=auto", stop, EXIT_PREEMPTED)
                ended_together = True
                return EXIT_PREEMPTED
        ended_together = True
        return 0
    finally:
        if trainer is not None:
            trainer.close()
        if ended_together and owns_world:
            # Every rank ended the same way (the last step, or a stop all agreed on): tear the groups down so NCCL
            # communicators are released before exit (torch warns, and some NCCL versions hang, otherwise). After a
            # failure the process just exits: a teardown could wait forever on a rank that is gone.
            destroy_distributed()
        preemption.uninstall()


def run_worker(cfg, early_signal: str | None = None) -> tuple[int, str]:
    """``run`` with bad input found at start-up (a config field, a data file, a directory the ranks do not share)
    turned into ``(2, one line)``; otherwise ``(status, "")``. Other exceptions propagate."""
    from ttrl_megatron.data import DataError

    try:
        return run(cfg, early_signal), ""
    except ConfigError as exc:
        return 2, f"config error: {exc}"
    except DataError as exc:
        return 2, f"data error: {exc}"


@hydra.main(config_path="../conf", config_name="ttrl_trainer", version_base=None)
def _hydra_main(composed) -> None:
    from ttrl_megatron.trainer.preemption import record_exit_status

    try:
        cfg = to_config(composed)
        validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        record_exit_status(2)
        raise SystemExit(2) from None
    try:
        status, message = run_worker(cfg)
    except Exception:  # noqa: BLE001 - a real failure: its traceback (with the failing rank noted), not Hydra's hint
        traceback.print_exc()
        raise SystemExit(1) from None
    if message:
        print(message, file=sys.stderr)
    if status:
        record_exit_status(status)
        raise SystemExit(status)


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
