"""Suite-wide settings: CPU-friendly threads and vLLM env defaults, and the `gpu` marker's skip rule."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One thread per process: on 2 cores, tiny models run 5-10x faster single-threaded (PLATFORM.md) and the
# multi-process tests would otherwise oversubscribe the machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep vLLM in-process (start-up 3-4 s instead of 20-38 s) and its files inside the checkout.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".cache" / "vllm"))
os.environ.setdefault("VLLM_RPC_BASE_PATH", str(ROOT / ".cache" / "vllm-rpc"))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked `gpu`)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
