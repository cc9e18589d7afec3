"""Hang watchdog, failure naming, preemption agreement and the shared-directory check, on real torchrun processes.

tests/dist/watchdog_prog.py runs the real trainer/watchdog.py, trainer/preemption.py and trainer/shared_dirs.py over
gloo without models, so each scenario costs a torchrun start, not a trainer set-up; all scenarios run at once. The
failure scenarios run as two torchrun "nodes" (one rank each, c10d rendezvous on 127.0.0.1, as slurm.sbatch starts
them), so the surviving rank is not simply torn down by its own agent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.proctree import signal_node
from ttrl_megatron.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
TWO_NODES = ("hang", "kill", "raise", "freeze")


def _env(status_dir: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TTRL_EXIT_STATUS_DIR=str(status_dir),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _torchrun(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), *args, "-m", "tests.dist.watchdog_prog"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{scenario: {"rc": [...], "out": [...], "dir": run_dir, "status": {rank: code}, "seconds": wall}}."""
    runs = {}
    for scenario in (*TWO_NODES, "basics"):
        run_dir = tmp_path_factory.mktemp(scenario)
        status = run_dir / "status"
        status.mkdir()
        if scenario in TWO_NODES:
            endpoint = f"127.0.0.1:{free_port()}"
            cmds = [_torchrun("--nproc-per-node", "1", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                              endpoint, "--rdzv-id", scenario) + [scenario, str(run_dir)] for _ in range(2)]
        else:
            cmds = [_torchrun("--standalone", "--nproc-per-node", "2") + [scenario, str(run_dir)]]
        logs = [open(run_dir / f"node{i}.log", "w") for i in range(len(cmds))]
        procs = []
        for cmd, log in zip(cmds, logs):
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(status), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            time.sleep(0.3)  # the first node started hosts the rendezvous and gets rank 0 (lowest pid)
        runs[scenario] = (run_dir, procs, logs, time.monotonic())
    results = {}
    for scenario, (run_dir, procs, logs, start) in runs.items():
        deadline = start + 240
        codes = []
        for i, proc in enumerate(procs):
            if scenario == "freeze" and i == 1:  # the frozen rank's node never ends by itself
                continue
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        seconds = time.monotonic() - start
        for proc in procs:  # whatever is left (the frozen node, a timed-out run): the agent and every rank below it
            signal_node(proc.pid, signal.SIGKILL)  # (torchrun puts each rank in a session of its own: not killpg)
            proc.wait()
        for log in logs:
            log.close()
        results[scenario] = {"rc": codes, "dir": run_dir, "seconds": seconds,
                             "out": [(run_dir / f"node{i}.log").read_text() for i in range(len(procs))],
                             "status": {p.name: p.read_text().strip() for p in (run_dir / "status").iterdir()}}
    return results


def test_a_hang_dumps_every_ranks_stack_and_names_phase_and_rank(outcomes):
    r = outcomes["hang"]
    text = "\n".join(r["out"])
    assert r["status"] == {"rank0": "124", "rank1": "124"}, text[-4000:]
    assert re.search(r"\[rank1\] watchdog reported: phase 'update_weights' ran [\d.]+ s on rank 1 at step 3, past its "
                     r"budget trainer\.watchdog\.sync_s=2\.0", text), text[-4000:]
    assert "[rank0] watchdog stopping: phase 'update_weights' ran" in text
    dumps = list((r["dir"] / "hangs").glob("*-step3"))
    assert len(dumps) == 1, list((r["dir"] / "hangs").iterdir())
    stacks = {p.name: p.read_text() for p in dumps[0].iterdir()}
    assert set(stacks) == {"rank0.txt", "rank1.txt"}
    assert "in rank1" in stacks["rank1.txt"] and "phases step/update_weights" in stacks["rank1.txt"]
    assert "barrier" in stacks["rank0.txt"] and "phases step/update_actor" in stacks["rank0.txt"]
    assert r["seconds"] < 60, "the hang must end the job long before rank 1's 120 s sleep or the collective timeout"


def test_a_killed_rank_is_named_by_the_survivor(outcomes):
    r = outcomes["kill"]
    assert r["rc"][0] not in (0, None), r["out"][0][-4000:]
    assert re.search(r"\[rank0\] failed at step 3 in phase step/update_actor: rank 1 is gone \(no heartbeat for \d+ s",
                     r["out"][0]), r["out"][0][-4000:]
    assert r["seconds"] < 60


def test_a_failing_rank_is_named_with_its_error(outcomes):
    r = outcomes["raise"]
    text = r["out"][0]
    assert "rank 1 failed in step/gen at step 3: ValueError: rank 1 broke on purpose" in text, text[-4000:]
    assert "rank 1 is gone" not in text


def test_a_frozen_rank_is_reported_gone_by_its_neighbour(outcomes):
    r = outcomes["freeze"]
    text = r["out"][0]
    assert r["status"].get("rank0") == "124", text[-4000:]
    assert re.search(r"\[rank0\] watchdog reported: rank 1 is gone: no heartbeat for [\d.]+ s .*"
                     r"trainer\.watchdog\.heartbeat_timeout_s", text), text[-4000:]


def test_preemption_agreement_shielded_children_and_shared_dirs(outcomes):
    r = outcomes["basics"]
    assert r["rc"] == [0], r["out"][0][-4000:]
    files = sorted(Path(r["dir"]).glob("basics_rank*.json"))
    assert [f.name for f in files] == ["basics_rank0.json", "basics_rank1.json"], r["out"][0][-4000:]
    results = [json.loads(f.read_text()) for f in files]
    for res in results:
        assert res["agreed_before"] is None
        assert res["agreed_after"] == "SIGUSR1 on rank 1"  # both ranks decide the same, from one rank's signal
        assert res["child_usr1_blocked"] and res["child_alive_after_usr1"]
        assert res["relative"].startswith("invalid config: trainer.default_local_dir='checkpoints/exp' is not one "
                                          "directory shared by all ranks"), res["relative"]
        assert "not visible to rank 1" in res["relative"] and "absolute path" in res["relative"]
        assert res["absolute"] == "accepted" and res["tokens_left"] == []
