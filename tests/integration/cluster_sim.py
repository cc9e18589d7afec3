"""A two-"node" cluster on one machine for the reliability tests: scripts/launch/slurm.sbatch run as Slurm would run
it, with stand-ins for the two Slurm commands it calls, and torchrun "nodes" started exactly as srun starts them.

- ``srun`` stand-in (``FAKE_SRUN``): starts the node command once per node (``--nodes=N``), each in its own session,
  and forwards a signal it receives to every process of every node, i.e. the node command and all its descendants
  (what slurmstepd does for a job step through its cgroup: the torchrun agent, the ranks - which torchrun puts in
  sessions of their own - and their children alike). With ``--kill-on-bad-exit=1`` a node exiting non-zero gets the
  others SIGTERMed (SIGKILL 20 s later). Exit status: the highest of the nodes'.
- ``scontrol`` stand-in: ``show hostnames`` prints 127.0.0.1 per node; ``requeue <id>`` appends to ``$FAKE_SLURM_LOG``.
- the gate: the trainer fixtures' reward function (trainer_fixtures.REWARD_FN) blocks its first call (rank 0, step 1's
  reward phase) while ``<gate>/armed`` exists and ``<gate>/released`` does not, after touching ``<gate>/reached``: a
  signal or a kill then lands mid-step deterministically, whatever the machine's load.

A "node" here is a process and all its descendants; ``Job.stop()`` kills what is left of one. Imports no torch.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.proctree import descendants, signal_node
from tests.integration.trainer_fixtures import ROOT, _env
from ttrl_megatron.distributed import free_port

SBATCH = ROOT / "scripts" / "launch" / "slurm.sbatch"
TORCHRUN_SH = ROOT / "scripts" / "launch" / "torchrun.sh"



FAKE_SRUN = '''
"""srun stand-in for tests (tests/integration/cluster_sim.py)."""
import os, signal, subprocess, sys, time
TREE_PLACEHOLDER
args = sys.argv[1:]
nodes, kill_on_bad = 1, False
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt.startswith("--nodes="):
        nodes = int(opt.split("=", 1)[1])
    elif opt == "--kill-on-bad-exit=1":
        kill_on_bad = True
procs = [subprocess.Popen(args, start_new_session=True,
                          env=dict(os.environ, SLURM_NODEID=str(i), SLURM_PROCID=str(i), SLURM_LOCALID="0"))
         for i in range(nodes)]


def forward(signum, frame):
    for p in procs:
        signal_node(p.pid, signum)


for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, forward)
codes, killed_at = {}, None
while len(codes) < nodes:
    for i, p in enumerate(procs):
        if i not in codes and p.poll() is not None:
            codes[i] = p.returncode if p.returncode >= 0 else 128 - p.returncode
            if kill_on_bad and codes[i] != 0 and killed_at is None:
                killed_at = time.monotonic()
                for q in procs:
                    if q.poll() is None:
                        signal_node(q.pid, signal.SIGTERM)
    if killed_at is not None and time.monotonic() - killed_at > 20:
        for q in procs:
            if q.poll() is None:
                signal_node(q.pid, signal.SIGKILL)
    time.sleep(0.05)
sys.exit(max(codes.values()))
'''

FAKE_SCONTROL = '''#!/usr/bin/env bash
# scontrol stand-in for tests (tests/integration/cluster_sim.py)
case "$1 ${2:-}" in
  "show hostnames") for _ in $(seq "${SLURM_NNODES:-1}"); do echo 127.0.0.1; done ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "scontrol stand-in: unsupported: $*" >&2; exit 1 ;;
esac
'''


def fake_slurm_bin(folder: Path) -> Path:
    """Write the srun/scontrol stand-ins into ``folder`` (created); returns it (prepend it to PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = inspect.getsource(descendants) + "\n\n" + inspect.getsource(signal_node)  # the srun runs on its own
    srun = f"#!{sys.executable}\nfrom __future__ import annotations\n" + FAKE_SRUN.replace("TREE_PLACEHOLDER", tree)
    for name, text in (("srun", srun), ("scontrol", FAKE_SCONTROL)):
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
    return folder


class Job:
    """A process tree started by a test (a batch shell or one torchrun node) with its output in a file."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int, node: bool = False) -> None:
        """Signal the job's first process, or (``node``) every process of it, as Slurm signals a node's step."""
        if node:
            signal_node(self.proc.pid, signum)
        elif self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill whatever is left of the job (a no-op after a clean exit)."""
        self.signal(signal.SIGKILL, node=True)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        self._out.close()


def cluster_env(run_dir: Path, gate: Path | None = None, **extra: str) -> dict:
    env = _env(run_dir)
    env.update(PYTHON=sys.executable, GPUS_PER_NODE="1", CONFIG_NAME="ttrl_trainer", **extra)
    if gate is not None:
        env["TTRL_TEST_GATE"] = str(gate)
    return env


def start_sbatch(args: list[str], run_dir: Path, gate: Path, bin_dir: Path, nodes: int = 2) -> Job:
    """``bash slurm.sbatch <args>`` as a 2-node job: the srun/scontrol stand-ins first on PATH, a free rendezvous
    port, job id 4242. Its log is ``<run_dir>/sbatch-<n>.log`` (n counts the job's starts)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = len(list(run_dir.glob("sbatch-*.log")))
    env = cluster_env(run_dir, gate, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242",
                      SLURM_NNODES=str(nodes), SLURM_JOB_NODELIST="node[0-1]", SLURM_RESTART_COUNT=str(start),
                      RDZV_PORT=str(free_port()), CONTAINER_IMAGE="unused.sqsh", CONTAINER_MOUNTS="",
                      FAKE_SLURM_LOG=str(run_dir / "slurm-actions.log"))
    return Job(["bash", str(SBATCH), *args], env, run_dir / f"sbatch-{start}.log")


def start_node(args: list[str], run_dir: Path, gate: Path, endpoint: str, node: int, nodes: int = 2) -> Job:
    """One torchrun "node" as slurm.sbatch's srun starts it on every node: torchrun.sh with NNODES / RDZV_ENDPOINT."""
    env = cluster_env(run_dir, gate, NNODES=str(nodes), RDZV_ENDPOINT=endpoint, RDZV_ID="ttrl-test")
    return Job(["bash", str(TORCHRUN_SH), *args], env, run_dir / f"node{node}.log")


def wait_for(predicate, timeout_s: float, what: str, jobs: tuple[Job, ...] = (), poll_s: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail (with the jobs' output tails) on timeout or when a job ended first."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        ended = [j for j in jobs if j.proc.poll() is not None]
        if ended or time.monotonic() > deadline:
            tails = "\n".join(f"--- {j.log.name} (exit {j.proc.poll()})\n{j.output()[-4000:]}" for j in jobs)
            raise AssertionError(f"{'a job ended' if ended else 'timed out'} waiting for {what}\n{tails}")
        time.sleep(poll_s)


def ranks_of(job: Job) -> set[int]:
    """RANK of the trainer processes below ``job`` (read from /proc)."""
    ranks = set()
    for pid in descendants(job.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"ttrl_megatron.main" not in cmdline or b"torch.distributed.run" in cmdline:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if b"RANK" in env:
                ranks.add(int(env[b"RANK"]))
        except (OSError, ValueError):
            continue
    return ranks
