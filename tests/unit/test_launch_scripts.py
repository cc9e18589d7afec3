"""scripts/launch/{torchrun.sh,slurm.sbatch}: `bash -n` clean, and in PRINT_ONLY=1 mode they build the expected
command lines for given node/GPU counts (single node, and the multi-node c10d rendezvous under Slurm). Also runs
shellcheck on both when it is installed. With a stand-in for torchrun (a bash agent and a Python rank): torchrun.sh
forwards SIGUSR1 to the ranks (the agent survives it) and exits with the status the ranks recorded (75/124/2);
slurm.sbatch forwards Slurm's early SIGUSR1 and requeues exactly the preempted job."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = ROOT / "scripts" / "launch" / "torchrun.sh"
SLURM = ROOT / "scripts" / "launch" / "slurm.sbatch"
SLURM_VARS = ("SLURM_NNODES", "SLURM_JOB_NODELIST", "SLURM_JOB_ID", "NNODES", "GPUS_PER_NODE", "HEAD_NODE",
              "RDZV_ENDPOINT", "CONTAINER_IMAGE", "CONTAINER_MOUNTS", "CONFIG_NAME")


def _run(script: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
    return subprocess.run(["bash", str(script), *args], env={**base, "PRINT_ONLY": "1", **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def _words(line: str) -> list[str]:
    return shlex.split(line)


@pytest.mark.parametrize("script", [TORCHRUN, SLURM])
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-x", str(TORCHRUN), str(SLURM)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_torchrun_single_node():
    proc = _run(TORCHRUN, ["data.train_files=[/data/a b.parquet]", "trainer.save_freq=10"], GPUS_PER_NODE="4",
                PYTHON="py3")
    assert proc.returncode == 0, proc.stderr
    words = _words(proc.stdout)
    assert words[:5] == ["py3", "-m", "torch.distributed.run", "--nproc-per-node", "4"]
    assert words[words.index("--nnodes") + 1] == "1" and "--rdzv-backend" not in words
    tail = words[words.index("-m", 3):]
    assert tail == ["-m", "ttrl_megatron.main", "--config-name", "examples/qwen2.5-math-1.5b", "trainer.nnodes=1",
                    "trainer.n_gpus_per_node=4", "data.train_files=[/data/a b.parquet]", "trainer.save_freq=10"]


def test_torchrun_multi_node_needs_endpoint_and_bad_counts_fail():
    proc = _run(TORCHRUN, [], NNODES="2", GPUS_PER_NODE="8")
    assert proc.returncode == 2 and "RDZV_ENDPOINT" in proc.stderr
    proc = _run(TORCHRUN, [], GPUS_PER_NODE="0")
    assert proc.returncode == 2 and "GPUS_PER_NODE=0" in proc.stderr


@pytest.mark.parametrize("nodes,gpus", [(2, 8), (4, 4)])
def test_slurm_builds_srun_and_per_node_torchrun(nodes, gpus):
    proc = _run(SLURM, ["actor_rollout_ref.model.path=/models/q"], SLURM_NNODES=str(nodes), GPUS_PER_NODE=str(gpus),
                HEAD_NODE="node01", SLURM_JOB_ID="77", CONTAINER_IMAGE="img.sqsh", CONTAINER_MOUNTS="/data:/data")
    assert proc.returncode == 0, proc.stderr
    srun_line = next(x for x in proc.stdout.splitlines() if x.startswith("srun: "))[len("srun: "):]
    node_line = next(x for x in proc.stdout.splitlines() if x.startswith("node: "))[len("node: "):]
    srun = _words(srun_line)
    assert srun[0] == "srun" and f"--nodes={nodes}" in srun and "--ntasks-per-node=1" in srun
    assert "--container-image=img.sqsh" in srun and "--container-mounts=/data:/data" in srun
    assert f"NNODES={nodes}" in srun and f"GPUS_PER_NODE={gpus}" in srun and "RDZV_ENDPOINT=node01:29500" in srun
    assert srun[-1] == "actor_rollout_ref.model.path=/models/q"
    node = _words(node_line)
    assert node[node.index("--nproc-per-node") + 1] == str(gpus)
    assert node[node.index("--nnodes") + 1] == str(nodes)
    assert node[node.index("--rdzv-backend") + 1] == "c10d"
    assert node[node.index("--rdzv-endpoint") + 1] == "node01:29500"
    assert node[node.index("--rdzv-id") + 1] == "77"
    assert f"trainer.nnodes={nodes}" in node and f"trainer.n_gpus_per_node={gpus}" in node
    assert node[-1] == "actor_rollout_ref.model.path=/models/q"


def test_slurm_outside_a_job_says_so():
    proc = _run(SLURM, [], SLURM_NNODES="2")
    assert proc.returncode == 2 and "not inside a Slurm job" in proc.stderr


# ------------------------------------------------------------------ signals, exit statuses, requeue (no torch)
# A stand-in for "$PYTHON -m torch.distributed.run ...": a bash "agent" (it inherits torchrun.sh's ignored SIGUSR1,
# as the real agent does) with one Python "rank" that handles SIGUSR1 like trainer/preemption.py: it records its
# exit status for torchrun.sh and exits with it; the agent then fails as torchrun does (exit 1).
FAKE_AGENT = """#!/usr/bin/env bash
"{python}" -c '
import os, signal, sys, time
from pathlib import Path
mode = os.environ["FAKE_RANK"]
def stop(signum, frame):
    Path(os.environ["FAKE_OUT"], "rank_got").write_text(signal.Signals(signum).name)
    Path(os.environ["TTRL_EXIT_STATUS_DIR"], "rank0").write_text("75\\n")
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
if mode in ("2", "124"):
    Path(os.environ["TTRL_EXIT_STATUS_DIR"], "rank0").write_text(mode + "\\n")
    sys.exit(int(mode))
if mode == "0":
    sys.exit(0)
Path(os.environ["FAKE_OUT"], "ready").touch()
time.sleep(60)
' &
wait $! && exit 0
echo "agent alive after the rank stopped" > "$FAKE_OUT/agent_alive"
exit 1
"""


def _fake_python(tmp_path: Path) -> Path:
    import sys

    agent = tmp_path / "fake_python"
    agent.write_text(FAKE_AGENT.format(python=sys.executable))
    agent.chmod(0o755)
    return agent


def _start(cmd: list[str], tmp_path: Path, mode: str, **env) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in SLURM_VARS and k != "PRINT_ONLY"}
    full = {**base, "PYTHON": str(_fake_python(tmp_path)), "GPUS_PER_NODE": "1", "FAKE_RANK": mode,
            "FAKE_OUT": str(tmp_path), "CONFIG_NAME": "ttrl_trainer", **env}
    return subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_torchrun_sh_forwards_sigusr1_to_ranks_and_restores_their_status(tmp_path):
    import signal

    proc = _start(["bash", str(TORCHRUN)], tmp_path, "wait")
    _wait_file(tmp_path / "ready", proc)
    proc.send_signal(signal.SIGUSR1)  # to torchrun.sh only, as srun delivers it to the task
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 75, out  # the rank's status, not the agent's 1
    assert (tmp_path / "rank_got").read_text() == "SIGUSR1"
    assert (tmp_path / "agent_alive").is_file()  # the agent ignored the signal and reported the rank's exit


@pytest.mark.parametrize("mode,expected", [("2", 2), ("124", 124), ("0", 0)])
def test_torchrun_sh_exit_status(tmp_path, mode, expected):
    proc = _start(["bash", str(TORCHRUN)], tmp_path, mode)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == expected, out


@pytest.mark.parametrize("mode,expected,requeued", [("wait", 75, True), ("2", 2, False), ("0", 0, False)])
def test_slurm_sbatch_forwards_the_notice_and_requeues_only_a_preempted_job(tmp_path, mode, expected, requeued):
    import signal

    from tests.integration.cluster_sim import fake_slurm_bin

    bin_dir = fake_slurm_bin(tmp_path / "bin")
    proc = _start(["bash", str(SLURM)], tmp_path, mode, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                  SLURM_JOB_ID="99", SLURM_NNODES="1", SLURM_JOB_NODELIST="node1", CONTAINER_MOUNTS="",
                  FAKE_SLURM_LOG=str(tmp_path / "slurm.log"))
    if mode == "wait":
        _wait_file(tmp_path / "ready", proc)
        proc.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1 reaches only the batch shell
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == expected, out
    log = tmp_path / "slurm.log"
    assert (log.read_text() == "requeue 99\n") if requeued else not log.exists(), out
    if requeued:
        assert "SIGUSR1 (time limit near)" in out and "requeueing job 99" in out


def test_slurm_head_node_survives_a_long_host_list(tmp_path):
    """`scontrol show hostnames | head -n 1` under pipefail killed the script when the list outgrew a pipe buffer."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/usr/bin/env bash\nfor i in $(seq 100000); do echo node$i; done\n")
    scontrol.chmod(0o755)
    proc = _run(SLURM, [], SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-100000]",
                PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert "RDZV_ENDPOINT=node1:29500" in proc.stdout


def test_slurm_sbatch_asks_for_the_notice_and_requeue():
    header = [ln for ln in SLURM.read_text().splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --signal=B:USR1@600" in header and "#SBATCH --requeue" in header
    assert "#SBATCH --open-mode=append" in header  # a requeued job appends to the same log
