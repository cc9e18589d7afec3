"""scripts/launch/{torchrun.sh,slurm.sbatch}: `bash -n` clean, and in PRINT_ONLY=1 mode they build the expected
command lines for given node/GPU counts (single node, and the multi-node c10d rendezvous under Slurm). Also runs
shellcheck on both when it is installed."""

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
