"""cpu_compat guards that must hold without patching anything: GPU no-op, version pin, unknown pieces.

(That each piece is still needed is shown in tests/dist/test_cpu_compat.py, in a spawned process.)
"""
import pytest
import torch

from ttrl_megatron.megatron import cpu_compat


@pytest.fixture(autouse=True)
def layer_off():
    """Start from a process without the layer (an earlier test in this process may have applied it, e.g. through
    init_distributed) and put back whatever was active, so test order never matters."""
    before = cpu_compat.active_pieces()
    cpu_compat.remove_cpu_compat()
    yield
    cpu_compat.remove_cpu_compat()
    if before:
        cpu_compat.apply_cpu_compat(before)


def test_noop_when_cuda_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.apply_cpu_compat() == ()
    assert cpu_compat.active_pieces() == ()


def test_refuses_other_megatron_version(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpu_compat, "_megatron_version", lambda: "0.17.0")
    with pytest.raises(RuntimeError, match=r"targets megatron-core 0\.16\.1 but 0\.17\.0"):
        cpu_compat.apply_cpu_compat()
    assert cpu_compat.active_pieces() == ()


def test_unknown_piece_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="unknown piece.*'rng'"):
        cpu_compat.apply_cpu_compat(["rng"])


def test_installed_version_is_the_supported_one():
    from importlib.metadata import version

    assert version("megatron-core") == cpu_compat.SUPPORTED_MEGATRON_CORE
