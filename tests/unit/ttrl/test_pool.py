"""GradingPool lifecycle: dedupe and cache, a dying worker, concurrent callers, close() leaves no process behind."""

import os
import signal
import threading
import time

import pytest

from ttrl_megatron.ttrl import GradingPool

HEAVY_EQUAL = [(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"), (r"3\sqrt{2}", r"\sqrt{18}"), ("x^2-1", "(x-1)(x+1)"),
               ("2x+3", "3+2x"), (r"\frac{9}{4}\pi", r"\frac{9\pi}{4}")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); read its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_dedupe_and_cache(pool):
    jobs0 = pool.stats["jobs"]
    pairs = HEAVY_EQUAL * 20  # 100 pairs, 5 distinct
    assert pool.grade_pairs(pairs) == [True] * len(pairs)
    assert pool.stats["jobs"] - jobs0 <= len(HEAVY_EQUAL)
    jobs1 = pool.stats["jobs"]
    assert pool.grade_pairs(pairs[:5]) == [True] * 5
    assert pool.stats["jobs"] == jobs1  # answered from the verdict cache


@pytest.fixture(scope="module")
def single():
    """A one-worker pool shared by the tests below (each worker start costs ~1 s)."""
    with GradingPool(num_workers=1, timeout_s=30.0, warm_up=False) as p:
        p.warmup()
        yield p


def test_results_are_deterministic_across_pool_sizes(pool, single):
    pairs = [(g, t) for g, t in HEAVY_EQUAL] + [("x+1", "x+2"), (r"\frac{a}{b}", "a/b"), (r"\{1,x\}", r"\{x,1\}")]
    assert single.grade_pairs(pairs) == pool.grade_pairs(pairs)


def test_killed_worker_is_replaced_and_close_leaves_no_process():
    with GradingPool(num_workers=2, timeout_s=20.0, warm_up=False) as p:
        p.warmup()
        pids = p.worker_pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)  # dies while idle
        time.sleep(0.2)
        assert p.grade_pairs(HEAVY_EQUAL) == [True] * len(HEAVY_EQUAL)
        assert pids[0] not in p.worker_pids() and len(p.worker_pids()) == 2

        # dies while busy: its job counts as "not equal" (or, killed before it started the job, the job is retried
        # and then times out) and the worker is replaced
        def killer():
            time.sleep(0.5)
            for pid in p.worker_pids():
                os.kill(pid, signal.SIGKILL)

        th = threading.Thread(target=killer)
        th.start()
        assert p.grade_pairs([(r"\Gamma(10^{9})", "1")], timeout_s=5.0) == [False]
        th.join()
        assert p.stats["worker_deaths"] >= 1
        assert p.grade_pairs([("ab", "ba")]) == [True]
        final = p.worker_pids()
    assert p.worker_pids() == []
    for pid in final + pids:
        assert not _alive(pid)
    with pytest.raises(RuntimeError, match="closed"):
        p.grade_pairs([("a+2b", "2b+a")])


def test_concurrent_callers_share_the_pool(pool):
    out = {}

    def worker(i):
        out[i] = pool.grade_pairs([(f"{i}x+{i}", f"{i}+{i}x"), (f"{i}x", f"{i + 1}x")])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 7)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert out == {i: [True, False] for i in range(1, 7)}


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        GradingPool(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        GradingPool(timeout_s=0)


def test_workers_die_with_a_killed_parent(tmp_path):
    """No orphans even when the caller is SIGKILLed (no close, no atexit) while its workers are stuck in sympy
    (so they never read the EOF on stdin): the kernel's parent-death signal ends them."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, threading\n"
        "from ttrl_megatron.ttrl import GradingPool\n"
        "pool = GradingPool(num_workers=2, warm_up=False)\n"
        "t = threading.Thread(target=pool.warmup); t.start(); t.join()\n"  # started from a short-lived thread
        "for hostile in (r'\\Gamma(10^{9})', r'\\cos(x)^{1000} + \\sin(x)^{999}'):\n"  # both workers busy, deaf to EOF
        "    threading.Thread(target=pool.grade_pairs, args=([(hostile, '1')], 600.0), daemon=True).start()\n"
        "import time; time.sleep(1.0)\n"
        "print(' '.join(map(str, pool.worker_pids())), flush=True)\n"
        "sys.stdin.read()\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_total_timeout_bounds_waiting_for_a_busy_worker(single):
    """grade_answer's contract: while the only worker hangs on a pair, a second caller still returns in time."""
    p = single
    results = {}

    def call(name, pair, timeout_s):
        t0 = time.monotonic()
        verdict = p.grade_pairs([pair], timeout_s=timeout_s, total_timeout_s=timeout_s)[0]
        results[name] = (verdict, time.monotonic() - t0)

    threads = [threading.Thread(target=call, args=("hang", (r"\Gamma(10^{9})", "1"), 4.0)),
               threading.Thread(target=call, args=("wait", ("a+3b", "3b+a"), 1.0))]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    for th in threads:
        th.join(30)
    assert results["wait"][0] is False and 0.9 < results["wait"][1] < 1.0 + 1.5  # no worker free in time
    assert results["hang"][0] is False and results["hang"][1] < 4.0 + 3.0
    assert p.grade_pairs([("a+3b", "3b+a")]) == [True]  # not cached as False; graded by the replacement


def test_jobs_queued_behind_a_hanging_job_are_not_lost(single):
    """One worker, pipelined: the pairs queued behind a hanging one go to the replacement worker and are graded."""
    p = single
    before = dict(p.stats)
    pairs = [(r"\cos(x)^{1000} + \sin(x)^{999}", "1"), ("5a+2b", "2b+5a"), ("7a-b", "-b+7a"), ("a^3b", "ba^3")]
    assert p.grade_pairs(pairs, timeout_s=1.0) == [False, True, True, True]
    assert p.stats["timeouts"] - before["timeouts"] == 1
    assert p.stats["workers_started"] - before["workers_started"] == 1
