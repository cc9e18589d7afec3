"""Preemption agreement, the shared-directory check and the hang watchdog over NCCL (marked gpu; skipped without CUDA).

The CPU suite runs the same program over gloo (tests/dist/test_watchdog.py); here the collectives meet NCCL, which
takes only tensors on this rank's GPU: ``PreemptionHandler.agreed`` all-reduces a flag tensor on the collective
device, ``check_shared_dirs`` broadcasts and gathers objects. One GPU: one rank (the NCCL all-reduce still runs);
two or more: the 2-rank scenarios of the CPU test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]

ONE_RANK = """
import os, signal, time
from ttrl_megatron.distributed import init_process_group
from ttrl_megatron.trainer.preemption import PreemptionHandler
init_process_group(backend="nccl", timeout_s=60.0)
h = PreemptionHandler(["SIGTERM", "SIGUSR1"]).install()
assert h.agreed() is None
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.1)
print("AGREED", h.agreed(), flush=True)
"""


def _env(status: Path) -> dict:
    return dict(os.environ, TTRL_TEST_BACKEND="nccl", TTRL_EXIT_STATUS_DIR=str(status),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_agreement_over_nccl_one_rank(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "1", "--no-python",
                           sys.executable, "-c", ONE_RANK], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AGREED SIGUSR1 on rank 0" in proc.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for 2 NCCL ranks")
@pytest.mark.parametrize("scenario", ["basics", "hang"])
def test_two_rank_scenarios_over_nccl(tmp_path, scenario):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m",
                           "tests.dist.watchdog_prog", scenario, str(tmp_path)], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if scenario == "basics":
        assert proc.returncode == 0, out[-4000:]
        files = sorted(tmp_path.glob("basics_rank*.json"))  # the two ranks' RESULT lines may interleave in stdout
        assert len(files) == 2, out[-4000:]
        for res in (json.loads(f.read_text()) for f in files):
            assert res["agreed_after"] == "SIGUSR1 on rank 1" and res["absolute"] == "accepted"
    else:
        assert "watchdog reported: phase 'update_weights'" in out, out[-4000:]
        assert len(list((tmp_path / "hangs").glob("*/rank*.txt"))) == 2
