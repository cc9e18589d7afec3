"""Hang watchdog: per-phase time budgets, every rank's Python stack on a hang, and naming the rank that failed.

One daemon thread per rank (``Watchdog``) wakes every ``trainer.watchdog.poll_s`` and
- checks the phases the main thread is in (``phase()`` / ``WatchedTimer``: the trainer's ``timing_s/*`` phases map to
  the budgets generation / reward / update / sync / validation, plus checkpoint and the whole step);
- bumps this rank's heartbeat in the job's TCPStore and watches the next rank's (a ring: O(1) store traffic per
  rank), so a rank that is gone (killed, its node down, frozen) is noticed even while the others wait in NCCL;
- watches the store for another rank's hang report.
Past a budget (or on a silent neighbour) the rank publishes a report in the store; EVERY rank's thread then writes its
own Python stacks (``faulthandler.dump_traceback``: all threads, also while the main thread is stuck inside C code)
to ``<run_dir>/hangs/<time>-step<N>/rank<r>.txt``, and the job exits ``EXIT_HANG`` with one line naming the phase,
step and rank, instead of waiting for the collective timeout (which must be longer: validate checks it). The hung
rank cannot join a collective, hence the store. A rank that cannot even run its Python thread (the GIL held in C for
good) still prints its stacks to stderr and exits: ``faulthandler.dump_traceback_later`` is armed per phase a grace
period after the budget.

``failure_report()`` wraps the run in main.py: on an exception it records this rank's error in the store and, for a
communication error, waits a few heartbeats to name the rank(s) that are gone or failed first.

Store protocol (a client of the job's store at MASTER_ADDR:MASTER_PORT; keys under ``ttrl/wd/<restart>/``):
``hb/<r>`` "beat step phase" of rank r; ``report`` JSON of the first hang/gone report (compare_set: first one wins);
``acks`` ranks that dumped their stacks; ``failed/<r>`` rank r's own error line.

torch.distributed only (no megatron, no vllm).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import torch.distributed as dist

from ttrl_megatron.config import WatchdogConfig

from .metrics import PhaseTimer
from .preemption import EXIT_HANG, record_exit_status

log = logging.getLogger(__name__)

# trainer phase (timing_s/<name>) -> budget field of WatchdogConfig (without "_s"); unlisted phases have no budget of
# their own (the whole step's, step_s, still applies)
PHASE_BUDGETS = {"gen": "generation", "reward": "reward", "old_log_prob": "update", "ref": "update",
                 "values": "update", "adv": "update", "update_critic": "update", "update_actor": "update",
                 "update_weights": "sync", "testing": "validation", "checkpoint": "checkpoint", "step": "step"}
ACK_WAIT_S = 15.0  # how long the reporting rank waits for every rank's stacks before exiting
_GRACE_S = 60.0  # faulthandler backstop: this long past a budget when the watchdog thread itself cannot run

STOPPED = "stopped"  # heartbeat value of a rank whose watchdog ended normally
_CURRENT: Optional["Watchdog"] = None


def current() -> Optional["Watchdog"]:
    """The running watchdog of this process (None before ``start``)."""
    return _CURRENT


class Watchdog:
    def __init__(self, cfg: WatchdogConfig, run_dir: str, rank: int, world: int, store=None):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.hang_root = Path(run_dir) / "hangs"
        self.store = store
        self.step = 0
        self.failed_in: Optional[str] = None  # phases ("step/gen") the main thread was in when it raised
        self._phases: list[tuple[str, Optional[float], float]] = []  # (name, budget, start), innermost last
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._beats = 0
        self._peer = (rank + 1) % world if world > 1 else None
        self._peer_seen: tuple[Optional[str], float] = (None, time.monotonic())  # (last beat, when it changed)
        self._prefix = f"ttrl/wd/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"

    # -------------------------------------------------------------- lifecycle
    @classmethod
    def start(cls, cfg: WatchdogConfig, run_dir: str) -> Optional["Watchdog"]:
        """Start this rank's watchdog (after torch.distributed is initialised); None when disabled."""
        global _CURRENT
        if not cfg.enable:
            return None
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        store = None
        if world > 1:
            try:
                store = _store_client()
            except Exception as exc:  # noqa: BLE001 - budgets still work locally; say what is lost
                log.warning("watchdog: no store at MASTER_ADDR:MASTER_PORT (%s): each rank checks its own budgets, "
                            "but a hang report, the other ranks' stacks and failure naming are off", exc)
        wd = cls(cfg, run_dir, rank, world, store=store)
        wd._thread = threading.Thread(target=wd._loop, name="ttrl-watchdog", daemon=True)
        wd._thread.start()
        _CURRENT = wd
        return wd

    def stop(self) -> None:
        """End the thread; the heartbeat says "stopped" so the neighbour does not take a finished rank for gone."""
        global _CURRENT
        self._stop.set()
        if self.store is not None:
            try:
                self.store.set(self._key(f"hb/{self.rank}"), STOPPED)
            except Exception:  # noqa: BLE001 - the store may already be gone at the end of the job
                pass
        faulthandler.cancel_dump_traceback_later()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if _CURRENT is self:
            _CURRENT = None

    # -------------------------------------------------------------- phases (main thread)
    def budget(self, phase: str) -> Optional[float]:
        """Seconds allowed for one run of ``phase`` (a trainer phase name or a budget name), None = unlimited."""
        field = PHASE_BUDGETS.get(phase, phase if hasattr(self.cfg, f"{phase}_s") else None)
        return getattr(self.cfg, f"{field}_s") if field else None

    @contextlib.contextmanager
    def phase(self, name: str, step: Optional[int] = None) -> Iterator[None]:
        """Run the block as phase ``name`` under its budget (nested phases each keep their own)."""
        if step is not None:
            self.step = step
        entry = (name, self.budget(name), time.monotonic())
        self._phases.append(entry)
        self._arm_backstop()
        try:
            yield
        except BaseException:
            if self.failed_in is None:  # innermost phase of the first failure, for the failure's note
                self.failed_in = self._where()
            raise
        finally:
            self._phases.remove(entry)
            self._arm_backstop()

    def timer(self, step: int) -> "WatchedTimer":
        """A PhaseTimer for the trainer's step ``step`` whose phases run under their budgets."""
        return WatchedTimer(self, step)

    def _arm_backstop(self) -> None:
        """faulthandler prints every thread's stack to stderr and exits if even this thread cannot run (GIL held)."""
        deadlines = [start + budget for _, budget, start in list(self._phases) if budget is not None]
        if not deadlines:
            faulthandler.cancel_dump_traceback_later()
            return
        left = min(deadlines) - time.monotonic()
        faulthandler.dump_traceback_later(max(left, 0.0) + _GRACE_S + ACK_WAIT_S, exit=True)

    # -------------------------------------------------------------- the thread
    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the store may be gone when the job ends; never crash the rank
                if self._stop.is_set():
                    return
                log.debug("watchdog tick failed: %s", exc)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.store is not None:
            report = self._read_report()
            if report is not None:
                self._follow(report)
            self._beats += 1
            self.store.set(self._key(f"hb/{self.rank}"), f"{self._beats} {self.step} {self._where()}")
        for name, budget, start in list(self._phases):
            if budget is not None and now - start > budget:
                self._report({"kind": "hang", "rank": self.rank, "phase": name, "step": self.step,
                              "elapsed": round(now - start, 2), "budget": budget,
                              "field": f"trainer.watchdog.{PHASE_BUDGETS.get(name, name)}_s"})
        if self._peer is not None and self.cfg.heartbeat_timeout_s is not None:
            beat = self._get(f"hb/{self._peer}")
            last, since = self._peer_seen
            if beat == STOPPED:  # the neighbour finished cleanly: nothing more to watch
                self._peer = None
            elif beat != last:
                self._peer_seen = (beat, now)
            elif now - since > self.cfg.heartbeat_timeout_s:
                self._report({"kind": "gone", "rank": self._peer, "detected_by": self.rank, "step": self.step,
                              "silent": round(now - since, 1), "last": beat,
                              "field": "trainer.watchdog.heartbeat_timeout_s"})

    def _where(self) -> str:
        return "/".join(name for name, _, _ in list(self._phases)) or "-"

    # -------------------------------------------------------------- store helpers
    def _key(self, name: str) -> str:
        return self._prefix + name

    def _get(self, name: str) -> Optional[str]:
        key = self._key(name)
        if not self.store.check([key]):  # get() of a missing key would block for the store's timeout
            return None
        return self.store.get(key).decode()

    def _read_report(self) -> Optional[dict]:
        raw = self._get("report")
        return json.loads(raw) if raw else None

    # -------------------------------------------------------------- hang / gone
    def _report(self, report: dict) -> None:
        """First rank to see a problem publishes it; everyone (this rank included) then dumps and exits."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        report["dir"] = str(self.hang_root / f"{stamp}-step{report['step']}")
        if self.store is not None:
            mine = json.dumps(report)
            current = self.store.compare_set(self._key("report"), "", mine).decode()
            report = json.loads(current) if current else report  # someone else may have reported first
        self._follow(report)

    def _follow(self, report: dict) -> None:
        folder = Path(report["dir"])
        dump = folder / f"rank{self.rank}.txt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(dump, "w") as f:
                f.write(f"rank {self.rank} of {self.world}, host {socket.gethostname()}, pid {os.getpid()}, step "
                        f"{self.step}, phases {self._where()}\nreport: {json.dumps(report)}\n\n")
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
        except OSError as exc:
            dump = Path(f"<not written: {exc}>")
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        if self.store is not None:  # wait (bounded) until every live rank has written its stacks
            expected = self.world - (1 if report["kind"] == "gone" else 0)
            self.store.add(self._key("acks"), 1)
            deadline = time.monotonic() + ACK_WAIT_S
            while self.store.add(self._key("acks"), 0) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
        _say(self._message(report, dump))
        record_exit_status(EXIT_HANG)
        logging.shutdown()
        os._exit(EXIT_HANG)

    def _message(self, report: dict, dump: Path) -> str:
        where = f"every rank's Python stacks: {report['dir']}/ (this rank: {dump.name})"
        if report["kind"] == "hang":
            what = (f"phase '{report['phase']}' ran {report['elapsed']} s on rank {report['rank']} at step "
                    f"{report['step']}, past its budget {report['field']}={report['budget']}")
        else:
            what = (f"rank {report['rank']} is gone: no heartbeat for {report['silent']} s (last: "
                    f"{report['last'] or 'none'}; {report['field']}) as seen by rank {report['detected_by']} at step "
                    f"{report['step']}")
        who = "reported" if report.get("rank") == self.rank or report.get("detected_by") == self.rank else "stopping"
        return f"[rank{self.rank}] watchdog {who}: {what}; exiting {EXIT_HANG}; {where}"

    # -------------------------------------------------------------- failures (main thread, from failure_report)
    def name_failures(self, exc: BaseException, settle_s: Optional[float] = None) -> str:
        """After ``exc`` on this rank: who failed? Records this rank's error, then (for a communication error) watches
        the heartbeats for ``settle_s`` (default 3 poll periods) and returns one line naming the gone/failed ranks."""
        if self.store is None:
            return ""
        comm = is_communication_error(exc)
        first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        try:
            record = {"comm": comm, "error": first, "step": self.step, "phase": self.failed_in or self._where()}
            self.store.set(self._key(f"failed/{self.rank}"), json.dumps(record))
            if not comm:
                return ""
            settle = settle_s if settle_s is not None else max(3 * self.cfg.poll_s, 2.0)
            before = {r: self._get(f"hb/{r}") for r in range(self.world)}
            time.sleep(settle)
            gone, failed = [], []
            for r in range(self.world):
                if r == self.rank:
                    continue
                raw = self._get(f"failed/{r}")
                if raw is not None:
                    info = json.loads(raw)
                    if not info["comm"]:
                        failed.append(f"rank {r} failed in {info['phase']} at step {info['step']}: {info['error']}")
                elif before[r] != STOPPED and self._get(f"hb/{r}") == before[r]:
                    seen = before[r].split(" ", 2) if before[r] else None
                    last = f"last seen in phase {seen[2]} at step {seen[1]}" if seen else "never seen"
                    gone.append(f"rank {r} is gone (no heartbeat for {settle:.0f} s, {last}: killed, crashed or its "
                                f"node went down)")
        except Exception as store_exc:  # noqa: BLE001 - the store lives on rank 0's node: it may be the one gone
            return (f"the job's store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} is "
                    f"unreachable ({type(store_exc).__name__}): the node of rank 0 (or its torchrun agent) is gone")
        return "; ".join(failed + gone)


class WatchedTimer(PhaseTimer):
    """``PhaseTimer`` whose phases also run under the watchdog's budgets (what ``train_step`` uses)."""

    def __init__(self, watchdog: Watchdog, step: int):
        super().__init__()
        self.watchdog, self.step = watchdog, step

    @contextlib.contextmanager
    def __call__(self, phase: str):
        with self.watchdog.phase(phase, self.step), super().__call__(phase):
            yield


@contextlib.contextmanager
def phase(name: str, step: Optional[int] = None) -> Iterator[None]:
    """``current().phase(name)`` when a watchdog runs, else nothing (checkpoint save/load, validation)."""
    wd = current()
    if wd is None:
        yield
        return
    with wd.phase(name, step):
        yield


def is_communication_error(exc: BaseException) -> bool:
    """An error a collective raises because a peer is gone (gloo: connection closed/reset; NCCL: DistBackendError)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL", "Socket Timeout"))


@contextlib.contextmanager
def failure_report() -> Iterator[None]:
    """Around the run (main.py): an exception gets a note (printed at the end of its traceback) naming the rank(s)
    that failed first or are gone, when other ranks are involved."""
    try:
        yield
    except Exception as exc:
        wd = current()
        if wd is not None and wd.world > 1:
            who = wd.name_failures(exc)
            if who:
                exc.add_note(f"[rank{wd.rank}] failed at step {wd.step} in phase {wd.failed_in or '-'}: {who}")
        raise


def _store_client():
    """A client of the job's TCPStore (the one behind MASTER_ADDR:MASTER_PORT), separate from the process group's."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    return dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=30))


def _say(line: str) -> None:
    """One line to stderr, unbuffered (also from the watchdog thread while the main thread prints)."""
    try:
        os.write(2, (line.rstrip("\n") + "\n").encode())
    except OSError:
        pass
