"""Launch ``python -m ttrl_megatron.main <hydra overrides>`` with NeMo-Run: locally under torchrun (N processes) or
on Slurm inside an NGC container (pyxis/enroot flags, torchrun rendezvous across nodes).

    python -m ttrl_megatron.launch.nemo_run local --nproc 2 -- trainer.total_training_steps=1 ...   (venv active)
    python -m ttrl_megatron.launch.nemo_run slurm --account A --partition P --nodes 2 --gpus-per-node 8 \\
        --container-image nvcr.io/nvidia/nemo:26.04 --mount /lustre:/lustre --secret-env WANDB_API_KEY \\
        --job-dir /lustre/me/nemo_run --dryrun -- data.train_files=[/lustre/aime.parquet] ...

The Slurm task is ``run.Script(path="ttrl_megatron.main", m=True, entrypoint="python", args=overrides)`` run by
NeMo-Run's torchrun launcher (NeMo-Run needs the literal entrypoint ``python``); a local task is ``python -m
torch.distributed.run --standalone --nproc-per-node N -m ttrl_megatron.main ...`` (see ``build_task`` for why). The
overrides arrive unchanged. ``--dryrun`` prints the generated
sbatch script (NeMo-Run writes it under ``$NEMORUN_HOME/experiments/...``) and submits nothing.
Secrets are passed by NAME only (``--secret-env NAME``): they go to pyxis ``--container-env`` so the value from the
submitting shell (Slurm exports it by default) reaches the container; no value is ever written into the script.
NeMo-Run quirks handled here (reference/nemo-formats.md §2): ``exclusive`` left None (False would render as
``--exclusive=False``), ``job_name_prefix`` set (else the job is named ``account-account.<task>``).

This is the ONLY module importing ``nemo_run`` (optional extra ``nemo-run``: ``nemo-run==0.11.1`` +
``leptonai<0.47``; leptonai 0.47 breaks ``import nemo_run``). It is imported lazily, inside the functions, so this
module itself imports with the extra absent. Must not import torch, megatron or vllm.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

MODULE = "ttrl_megatron.main"
PACKAGERS = ("git", "none")
EXTRA_HINT = "pip install 'nemo-run==0.11.1' 'leptonai<0.47'  (the nemo-run extra of ttrl-megatron)"


def import_nemo_run():
    """``nemo_run``, or one ImportError saying which packages to install."""
    try:
        import nemo_run
    except ImportError as exc:
        raise ImportError(f"NeMo-Run launch needs the optional extra: {EXTRA_HINT} ({exc})") from exc
    return nemo_run


@dataclass(frozen=True)
class SlurmSpec:
    """One Slurm + NGC container job. ``env`` holds plain (non-secret) variables; ``secret_env`` holds NAMES whose
    values the container takes from the submitting shell. ``job_dir``: where NeMo-Run keeps the job's files on the
    cluster (mounted as /nemo_run in the container). SSH fields unset = submit from this machine (LocalTunnel)."""

    account: str
    partition: str
    nodes: int
    gpus_per_node: int
    container_image: str
    job_dir: str
    mounts: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secret_env: tuple[str, ...] = ()
    time: str = "04:00:00"
    job_name_prefix: str = "ttrl-"
    ssh_host: Optional[str] = None
    ssh_user: Optional[str] = None
    ssh_identity: Optional[str] = None
    packager: str = "git"  # "git": ship this git checkout (NeMo-Run GitArchivePackager); "none": code is in the image

    def validate(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SlurmSpec.{name}={getattr(self, name)!r}: must be a positive integer")
        bad = [m for m in self.mounts if ":" not in m]
        if bad:
            raise ValueError(f"SlurmSpec.mounts: {bad[0]!r} is not 'host_path:container_path'")
        leaked = sorted(set(self.secret_env) & set(self.env))
        if leaked:
            raise ValueError(f"SlurmSpec: {leaked[0]} is both a secret (name only) and a plain env value; pass it "
                             "only as secret_env")
        if self.packager not in PACKAGERS:
            raise ValueError(f"SlurmSpec.packager={self.packager!r}: use one of {PACKAGERS}")
        if (self.ssh_host is None) != (self.ssh_user is None):
            raise ValueError("SlurmSpec: give both ssh_host and ssh_user (or neither, to submit locally)")


def build_task(overrides: Sequence[str], module: str = MODULE, torchrun_nproc: Optional[int] = None):
    """The NeMo-Run task: ``python -m <module> <overrides...>``.

    ``torchrun_nproc`` (local runs): the task itself is ``python -m torch.distributed.run --nproc-per-node N -m
    <module> ...``. NeMo-Run's torchrun launcher shell-quotes every argument, which a Slurm script's bash undoes
    but the local scheduler (no shell) passes on literally, so Hydra would receive ``'a=[x]'`` quotes included."""
    run = import_nemo_run()
    if torchrun_nproc is None:
        return run.Script(path=module, m=True, entrypoint="python", args=list(overrides))
    args = ["--standalone", "--nproc-per-node", str(torchrun_nproc), "-m", module, *overrides]
    return run.Script(path="torch.distributed.run", m=True, entrypoint="python", args=args)


def local_executor(env: Optional[dict] = None):
    """This machine (one NeMo-Run task; its torchrun starts the workers, see ``build_task``). ``env``: variables
    for the task (e.g. ``OMP_NUM_THREADS``); ``python`` must be the interpreter that has ttrl_megatron installed."""
    run = import_nemo_run()
    return run.LocalExecutor(ntasks_per_node=1, env_vars=dict(env or {}))


def slurm_executor(spec: SlurmSpec):
    """A SlurmExecutor running torchrun (one task per node, ``gpus_per_node`` processes each) in the container."""
    spec.validate()
    run = import_nemo_run()
    if spec.ssh_host:
        tunnel = run.SSHTunnel(host=spec.ssh_host, user=spec.ssh_user, job_dir=spec.job_dir,
                               identity=spec.ssh_identity)
    else:
        tunnel = run.LocalTunnel(job_dir=spec.job_dir)
    return run.SlurmExecutor(
        account=spec.account, partition=spec.partition, nodes=spec.nodes, ntasks_per_node=spec.gpus_per_node,
        gpus_per_node=spec.gpus_per_node, time=spec.time, container_image=spec.container_image,
        container_mounts=list(spec.mounts), env_vars=dict(spec.env),
        container_env=list(spec.secret_env) or None, launcher="torchrun", job_name_prefix=spec.job_name_prefix,
        exclusive=None, tunnel=tunnel,
        packager=run.GitArchivePackager() if spec.packager == "git" else run.Packager())


def launch(executor, overrides: Sequence[str], name: str = "ttrl", dryrun: bool = False,
           nproc: Optional[int] = None) -> Optional[str]:
    """Run (or with ``dryrun`` only render) the task; returns the generated sbatch script's text on a Slurm dry
    run, else None. ``nproc``: torchrun workers of a local run (required with a LocalExecutor). Dry runs keep
    NeMo-Run's experiment folder so the script can be read back."""
    run = import_nemo_run()
    local = isinstance(executor, run.LocalExecutor)
    if local and (not isinstance(nproc, int) or nproc < 1):
        raise ValueError(f"nproc={nproc!r}: a local run needs a positive number of torchrun workers")
    task = build_task(overrides, torchrun_nproc=nproc if local else None)
    with run.Experiment(name, executor=executor, log_level="WARN") as exp:
        exp.add(task, name=name)
        if dryrun:
            exp.dryrun(log=False, delete_exp_dir=False)
            scripts = sorted(glob.glob(os.path.join(exp._exp_dir, "*_sbatch.sh")))
            return open(scripts[-1], encoding="utf-8").read() if scripts else None
        exp.run(sequential=True, tail_logs=True)
    return None


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m ttrl_megatron.launch.nemo_run", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="executor", required=True)
    loc = sub.add_parser("local", help="torchrun on this machine")
    loc.add_argument("--nproc", type=int, default=1)
    slurm = sub.add_parser("slurm", help="sbatch + srun + pyxis container + torchrun")
    for flag in ("--account", "--partition", "--container-image", "--job-dir"):
        slurm.add_argument(flag, required=True)
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=8)
    slurm.add_argument("--time", default="04:00:00")
    slurm.add_argument("--mount", action="append", default=[], help="host:container (repeatable)")
    slurm.add_argument("--env", action="append", default=[], help="NAME=value, non-secret (repeatable)")
    slurm.add_argument("--secret-env", action="append", default=[], help="NAME only; value from your shell")
    slurm.add_argument("--packager", choices=PACKAGERS, default="git",
                       help="git: ship this git checkout to the job; none: ttrl_megatron is installed in the image")
    slurm.add_argument("--ssh-host")
    slurm.add_argument("--ssh-user")
    slurm.add_argument("--ssh-identity")
    for sp in (loc, slurm):
        sp.add_argument("--name", default="ttrl")
        sp.add_argument("--dryrun", action="store_true", help="print what would run; submit nothing")
    return p.parse_args(argv), overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    if args.executor == "local":
        executor = local_executor()
    else:
        env = dict(e.split("=", 1) for e in args.env)
        executor = slurm_executor(SlurmSpec(
            account=args.account, partition=args.partition, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
            container_image=args.container_image, job_dir=args.job_dir, mounts=tuple(args.mount), env=env,
            secret_env=tuple(args.secret_env), time=args.time, ssh_host=args.ssh_host, ssh_user=args.ssh_user,
            ssh_identity=args.ssh_identity, packager=args.packager))
    script = launch(executor, overrides, name=args.name, dryrun=args.dryrun,
                    nproc=args.nproc if args.executor == "local" else None)
    if script is not None:
        print(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
