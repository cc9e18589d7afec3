"""A pool of grading worker processes with hard per-job deadlines: ``GradingPool.grade_pairs`` grades a whole step.

Why processes and not threads or SIGALRM: math-verify's timeouts are SIGALRM-based (main thread only) and cannot
interrupt sympy's big-integer arithmetic (PLATFORM.md: ``((10^{9})!)!`` ran 21 s through a 10 s alarm). Killing a
process always works. Each worker is a fresh interpreter (``python -m ttrl_megatron.ttrl._worker``) started by one
long-lived spawner thread, so the pool works from any thread, under torchrun, and never re-runs the caller's
``__main__``; the worker asks the kernel to kill it when that thread (i.e. the caller's process) dies.

``grade_pairs``: fast in-process verdicts first (``grading.fast_grade``), then dedupe by normalized (answer, label)
pair and a verdict cache, then the remaining pairs are dispatched to the workers (two queued per worker; pairs that
share a label are routed to the same worker so its parse cache parses the label once). A job that exceeds ``timeout_s`` (counted from when its worker received it) or whose worker dies is "not
equal"; the worker is killed and replaced. Verdicts depend only on the inputs (up to jobs within a hair of the
deadline), never on scheduling. ``close()`` (or ``with GradingPool() as pool``, or interpreter exit) kills all workers.

Imports no torch; the workers import math-verify and sympy, this module does not.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
import zlib
from collections import deque
from typing import Sequence

from ._procs import Worker, readable
from .grading import fast_grade, normalized_pair

__all__ = ["GradingPool", "default_pool"]

log = logging.getLogger(__name__)
PIPELINE_DEPTH = 2  # jobs queued per worker: hides this thread's wake-up latency between two jobs
_LIVE_POOLS: "weakref.WeakSet[GradingPool]" = weakref.WeakSet()



def triage_pairs(pairs: Sequence[tuple[str | None, str | None]], cache: dict, stats: dict
                 ) -> tuple[list[bool], dict[tuple[str, str], list[int]]]:
    """Settle what needs no worker: ``(verdicts, todo)``.

    Pairs with a missing side stay False, ``fast_grade`` decides most others in-process, cached normalized pairs
    are reused; ``todo`` maps each remaining distinct normalized pair to the positions it answers (deduplication:
    PLATFORM.md measured ~6x fewer symbolic jobs). Shared by the local pool and the Ray grader so both give the same
    verdicts. Updates ``stats`` (``fast``, ``cache_hits``, ``pairs``).
    """
    out = [False] * len(pairs)
    todo: dict[tuple[str, str], list[int]] = {}
    for i, (given, truth) in enumerate(pairs):
        if given is None or truth is None:
            continue
        verdict = fast_grade(given, truth)
        if verdict is not None:
            out[i] = verdict
            stats["fast"] += 1
            continue
        key = normalized_pair(given, truth)
        if key in cache:
            out[i] = cache[key]
            stats["cache_hits"] += 1
        else:
            todo.setdefault(key, []).append(i)
    stats["pairs"] += len(pairs)
    return out, todo

class GradingPool:
    """Worker processes that grade (answer, label) pairs with a hard deadline per pair. Thread-safe.

    Args:
        num_workers: processes to run (started lazily, on first need, or by ``warmup()``).
        timeout_s: default per-pair deadline, counted from when a worker receives the pair.
        start_timeout_s: how long a worker may take to import math-verify/sympy and report ready.
        memory_limit_mb: address-space limit of each worker (0 = none); hostile input then fails, not the machine.
        cache_size: number of normalized-pair verdicts remembered across calls (timeouts are not remembered).
        warm_up: workers pre-parse one example of each common LaTeX construct before reporting ready (slower start,
            ~1 s; faster first jobs). Off is for short-lived pools that grade a handful of pairs (tests).
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, start_timeout_s: float = 60.0,
                 memory_limit_mb: int = 4096, cache_size: int = 200_000, warm_up: bool = True):
        if num_workers < 1:
            raise ValueError(f"GradingPool num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"GradingPool timeout_s must be > 0, got {timeout_s}")
        self.num_workers, self.timeout_s, self.start_timeout_s = num_workers, timeout_s, start_timeout_s
        self.memory_limit_mb, self.cache_size, self.warm_up = memory_limit_mb, cache_size, warm_up
        self._cv = threading.Condition()
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._closed = False
        self._cache: dict[tuple[str, str], bool] = {}
        self._pid = os.getpid()
        self.stats = {"pairs": 0, "fast": 0, "cache_hits": 0, "jobs": 0, "timeouts": 0, "worker_deaths": 0,
                      "workers_started": 0}
        _LIVE_POOLS.add(self)

    # ------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill every worker (idle or busy) and refuse further work. Idempotent."""
        with self._cv:
            self._closed = True
            workers, self._all, self._idle = list(self._all), set(), []
            self._cv.notify_all()
        for w in workers:
            w.kill()

    def warmup(self) -> None:
        """Start all workers now and wait until they are ready (so the first step pays no start-up)."""
        held = self._checkout(self.num_workers, block=True)
        try:
            for w in held:
                self._wait_ready(w)
        finally:
            self._checkin(held)

    def worker_pids(self) -> list[int]:
        with self._cv:
            return sorted(w.proc.pid for w in self._all)

    # ------------------------------------------------------------------------------------------- public API
    def grade_pairs(self, pairs: Sequence[tuple[str | None, str | None]], timeout_s: float | None = None,
                    total_timeout_s: float | None = None) -> list[bool]:
        """Verdict per (given, ground_truth) pair, in order. None on either side, a timeout or a dead worker -> False.

        ``timeout_s`` bounds each pair from the moment a worker receives it. ``total_timeout_s`` (optional) bounds the
        whole call, waiting for a busy worker included (pairs not finished by then are False); time spent waiting
        for a worker to START (import math-verify, ~1 s, once per worker) does not count against either."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        out, todo = triage_pairs(pairs, self._cache, self.stats)
        if todo:
            keys = list(todo)
            for key, verdict in zip(keys, self._run_jobs(keys, timeout_s, total_timeout_s)):
                if verdict is None:  # timeout / dead worker: "not equal" now, but not remembered (load may pass)
                    continue
                if len(self._cache) >= self.cache_size:
                    self._cache.clear()
                self._cache[key] = verdict
                for i in todo[key]:
                    out[i] = verdict
        return out

    # ------------------------------------------------------------------------------------------- workers
    def _checkout(self, n: int, block: bool, until: float | None = None) -> list[Worker]:
        """Up to ``n`` workers (idle ones first, then new ones up to ``num_workers``); if ``block``, waits for one
        (until the monotonic time ``until`` when given, then returns none)."""
        if os.getpid() != self._pid:
            raise RuntimeError(f"this GradingPool belongs to process {self._pid}; a forked child must create its own")
        with self._cv:
            while True:
                if self._closed:
                    raise RuntimeError("GradingPool is closed")
                while len(self._idle) < n and len(self._all) < self.num_workers:
                    w = Worker(self.memory_limit_mb, self.start_timeout_s, self.warm_up)
                    self.stats["workers_started"] += 1
                    self._all.add(w)
                    self._idle.append(w)
                if self._idle or not block:
                    held, self._idle = self._idle[:n], self._idle[n:]
                    return held
                if until is not None and time.monotonic() >= until:
                    return []
                self._cv.wait(None if until is None else until - time.monotonic())

    def _checkin(self, workers: list[Worker]) -> None:
        with self._cv:
            self._idle.extend(w for w in workers if w in self._all)
            self._cv.notify_all()

    def _discard(self, w: Worker) -> None:
        with self._cv:
            self._all.discard(w)
            self._cv.notify_all()
        w.kill()

    def _wait_ready(self, w: Worker) -> None:
        while not w.ready:
            remaining = w.start_deadline - time.monotonic()
            if remaining <= 0 or not readable([w.fd], remaining):
                break
            try:
                for frame in w.read_frames():
                    w.ready = w.ready or frame[0] == "ready"
            except EOFError:
                break
        if not w.ready:
            tail = w.stderr_tail()
            self._discard(w)
            raise RuntimeError(f"grading worker did not start within {self.start_timeout_s:.0f} s "
                               f"(`{sys.executable} -m ttrl_megatron.ttrl._worker`); its stderr:\n{tail}")

    def _run_jobs(self, keys: list[tuple[str, str]], timeout_s: float,
                  total_timeout_s: float | None = None) -> list[bool | None]:
        """Grade normalized pairs on the workers with a deadline per job.

        Each worker holds up to ``PIPELINE_DEPTH`` jobs (so it never idles waiting for this thread to wake up); it
        runs them in order, and a job's deadline starts when the worker starts it (at the previous job's result).
        Returns a verdict per key; None for a job that timed out, whose worker died, or that never got a worker
        before the call's deadline (all mean "not equal" to the caller)."""
        run = _Run(keys, timeout_s, total_timeout_s, self.num_workers)
        run.held = self._checkout(min(self.num_workers, len(keys)), block=True, until=run.deadline)
        try:
            while (run.pending or run.running) and run.held:
                self._dispatch(run)
                if not run.pending:  # let other callers use the workers we no longer need
                    spare = [w for w in run.held if w not in run.running]
                    run.held = [w for w in run.held if w in run.running]
                    self._checkin(spare)
                    if not run.running:
                        break
                for w in self._collect(run):
                    self._replace(run, w)
        finally:
            for w in list(run.running):  # interrupted mid-flight: a busy worker is in an unknown state
                run.held.remove(w)
                self._discard(w)
            self._checkin(run.held)
        return run.results

    def _dispatch(self, run: "_Run") -> None:
        """Top up every ready held worker to ``PIPELINE_DEPTH`` queued jobs (none after the call's deadline)."""
        if run.deadline is not None and time.monotonic() >= run.deadline:
            run.pending.clear()  # their verdicts stay None: "not equal"
            return
        for slot, w in enumerate(list(run.held)):
            while w.ready and run.pending and len(run.running.get(w, ())) < PIPELINE_DEPTH:
                job = run.pending.pop_for(slot)
                try:
                    w.send((job, *run.keys[job]))
                except OSError:  # died: this job never started, so it goes to another worker
                    run.pending.push_front([job])
                    self._replace(run, w)
                    break
                queue = run.running.setdefault(w, deque())
                queue.append([job, run.job_deadline() if not queue else None, False])  # [job, deadline, started]
                self.stats["jobs"] += 1

    def _collect(self, run: "_Run") -> list[Worker]:
        """Wait for results until the nearest deadline; return the workers that died or overran their deadline."""
        now = time.monotonic()
        deadlines = [q[0][1] for q in run.running.values()] + [w.start_deadline for w in run.held if not w.ready]
        ready_fds = readable([w.fd for w in run.held], max(0.0, min(deadlines) - now) if deadlines else 0.05)
        if run.deadline is not None and not any(w.ready for w in run.held):
            run.deadline += time.monotonic() - now  # waiting for workers to start does not count
        bad: list[Worker] = []
        for w in run.held:
            if w.fd in ready_fds:
                try:
                    self._handle_frames(run, w, w.read_frames())
                except EOFError:
                    bad.append(w)
        now = time.monotonic()
        for w in run.held:
            if w in bad:
                continue
            if w in run.running and now > run.running[w][0][1]:
                bad.append(w)
                self.stats["timeouts"] += 1
                log.warning("grading job timed out after %.1f s (%.80r vs %.80r); worker %d killed",
                            run.timeout_s, *run.keys[run.running[w][0][0]], w.proc.pid)
            elif not w.ready and now > w.start_deadline:
                bad.append(w)
        return bad

    @staticmethod
    def _handle_frames(run: "_Run", w: Worker, frames: list) -> None:
        for frame in frames:
            if frame[0] == "ready":
                w.ready = True
                continue
            queue = run.running[w]
            if frame[0] == "start":
                queue[0][2] = True
                continue
            run.results[queue.popleft()[0]] = frame[1]
            if queue:
                queue[0][1] = run.job_deadline()  # the worker starts the next queued job now
            else:
                del run.running[w]

    def _replace(self, run: "_Run", w: Worker) -> None:
        """Kill ``w`` (the job it had started keeps verdict None; jobs it had not started go back to pending) and
        take a replacement worker into the run."""
        queue = run.running.pop(w, None)
        if queue:
            if queue[0][2]:  # it died (or was killed) on this job: the job keeps verdict None
                queue.popleft()
                if w.ready:
                    self.stats["worker_deaths"] += 1
            run.pending.push_front([entry[0] for entry in queue])  # never started: retried on another worker
        if not w.ready:
            run.start_failures += 1
            if run.start_failures >= 3:
                raise RuntimeError("grading workers keep failing to start; last stderr:\n" + w.stderr_tail())
        run.held.remove(w)
        self._discard(w)
        run.held += self._checkout(1, block=not run.held and bool(run.pending), until=run.deadline)


class _Run:
    """State of one ``_run_jobs`` call."""

    def __init__(self, keys: list[tuple[str, str]], timeout_s: float, total_timeout_s: float | None, n_slots: int):
        self.keys, self.timeout_s = keys, timeout_s
        self.deadline = None if total_timeout_s is None else time.monotonic() + total_timeout_s
        self.results: list[bool | None] = [None] * len(keys)
        self.pending = _JobQueues(keys, n_slots)
        self.running: dict[Worker, deque[list]] = {}  # worker -> [[job, deadline or None (queued), started], ...]
        self.held: list[Worker] = []
        self.start_failures = 0

    def job_deadline(self) -> float:
        """Deadline of a job a worker starts now: ``timeout_s`` from now, capped by the call's deadline."""
        deadline = time.monotonic() + self.timeout_s
        return deadline if self.deadline is None else min(deadline, self.deadline)


class _JobQueues:
    """Pending jobs routed by their ground-truth string: pairs that share a label go to the same worker slot, whose
    math-verify parse cache then parses that label once (parsing is ~90% of a symbolic grade; without routing every
    worker re-parses every label and two workers do nearly twice the work). An idle worker with an empty queue steals
    from the longest other queue, so routing never leaves a worker idle."""

    def __init__(self, keys: list[tuple[str, str]], n_slots: int):
        self.queues = [deque() for _ in range(max(1, n_slots))]
        for job, (_, truth) in enumerate(keys):
            self.queues[zlib.crc32(truth.encode("utf-8", "replace")) % len(self.queues)].append(job)
        self.count = len(keys)

    def __bool__(self) -> bool:
        return self.count > 0

    def pop_for(self, slot: int) -> int:
        own = self.queues[slot % len(self.queues)]
        source = own if own else max(self.queues, key=len)
        self.count -= 1
        return source.popleft() if source is own else source.pop()

    def push_front(self, jobs: list[int]) -> None:
        """Return jobs that never ran (their worker died) to the front of the first queue, in order."""
        self.queues[0].extendleft(reversed(jobs))
        self.count += len(jobs)

    def clear(self) -> None:
        for q in self.queues:
            q.clear()
        self.count = 0


_DEFAULT: dict[int, GradingPool] = {}
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> GradingPool:
    """The per-process shared pool used by ``grade_answer`` (2 workers, started on first need)."""
    with _DEFAULT_LOCK:
        pool = _DEFAULT.get(os.getpid())
        if pool is None or pool._closed:
            pool = _DEFAULT[os.getpid()] = GradingPool(num_workers=2)
        return pool


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()
