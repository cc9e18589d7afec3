"""ttrl_megatron.algorithms imports only torch, numpy, the standard library and itself (ARCHITECTURE.md boundaries)."""

import ast
import sys
from pathlib import Path

import ttrl_megatron.algorithms as algorithms

ALLOWED_THIRD_PARTY = {"torch", "numpy"}
FORBIDDEN_MODULES = ("torch.distributed",)


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_algorithms_import_only_torch_numpy_stdlib():
    package_dir = Path(algorithms.__file__).parent
    files = sorted(package_dir.glob("*.py"))
    assert len(files) >= 10
    bad = []
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            ok = (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
                  or module.startswith("ttrl_megatron.algorithms"))
            if not ok or module.startswith(FORBIDDEN_MODULES):
                bad.append(f"{path.name}: {module}")
    assert not bad, bad
