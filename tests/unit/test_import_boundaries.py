"""Architecture boundaries (ARCHITECTURE.md), enforced by reading every module's imports with `ast`.

- algorithms/, ttrl/ and perf/ are pure: no torch.distributed, megatron, vllm, hydra, omegaconf (ttrl/ and perf/ not
  even torch).
- Only megatron/ and bridge/export.py import megatron.core; only rollout/vllm_engine.py imports vllm.
- Only main.py and the config loader import hydra/omegaconf; bridge/names.py is pure.
- The optional launchers stay optional: only launch/nemo_run.py imports nemo_run, only ray_main.py and launch/ray_*.py
  import ray.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ttrl_megatron"
INFRA_PKGS = ("ttrl_megatron.distributed", "ttrl_megatron.megatron", "ttrl_megatron.bridge", "ttrl_megatron.rollout",
              "ttrl_megatron.trainer")


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved against the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel_parts = path.relative_to(PKG.parent).with_suffix("").parts
    pkg_parts = rel_parts[:-1] if rel_parts[-1] != "__init__" else rel_parts[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _modules():
    return sorted(p for p in PKG.rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(PKG).as_posix()


def _hits(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_module_respects_boundaries(path):
    rel = _rel(path)
    names = _imports(path)
    problems = []
    if rel.startswith("algorithms/"):
        problems += _hits(names, ("torch.distributed", "megatron", "vllm", "hydra", "omegaconf") + INFRA_PKGS)
    if rel.startswith(("ttrl/", "perf/")):
        problems += _hits(names, ("torch", "megatron", "vllm", "hydra", "omegaconf") + INFRA_PKGS)
    if rel == "bridge/names.py":
        problems += _hits(names, ("torch.distributed", "megatron", "vllm", "hydra", "omegaconf"))
    if not (rel.startswith("megatron/") or rel == "bridge/export.py"):
        problems += _hits(names, ("megatron",))
    if rel != "rollout/vllm_engine.py":
        problems += _hits(names, ("vllm",))
    if rel != "launch/nemo_run.py":
        problems += _hits(names, ("nemo_run",))
    if not (rel == "ray_main.py" or rel.startswith("launch/ray_")):
        problems += _hits(names, ("ray",))
    if rel not in ("main.py", "config.py", "config_loader.py", "ray_main.py") and not rel.startswith("config/"):
        problems += _hits(names, ("hydra", "omegaconf"))
    assert not problems, f"{rel} imports {problems}, which ARCHITECTURE.md forbids there"


def test_pure_packages_import_without_infrastructure():
    """Importing the pure packages must not drag megatron or vllm into the process."""
    import subprocess
    import sys

    code = (
        "import sys, importlib\n"
        "for m in ('ttrl_megatron.protocol', 'ttrl_megatron.algorithms', 'ttrl_megatron.ttrl',\n"
        "          'ttrl_megatron.perf.flops'):\n"
        "    try:\n        importlib.import_module(m)\n    except ModuleNotFoundError:\n        pass\n"
        "bad = [m for m in ('megatron.core', 'vllm', 'hydra') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PKG.parent)
