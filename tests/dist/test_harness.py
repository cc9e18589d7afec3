"""The multi-process harness itself: per-rank results and environment, error propagation, fast failure."""
import time

import pytest

from tests.dist.harness import DistributedTestError, run_distributed


def _identity(tag, scale=1):
    import os

    import torch
    import torch.distributed as dist

    t = torch.tensor([float(dist.get_rank() + 1) * scale])
    dist.all_reduce(t)
    return dict(tag=tag, rank=dist.get_rank(), world=dist.get_world_size(), backend=dist.get_backend(),
                sum=float(t), cuda=torch.cuda.is_available(), threads=torch.get_num_threads(),
                env={k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")})


def _fail_two_ways():
    """rank 1 raises, rank 2 dies without reporting, rank 0 waits in a barrier that can never complete."""
    import os

    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    if dist.get_rank() == 2:
        os._exit(3)
    dist.barrier()


def test_results_in_rank_order_with_torchrun_env():
    res = run_distributed(_identity, 2, "x", scale=2, timeout_s=60)
    assert [r["rank"] for r in res] == [0, 1]
    for rank, r in enumerate(res):
        assert r["tag"] == "x" and r["world"] == 2 and r["backend"] == "gloo" and r["sum"] == 6.0
        assert r["cuda"] is False and r["threads"] == 1
        assert r["env"] == {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}


def test_failures_reported_fast_with_tracebacks_deaths_first():
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as err:
        run_distributed(_fail_two_ways, 3, timeout_s=100)
    assert time.monotonic() - start < 60  # failed fast, not at the 100 s timeout
    msg = str(err.value)
    assert msg.startswith("rank 2 died with exit code 3")  # the root cause comes first
    assert "rank 1 of 3 failed" in msg and "ValueError: boom from rank one" in msg and "_fail_two_ways" in msg
