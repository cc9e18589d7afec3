"""A small worker program for tests/dist/test_watchdog.py, run under torchrun with 2 ranks (gloo): the real Watchdog,
PreemptionHandler and shared-directory check (trainer/) around a few collectives, without building models. The
failure path is main.py's: ``failure_report()`` around the work, then the traceback (with its note) and exit 1.

    torchrun ... -m tests.dist.watchdog_prog <scenario> <run_dir>

Scenarios (rank 0 waits for rank 1 in a barrier inside phase ``update_actor`` of step 3):
  hang    rank 1 sleeps inside phase ``update_weights`` (sync_s = 2 s): every rank's stacks land in
          <run_dir>/hangs/, both exit 124 naming the phase and rank 1;
  kill    rank 1 SIGKILLs itself in phase ``update_actor``: rank 0's barrier fails and its error names rank 1 gone;
  raise   rank 1 raises ValueError in phase ``gen``: rank 0's error names rank 1 and that error;
  freeze  rank 1 SIGSTOPs itself (alive, silent): rank 0's watchdog reports it gone after heartbeat_timeout_s;
  basics  no failure: preemption agreement (rank 1 signals itself SIGUSR1), the signal mask a child inherits, and
          the shared-directory check with a relative path under per-rank working directories; each rank writes
          <run_dir>/basics_rank<r>.json (and prints it as a RESULT line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from ttrl_megatron.config import WatchdogConfig
from ttrl_megatron.distributed import init_process_group
from ttrl_megatron.trainer import watchdog as W
from ttrl_megatron.trainer.preemption import PreemptionHandler
from ttrl_megatron.trainer.shared_dirs import SharedDirError, check_shared_dirs

CFG = WatchdogConfig(update_s=60.0, sync_s=2.0, generation_s=60.0, heartbeat_timeout_s=None, poll_s=0.2)


def rank1(scenario: str, wd: W.Watchdog) -> None:
    timer = wd.timer(step=3)
    if scenario == "hang":
        with timer("step"), timer("update_weights"):
            time.sleep(120)  # "stuck": the budget of update_weights (sync_s) runs out long before
    elif scenario == "kill":
        with timer("step"), timer("update_actor"):
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
    elif scenario == "raise":
        with timer("step"), timer("gen"):
            time.sleep(0.5)
            raise ValueError("rank 1 broke on purpose")
    elif scenario == "freeze":
        with timer("step"), timer("gen"):
            os.kill(os.getpid(), signal.SIGSTOP)
    dist.barrier()


def basics(run_dir: str, preemption: PreemptionHandler) -> dict:
    rank, out = dist.get_rank(), {}
    out["agreed_before"] = preemption.agreed()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)  # the handler runs in this (main) thread at the next bytecode
    out["agreed_after"] = preemption.agreed()
    # a process started now inherits SIGUSR1 blocked: Slurm's signal to every process of the step cannot kill it
    child = subprocess.Popen(["sleep", "30"])
    blocked = int(next(ln for ln in Path(f"/proc/{child.pid}/status").read_text().splitlines()
                       if ln.startswith("SigBlk:")).split()[1], 16)
    os.kill(child.pid, signal.SIGUSR1)
    time.sleep(0.3)
    out["child_usr1_blocked"] = bool(blocked >> (signal.SIGUSR1 - 1) & 1)
    out["child_alive_after_usr1"] = child.poll() is None
    child.kill()
    child.wait()
    # shared directories: a relative path under per-rank working directories is refused naming the field
    own = Path(run_dir) / f"cwd_rank{rank}"
    own.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(own)
    try:
        check_shared_dirs({"trainer.default_local_dir": "checkpoints/exp"}, wait_s=1.0)
        out["relative"] = "accepted"
    except SharedDirError as exc:
        out["relative"] = str(exc)
    finally:
        os.chdir(here)
    shared = str(Path(run_dir) / "shared_ckpt")
    check_shared_dirs({"trainer.default_local_dir": shared})
    out["absolute"] = "accepted"
    dist.barrier()  # rank 0 removes its token after the check's last barrier: look once it has
    out["tokens_left"] = sorted(p.name for p in Path(shared).iterdir())
    return out


def main() -> int:
    scenario, run_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    preemption = PreemptionHandler(["SIGTERM", "SIGUSR1"]).install()  # as main.run does, before anything else
    # the trainer's own set-up (NCCL selects this rank's GPU first); gloo unless TTRL_TEST_BACKEND says otherwise
    init_process_group(backend=os.environ.get("TTRL_TEST_BACKEND", "gloo"), timeout_s=60.0)
    cfg = dataclasses.replace(CFG, heartbeat_timeout_s=3.0) if scenario == "freeze" else CFG
    wd = W.Watchdog.start(cfg, run_dir)
    try:
        with W.failure_report():
            if scenario == "basics":
                result = json.dumps(basics(run_dir, preemption))
                # both ranks print at once into one torchrun log, where lines can interleave: the test reads the file
                Path(run_dir, f"basics_rank{dist.get_rank()}.json").write_text(result)
                print("RESULT " + result, flush=True)
            elif dist.get_rank() == 1:
                rank1(scenario, wd)
            else:
                with wd.timer(step=3)("step"), wd.timer(step=3)("update_actor"):
                    dist.barrier()  # waits for rank 1
        wd.stop()
        # gloo's worker threads left to the interpreter's exit sometimes end in std::terminate (SIGABRT after the
        # RESULT line was printed); a finished run takes its process group down itself
        dist.destroy_process_group()
        return 0
    except Exception:  # noqa: BLE001 - printed as main.py prints a failure: the traceback, then its note
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
