"""A small worker program for tests/dist/test_watchdog.py, run under torchrun (2 ranks, gloo): the real Watchdog
(trainer/watchdog.py) and main.py's failure path around a few collectives, without building models.

    torchrun --nproc-per-node 2 -m tests.dist.watchdog_prog <scenario> <run_dir>

Scenarios (what rank 1 does; rank 0 waits for it in a barrier, inside the phase ``update``):
  hang   rank 1 sleeps inside phase ``update_weights`` (budget sync_s = 2 s): the watchdog must dump both ranks'
         stacks under <run_dir>/hangs/ and exit 124 naming the phase and rank 1;
  kill   rank 1 SIGKILLs itself during the step: rank 0's barrier fails; its error must name rank 1 as gone;
  raise  rank 1 raises ValueError in phase ``gen``: rank 0's error must name rank 1 and that error;
  freeze rank 1 SIGSTOPs itself (alive but silent): rank 0's watchdog must report it gone after heartbeat_timeout_s.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
import traceback

import torch
import torch.distributed as dist

from ttrl_megatron.config import WatchdogConfig
from ttrl_megatron.trainer import watchdog as W

CFG = WatchdogConfig(update_s=60.0, sync_s=2.0, generation_s=60.0, heartbeat_timeout_s=3.0, poll_s=0.2)


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


def main() -> int:
    scenario, run_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    wd = W.Watchdog.start(CFG, run_dir)
    try:
        with W.failure_report():
            if dist.get_rank() == 1:
                rank1(scenario, wd)
            else:
                with wd.timer(step=3)("step"), wd.timer(step=3)("update_actor"):
                    dist.barrier()  # waits for rank 1
        print(f"rank {dist.get_rank()}: no failure", flush=True)
        return 0
    except Exception:  # noqa: BLE001 - printed like main.py does: the traceback, then its note
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
