"""Fixtures for config tests: a run directory holding the files the demo config points at."""

import pytest


@pytest.fixture
def demo_run_dir(tmp_path):
    """tmp run dir with data/test.parquet and sft_model/ (validate only checks that they exist)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.parquet").write_bytes(b"")
    (tmp_path / "sft_model").mkdir()
    return tmp_path
