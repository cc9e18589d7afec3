"""Shared grading pool for the ttrl unit tests (worker start-up costs ~1 s; one pool serves the whole directory)."""

import pytest

from ttrl_megatron.ttrl import GradingPool


@pytest.fixture(scope="session")
def pool():
    with GradingPool(num_workers=2, timeout_s=20.0, warm_up=False) as p:
        p.warmup()
        yield p
