"""Lint: every tensor factory in the engine, bridge and rollout code says where its tensor lives (#13 device proxies).

A bare ``torch.empty(...)`` makes a host tensor: on a GPU run it then meets a CUDA parameter or an NCCL collective
and fails (or silently copies) far from where it was made. The contract (HELPERS.md, devices.py): a factory in
``ttrl_megatron/megatron/``, ``bridge/`` and ``rollout/`` passes ``device=`` (from ``distributed/devices.py`` or the
device of the tensor it will meet), or, when the host is intended, its call carries a trailing ``# host: <why>``.

``trainer/`` is not linted: it holds the driver's batch, which is host by policy (``devices.host_device``); the
engines move what they take to the compute device at their own boundary, and that boundary is linted here.
Factories that copy the device of a tensor (``*_like``, ``Tensor.new_*``) are fine as they are.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINTED = ("ttrl_megatron/megatron", "ttrl_megatron/bridge", "ttrl_megatron/rollout")
FACTORIES = frozenset({
    "empty", "zeros", "ones", "full", "arange", "range", "tensor", "as_tensor", "asarray", "rand", "randn", "randint",
    "randperm", "eye", "linspace", "logspace", "empty_strided", "scalar_tensor", "tril_indices", "triu_indices",
    "normal", "Generator",
})
HOST_COMMENT = re.compile(r"#\s*host:\s*\S")


def _torch_aliases(tree: ast.Module) -> set[str]:
    names = {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
    return names


def _has_device(call: ast.Call, factory: str) -> bool:
    if any(k.arg == "device" for k in call.keywords):
        return True
    return factory == "Generator" and bool(call.args)  # torch.Generator(device)


def unmarked_factories(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: code`` of each factory call without ``device=`` and without a ``# host: why`` comment."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    aliases = _torch_aliases(tree)
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in FACTORIES and isinstance(node.func.value, ast.Name)
                and node.func.value.id in aliases):
            continue
        if _has_device(node, node.func.attr):
            continue
        span = lines[node.lineno - 1: node.end_lineno]
        if any(HOST_COMMENT.search(line) for line in span):
            continue
        out.append(f"{filename}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def _files() -> list[Path]:
    return sorted(p for d in LINTED for p in (ROOT / d).rglob("*.py"))


def test_linted_folders_exist():
    for d in LINTED:
        assert (ROOT / d).is_dir(), d
    assert len(_files()) > 10


def test_every_factory_names_its_device():
    found = [hit for path in _files() for hit in unmarked_factories(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, ("tensor factories without device= or a '# host: <why>' comment (see this test's doc):\n  "
                       + "\n  ".join(found))


@pytest.mark.parametrize("code,flagged", [
    ("import torch\nx = torch.empty(3)\n", True),
    ("import torch\nx = torch.zeros(3, dtype=torch.long)  # host: row ids of the host batch\n", False),
    ("import torch\nx = torch.zeros(3)  # host:\n", True),  # a reason is required
    ("import torch\nx = torch.full((2,), 1.0, device=dev)\n", False),
    ("import torch\ng = torch.Generator()\n", True),
    ("import torch\ng = torch.Generator(dev)\n", False),
    ("import torch as th\nx = th.arange(4)\n", True),
    ("import torch\nx = torch.tensor(\n    [1, 2],\n    dtype=torch.long)  # host: ids\n", False),
    ("import torch\nx = torch.empty_like(y)\nz = y.new_zeros(3)\n", False),
    ("import torch\nx = torch.randperm(5, generator=g)\n", True),
])
def test_the_lint_flags_what_it_should(code, flagged):
    assert bool(unmarked_factories(code)) is flagged
