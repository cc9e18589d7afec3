"""Show that requirements/gpu.txt resolves as ONE pip resolution for the Docker image's platform (#13 item 9).

    python scripts/check_gpu_pins.py [--report out.json]

Runs pip's resolver against the package registry for linux x86_64 / CPython 3.12 (the Dockerfile's Ubuntu 24.04
base), wheels only, ignoring what is installed here and this machine's pip configuration:

    pip --isolated install --dry-run --ignore-installed --target <tmp> --report <json> --only-binary=:all:
        --python-version 3.12 --platform manylinux_2_39_x86_64 ... --platform linux_x86_64 -r requirements/gpu.txt

then checks that every pinned package resolved to its pin (so nothing, vLLM's own `torch==` pin included, pulled
another version) and that torch's CUDA runtime major equals the CUDA of the Dockerfile's base image. Needs the
registry (takes minutes: pip fetches the metadata of ~200 packages, not the wheels). Last line: `RESULT {json}`.
The offline half of the check (Dockerfile / cpu.txt / pyproject agree with gpu.txt) is tests/unit/test_gpu_requirements.py.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_TXT = ROOT / "requirements" / "gpu.txt"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)")
# glibc 2.39 (Ubuntu 24.04) runs every manylinux wheel down to manylinux1
PLATFORMS = ([f"manylinux_2_{v}_x86_64" for v in range(39, 4, -1)]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"])


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = GPU_TXT) -> dict[str, str]:
    """normalised name -> pinned version of every requirement line (extras dropped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = PIN.match(line)
            if not m:
                raise ValueError(f"{path}: {line!r} is not pinned exactly (name==version)")
            out[norm(m.group(1))] = m.group(3)
    return out


def base_cuda_major(dockerfile: Path = ROOT / "Dockerfile") -> int:
    m = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", dockerfile.read_text(), re.M)
    if not m:
        raise ValueError(f"{dockerfile}: no `ARG CUDA_IMAGE=nvidia/cuda:<major>.<minor>...` line")
    return int(m.group(1))


# Pure-python dependencies published as sdists only (pip refuses sdists when --platform is given): built here into
# universal py3-none-any wheels, exactly what `pip install` builds inside the image.
SDIST_ONLY = ("antlr4-python3-runtime==4.9.3",)  # hydra-core 1.3.2 -> antlr4-python3-runtime==4.9.*


def resolve(report: Path) -> dict:
    wheels = tempfile.mkdtemp(prefix="gpu-pins-wheels-")
    subprocess.run([sys.executable, "-m", "pip", "--isolated", "wheel", "--quiet", "--no-deps", "-w", wheels,
                    *SDIST_ONLY], check=True)
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--target", tempfile.mkdtemp(prefix="gpu-pins-"), "--report", str(report), "--only-binary=:all:",
           "--find-links", wheels, "--python-version", "3.12",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-r", str(GPU_TXT)]
    print("$", " ".join(cmd[2:8]), "... -r requirements/gpu.txt", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(report.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default=None, help="keep pip's JSON report here")
    args = parser.parse_args(argv)
    report = Path(args.report or tempfile.mktemp(suffix=".json"))
    resolved = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in resolve(report)["install"]}
    wanted = pins()
    wrong = {n: (v, resolved.get(n)) for n, v in wanted.items() if resolved.get(n) != v}
    cuda = resolved.get("cuda-toolkit") or resolved.get("nvidia-cuda-runtime") or resolved.get("nvidia-cuda-runtime-cu12")
    cuda_major = int(cuda.split(".")[0]) if cuda else None
    result = {"ok": not wrong and cuda_major == base_cuda_major(), "packages": len(resolved),
              "torch": resolved.get("torch"), "vllm": resolved.get("vllm"),
              "transformer-engine-cu13": resolved.get("transformer-engine-cu13"), "torch_cuda_runtime": cuda,
              "dockerfile_cuda_major": base_cuda_major(), "not_at_pin": wrong}
    for name in sorted(wanted):
        print(f"  {name:28s} pinned {wanted[name]:12s} resolved {resolved.get(name)}")
    print("RESULT " + json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
