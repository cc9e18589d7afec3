"""Bad data found at start-up ends the run with ONE clean line naming the file and row (exit 2), as config errors
do: not a traceback followed by Hydra's hint. The real entry point (``python -m ttrl_megatron.main``, one process)
with a tiny model; the three runs go at once (each spends its time importing torch and megatron)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration.trainer_fixtures import ROOT, make_inputs, overrides  # noqa: E402

GOOD = {"prompt": "1+2=", "reward_model": {"ground_truth": "3"}, "data_source": "tiny_add"}


def _files(base):
    missing = base / "missing_field.jsonl"
    missing.write_text(json.dumps(GOOD) + "\n" + json.dumps({k: v for k, v in GOOD.items() if k != "prompt"}) + "\n")
    not_json = base / "not_json.jsonl"
    not_json.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{'prompt': oops\n")
    empty = base / "empty.jsonl"
    empty.write_text("")
    return {missing: f"data error: {missing}: row 1: missing field 'prompt'",
            not_json: f"data error: {not_json}: line 3 is not valid JSON (Expecting property name enclosed in "
                      f"double quotes)",
            empty: f"data error: {empty}: the file holds no rows (empty); fill it or leave it out of data.*_files"}


def test_bad_rows_and_files_end_with_one_line(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    expected = _files(tmp_path)
    procs = {}
    for i, path in enumerate(expected):
        run_dir = tmp_path / f"run{i}"
        args = [a for a in overrides(inputs, run_dir) if not a.startswith(("data.train_files", "data.val_files"))]
        args += [f"data.train_files=[{path}]", "trainer.n_gpus_per_node=1"]
        env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RANK", "WORLD_SIZE")}
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT), TTRL_LOG_LEVEL="WARNING")
        procs[path] = subprocess.Popen([sys.executable, "-m", "ttrl_megatron.main", *args], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, err[-3000:]
        assert lines and lines[-1] == expected[path], err[-3000:]
        assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err, err[-3000:]
