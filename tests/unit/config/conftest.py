"""Fixtures for config tests: a run directory holding the files the demo config points at, and the demo config
composed once per module as the valid base the validate() cases change (``with_changes``)."""

import copy

import pytest

from ttrl_megatron.config import compose, validate


@pytest.fixture
def demo_run_dir(tmp_path):
    """tmp run dir with data/test.parquet and sft_model/ (validate only checks that they exist)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.parquet").write_bytes(b"")
    (tmp_path / "sft_model").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The demo config (2 CPU processes), composed once per module; validate() accepts it as it is."""
    run = tmp_path_factory.mktemp("run")
    (run / "data").mkdir()
    (run / "data" / "test.parquet").write_bytes(b"")
    (run / "sft_model").mkdir()
    cfg = compose([f"trainer.run_dir={run}"], config_name="examples/demo_cpu")
    validate(cfg)  # the base itself is valid
    return cfg


def with_changes(cfg, changes: dict):
    """A deep copy of ``cfg`` with ``{"dotted.field": value}`` set (each field must exist)."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        obj = cfg
        for name in parents:
            obj = getattr(obj, name)
        assert hasattr(obj, leaf), dotted
        setattr(obj, leaf, value)
    return cfg
