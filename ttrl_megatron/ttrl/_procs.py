"""Process plumbing for the grading pool: one spawner thread, a worker handle with framed pipes, and poll().

Workers are fresh interpreters (``python -m ttrl_megatron.ttrl._worker``), never forks, so the pool works under
torchrun, from threads, and never re-imports the caller's ``__main__``. All of them are started by ONE long-lived
daemon thread because the kernel's parent-death signal (set by the worker) is tied to the thread that forked it.
Imports no torch.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["Worker", "readable"]

_HEADER = struct.Struct(">I")
_PKG_PARENT = str(Path(__file__).resolve().parents[2])


class _Spawner:
    """Starts every worker from one long-lived daemon thread: the kernel's parent-death signal is tied to the thread
    that forked, so workers must not be forked by short-lived caller threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._pid = -1

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a forked child whose spawner thread is gone
                self._queue = queue.Queue()
                threading.Thread(target=self._run, args=(self._queue,), name="ttrl-grader-spawner", daemon=True).start()
                self._pid = os.getpid()
            q = self._queue
        box: dict = {}
        done = threading.Event()
        q.put((args, kwargs, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["proc"]

    @staticmethod
    def _run(q: queue.Queue) -> None:
        while True:
            args, kwargs, box, done = q.get()
            try:
                box["proc"] = subprocess.Popen(args, **kwargs)
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()


_SPAWNER = _Spawner()


class Worker:
    """One worker process and its framed pipes."""

    def __init__(self, memory_limit_mb: int, start_timeout_s: float, warm_up: bool = True):
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.errfile = tempfile.TemporaryFile()
        args = [sys.executable, "-m", "ttrl_megatron.ttrl._worker", str(os.getpid()), str(memory_limit_mb),
                str(int(warm_up))]
        self.proc = _SPAWNER.popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile,
                                   bufsize=0, env=env, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        self.buf = bytearray()
        self.ready = False
        self.start_deadline = time.monotonic() + start_timeout_s

    def send(self, obj) -> None:
        data = pickle.dumps(obj)
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)

    def read_frames(self) -> list:
        """Frames that are complete after one read of the available bytes; EOFError when the worker is gone."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            raise EOFError
        self.buf += chunk
        frames = []
        while len(self.buf) >= _HEADER.size:
            n = _HEADER.unpack_from(self.buf)[0]
            if len(self.buf) < _HEADER.size + n:
                break
            frames.append(pickle.loads(bytes(self.buf[_HEADER.size:_HEADER.size + n])))
            del self.buf[:_HEADER.size + n]
        return frames

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self.errfile.seek(0)
            return self.errfile.read().decode(errors="replace")[-limit:]
        except Exception:
            return ""

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.errfile):
            try:
                f.close()
            except Exception:
                pass


def readable(fds: list[int], timeout_s: float) -> set[int]:
    """fds with data (or EOF) within ``timeout_s``; poll() has no 1024-fd limit, unlike select()."""
    if not fds:
        time.sleep(timeout_s)
        return set()
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return {fd for fd, _ in poller.poll(max(0, int(timeout_s * 1000) + 1))}


