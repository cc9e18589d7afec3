"""Preemption: a signal asks the whole job to stop after the current step, checkpoint, and exit for a requeue.

Who sends what (README "Running for days on Slurm"):
- Slurm's early notice: ``#SBATCH --signal=B:USR1@<s>`` reaches the batch shell, which forwards SIGUSR1 through srun to
  every node's ``scripts/launch/torchrun.sh``, which forwards it to its ranks (the torchrun agent ignores it);
- SIGTERM: Slurm at the time limit or on preemption, ``scancel``, torchrun's agent when it is told to stop;
- ``ttrl_megatron.ray_main`` on SIGUSR1/SIGTERM signals rank 0's actor.
One rank receiving the signal is enough: ``PreemptionHandler.agreed()`` is a collective every rank calls once per
step (a MAX over the world of "has this rank been signalled"), so every rank stops after the SAME step. The trainer
then writes a checkpoint (atomic: trainer/checkpointing.py) and ``main`` exits with ``EXIT_PREEMPTED``; a further
signal during the save is only noted (it cannot interrupt or corrupt it; SIGKILL still can, and the checkpoint's
rename-commit leaves the previous one the latest). The requeued job resumes with ``trainer.resume_mode=auto``.

Children of a rank (vLLM engine processes, the grading pool's workers) must not die of SIGUSR1 when Slurm signals
every process of a job step: they would take in-flight grades with them and change the step's rewards. ``install``
therefore blocks the notice signals (SIGUSR1/SIGUSR2) in the main thread, so every process started from it inherits
them blocked (a blocked mask survives fork and exec), and one daemon thread keeps them unblocked to receive them for
this process (Python runs the handler in the main thread either way). SIGTERM is left unblocked: children must still
stop when their parent or Slurm terminates them.

Exit statuses shared with the launch scripts: ``EXIT_PREEMPTED`` (75, sysexits' EX_TEMPFAIL: "try again") and
``EXIT_HANG`` (124, a watchdog budget ran out: trainer/watchdog.py). torchrun reports any failing worker as exit 1,
so ranks also record their status as a file in ``$TTRL_EXIT_STATUS_DIR`` (set by torchrun.sh), which the script
turns back into its own exit status.

torch.distributed only (no megatron, no vllm).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ttrl_megatron.distributed.devices import collective_device

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # stopped on a signal after a committed checkpoint: requeue and resume
EXIT_HANG = 124  # the watchdog stopped the job (a phase past its budget, or a rank gone)
EXIT_STATUS_ENV = "TTRL_EXIT_STATUS_DIR"
_NOTICE_SIGNALS = ("SIGUSR1", "SIGUSR2")  # blocked for children (see the module docstring)


class Preempted(Exception):
    """Raised by the trainer's loop once every rank agreed to stop and the checkpoint of ``step`` is committed."""

    def __init__(self, step: int, reason: str, checkpoint: Optional[Path]):
        self.step, self.reason, self.checkpoint = step, reason, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "nothing to save (no step since the last one)"
        super().__init__(f"preempted after step {step} ({reason}); {where}")


def record_exit_status(code: int) -> None:
    """Leave ``code`` for the launch script (``$TTRL_EXIT_STATUS_DIR/rank<RANK>``); a no-op when it is unset."""
    folder = os.environ.get(EXIT_STATUS_ENV)
    if not folder:
        return
    try:
        Path(folder, f"rank{os.environ.get('RANK', '0')}").write_text(f"{code}\n")
    except OSError:  # the status file is a courtesy to the script; never fail the exit path on it
        pass


class PreemptionHandler:
    """Catches ``signal_names`` (trainer.preempt_signals) in this process; ``agreed()`` makes the ranks decide together.

    ``request(reason)`` asks for the same stop without a signal (tests, launchers that cannot signal).
    """

    def __init__(self, signal_names: Sequence[str]):
        self.signums = [getattr(signal, name) for name in signal_names]
        self.reason: Optional[str] = None  # first signal's name (or a request's reason); None = not asked to stop
        self.extra_signals = 0  # signals received after the first (noted, never acted on)
        self._signum: Optional[int] = None
        self._previous: dict[int, object] = {}
        self._blocked: set[int] = set()
        self._receiver: Optional[threading.Thread] = None

    # -------------------------------------------------------------- signals
    def install(self) -> "PreemptionHandler":
        """Install the handlers (main thread only; elsewhere only ``request`` works and a warning says so)."""
        if not self.signums:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption signals %s not handled: not in the main thread", self._names())
            return self
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        notice = {s for s in self.signums if signal.Signals(s).name in _NOTICE_SIGNALS}
        if notice:
            self._blocked = notice - signal.pthread_sigmask(signal.SIG_BLOCK, notice)
            self._receiver = threading.Thread(target=_receive, args=(notice,), name="ttrl-signal-receiver",
                                              daemon=True)
            self._receiver.start()
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers and signal mask (the receiver thread stays parked; it is a daemon)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)
            self._blocked = set()

    def _names(self) -> str:
        return ", ".join(signal.Signals(s).name for s in self.signums)

    def _on_signal(self, signum, frame) -> None:
        # Runs in the main thread between bytecodes, possibly inside a logging or print call: write with os.write,
        # never through Python's (non-reentrant) buffered streams.
        name = signal.Signals(signum).name
        rank = os.environ.get("RANK", "0")
        if self.reason is None:
            self.reason, self._signum = name, signum
            msg = f"[rank{rank}] {name}: stopping after the current step, then checkpoint and exit {EXIT_PREEMPTED}\n"
        else:
            self.extra_signals += 1
            msg = (f"[rank{rank}] {name}: already stopping ({self.reason}); the checkpoint is not interrupted "
                   f"(SIGKILL stops now; the previous checkpoint stays the latest)\n")
        try:
            os.write(2, msg.encode())
        except OSError:
            pass

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    # -------------------------------------------------------------- the decision
    def agreed(self) -> Optional[str]:
        """Collective (every rank, once per step): None to go on, else why the job stops (e.g. "SIGUSR1 on rank 1").

        One int per rank is all-gathered: the ranks that were signalled, for the log line."""
        if not dist.is_initialized():
            return None if self.reason is None else f"{self.reason} on rank 0"
        world = dist.get_world_size()
        code = 0 if self.reason is None else (self._signum or -1)  # -1: asked by request(), no signal
        flags = torch.zeros(world, dtype=torch.int64, device=collective_device())
        flags[dist.get_rank()] = code
        dist.all_reduce(flags)  # each rank fills only its own slot: the sum is the gather
        asked = [(r, int(c)) for r, c in enumerate(flags.tolist()) if c != 0]
        if not asked:
            return None
        what = sorted({signal.Signals(c).name if c > 0 else "a stop request" for _, c in asked})
        ranks = ", ".join(str(r) for r, _ in asked[:8]) + (", ..." if len(asked) > 8 else "")
        return f"{' and '.join(what)} on rank{'s' if len(asked) > 1 else ''} {ranks}"


def _receive(signums: set[int]) -> None:
    """Body of the receiver thread: the one thread with the notice signals unblocked, parked for good."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
    threading.Event().wait()
