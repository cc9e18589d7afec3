"""Grading worker process: reads (job_id, given, truth) frames on stdin, writes (job_id, verdict) frames on stdout.

Started by ``pool.GradingPool`` as ``python -m ttrl_megatron.ttrl._worker <parent_pid> <memory_limit_mb> <warm_up 0|1>`` (a fresh
interpreter, never a fork, so it works under torchrun, in threads, and never re-imports the caller's ``__main__``).
It runs ``grading.symbolic_grade`` (math-verify + sympy) in its main thread with math-verify's SIGALRM timeouts off:
the parent enforces the deadline by killing this process. Safety nets so it can never outlive or starve the parent:
PR_SET_PDEATHSIG (SIGKILL when the parent's spawner thread dies), exit on stdin EOF, and an address-space limit.

Frames: 4-byte big-endian length + pickle. The first frame written is ``("ready", pid)``; each job then gives
``("start", job_id)`` and ``(job_id, verdict)``.
Imports no torch.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import sys

_HEADER = struct.Struct(">I")


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:  # not Linux: stdin EOF still ends the loop once the parent is gone
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _limit_memory(limit_mb: int) -> None:
    if limit_mb <= 0:
        return
    try:
        import resource

        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except Exception:
        pass


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main(argv: list[str]) -> int:
    parent_pid, limit_mb, warm = int(argv[1]), int(argv[2]), argv[3] == "1"
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it closes us
    _limit_memory(limit_mb)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the frame stream
    inp = os.fdopen(0, "rb", buffering=0)
    logging.disable(logging.WARNING)  # math-verify logs every disabled timeout and parse failure

    from ttrl_megatron.ttrl.grading import symbolic_grade, warm_up

    if warm:
        warm_up()  # imports and parser caches before declaring readiness, so the first jobs are not 10x slower
    else:
        symbolic_grade("1", "1")  # imports only

    def send(obj) -> None:
        data = pickle.dumps(obj)
        out.write(_HEADER.pack(len(data)) + data)

    send(("ready", os.getpid()))
    while True:
        header = _read_exact(inp, _HEADER.size)
        if header is None:
            return 0
        body = _read_exact(inp, _HEADER.unpack(header)[0])
        if body is None:
            return 0
        job_id, given, truth = pickle.loads(body)
        send(("start", job_id))  # lets the pool tell "died on this job" from "died before starting it"
        try:
            verdict = bool(symbolic_grade(given, truth))
        except Exception:  # MemoryError, RecursionError...: "not equal", keep serving
            verdict = False
        send((job_id, verdict))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
