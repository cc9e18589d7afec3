"""``RayGrader``: answer grading spread over a Ray cluster's CPUs, with the interface the trainer uses from
``GradingPool`` (``grade_pairs(pairs, timeout_s=None, total_timeout_s=None) -> list[bool]`` and ``close()``).

How: the same in-process fast verdicts, normalized-pair dedupe and verdict cache as ``GradingPool``; the remaining
pairs are split into chunks by their ground-truth string (pairs sharing a label land in one chunk, so a worker's
math-verify parse cache parses that label once) and each chunk is graded by a Ray task (``SPREAD`` over the nodes).
Inside a task the pairs go through a one-worker ``GradingPool`` kept alive per Ray worker process, so the hard
per-pair deadline (a killable process, never SIGALRM) and therefore every verdict are exactly those of the local
pool. Timed-out pairs are "not equal" and, as in the pool, not remembered.

Imports ray lazily (optional dependency); imports no torch.
"""

from __future__ import annotations

import zlib
from typing import Sequence

from ttrl_megatron.ttrl.pool import triage_pairs

__all__ = ["RayGrader"]

_TASK_POOL = {}  # per Ray worker process: the GradingPool reused by every task that process runs


def _grade_chunk(pairs: list[tuple[str, str]], timeout_s: float) -> tuple[list[bool], int]:
    """Ray task body: verdicts for (given, truth) pairs and how many of them timed out (their False is not cached)."""
    from ttrl_megatron.ttrl.pool import GradingPool

    pool = _TASK_POOL.get("pool")
    if pool is None or pool._closed:
        pool = _TASK_POOL["pool"] = GradingPool(num_workers=1, timeout_s=timeout_s)
    before = pool.stats["timeouts"] + pool.stats["worker_deaths"]
    verdicts = pool.grade_pairs(pairs, timeout_s=timeout_s)
    return verdicts, pool.stats["timeouts"] + pool.stats["worker_deaths"] - before


class RayGrader:
    """Grades (given, truth) pairs with Ray tasks; needs ``ray.init()`` to have been called in this process.

    Args:
        timeout_s: default per-pair deadline (seconds a grading process may spend on one pair before it is killed).
        num_tasks: chunks per call (at most one per distinct label); default: the cluster's CPU count.
        cache_size: normalized-pair verdicts remembered across calls.
    """

    def __init__(self, timeout_s: float = 5.0, num_tasks: int | None = None, cache_size: int = 200_000):
        import ray

        if timeout_s <= 0:
            raise ValueError(f"RayGrader timeout_s must be > 0, got {timeout_s}")
        if not ray.is_initialized():
            raise RuntimeError("RayGrader needs a connected Ray driver or worker (ray.init() first)")
        self.timeout_s, self.cache_size = timeout_s, cache_size
        self.num_tasks = num_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1, max_retries=0)(_grade_chunk)
        self._cache: dict[tuple[str, str], bool] = {}
        self.stats = {"pairs": 0, "fast": 0, "cache_hits": 0, "jobs": 0, "tasks": 0, "timeouts": 0}

    def grade_pairs(self, pairs: Sequence[tuple[str | None, str | None]], timeout_s: float | None = None,
                    total_timeout_s: float | None = None) -> list[bool]:
        """Verdict per pair, in order; None on either side, a timeout, or a task past ``total_timeout_s`` -> False."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        out, todo = triage_pairs(pairs, self._cache, self.stats)
        if todo:
            # each distinct normalized pair travels as its first original spelling: the task's pool then takes
            # exactly the path the local pool takes for it (fast verdict None -> normalize -> worker)
            firsts = {key: (str(pairs[rows[0]][0]), str(pairs[rows[0]][1])) for key, rows in todo.items()}
            for key, verdict in self._run(firsts, timeout_s, total_timeout_s).items():
                for i in todo[key]:
                    out[i] = verdict
        return out

    def _run(self, firsts: dict[tuple[str, str], tuple[str, str]], timeout_s: float,
             total_timeout_s: float | None) -> dict[tuple[str, str], bool]:
        """``firsts``: normalized pair -> one original pair; returns the verdict per normalized pair graded."""
        import ray

        keys = list(firsts)
        chunks: list[list[tuple[str, str]]] = [[] for _ in range(min(self.num_tasks, len(keys)))]
        for key in keys:
            chunks[zlib.crc32(key[1].encode("utf-8", "replace")) % len(chunks)].append(key)
        chunks = [c for c in chunks if c]
        task = self._task.options(scheduling_strategy="SPREAD")
        refs = {task.remote([firsts[k] for k in chunk], timeout_s): chunk for chunk in chunks}
        self.stats["jobs"] += len(keys)
        self.stats["tasks"] += len(refs)
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=total_timeout_s)
        for ref in late:  # past the call's deadline: those pairs are "not equal"; kill the task (and its graders)
            ray.cancel(ref, force=True)
        verdicts: dict[tuple[str, str], bool] = {}
        for ref in done:
            chunk = refs[ref]
            results, failed = ray.get(ref)
            self.stats["timeouts"] += failed
            for key, verdict in zip(chunk, results):
                verdicts[key] = bool(verdict)
                if not failed:  # a chunk with a timeout: its Falses may be timeouts, which are never remembered
                    if len(self._cache) >= self.cache_size:
                        self._cache.clear()
                    self._cache[key] = bool(verdict)
        return verdicts

    def close(self) -> None:
        """Nothing to stop: grading processes live in the Ray workers and die with them."""
        self._cache.clear()
