# GPU image: CUDA 13.0 devel (Ubuntu 24.04, Python 3.12) + the PyPI torch that vLLM 0.32.0 pins + megatron-core +
# Transformer Engine built against that torch + ttrl-megatron.
#   docker build -t ttrl-megatron .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 -v $PWD/data:/data ttrl-megatron \
#       torchrun --nproc-per-node 8 -m ttrl_megatron.main --config-name examples/qwen2.5-math-1.5b data.train_files=[/data/train.parquet] ...
#
# Why not an NGC PyTorch base: its torch reports a version like 2.x.0a0+<hash>.nv, which never equals vLLM's exact
# `torch==` pin, so `pip install vllm` cannot resolve (or would replace the container's torch). Here torch comes from
# the same place vLLM's wheel was built against (PyPI, CUDA 13.0 wheels), and everything else is built or resolved
# against it: the layout verl's docker/Dockerfile.stable.vllm uses (nvidia/cuda devel base + PyPI torch + TE built
# with --no-build-isolation).
# Pins: requirements/gpu.txt (one pip resolution; scripts/check_gpu_pins.py shows it resolves against the registry).
# TE_VERSION must equal the transformer-engine pin there (tests/unit/test_gpu_requirements.py checks both files).
# It cannot be built on the project's CPU machines (no Docker engine there).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# Transformer Engine's torch extension, compiled here against the installed torch (its core library is a wheel).
ARG TE_VERSION=2.11.0
# GPU architectures TE compiles for: 90 = H100/H200 (add 80 for A100, 100 for B200).
ARG NVTE_CUDA_ARCHS=90
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    TOKENIZERS_PARALLELISM=false \
    VLLM_CACHE_ROOT=/workspace/.cache/vllm

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev python3.12-venv git build-essential \
       ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv ${VIRTUAL_ENV} \
    && pip install --upgrade pip setuptools wheel

WORKDIR /opt/ttrl-megatron
COPY requirements/gpu.txt requirements/gpu.txt
# One resolution: torch==2.13.0 is vLLM 0.32.0's own pin, so nothing replaces it later.
RUN pip install -r requirements/gpu.txt

# TE's torch extension against that torch: --no-build-isolation (build with the installed torch, not a fresh one)
# and --no-deps (its dependencies came from requirements/gpu.txt). Build tools only for this step.
RUN pip install cmake ninja pybind11 \
    && NVTE_FRAMEWORK=pytorch NVTE_CUDA_ARCHS=${NVTE_CUDA_ARCHS} MAX_JOBS=${MAX_JOBS} \
       pip install --no-build-isolation --no-deps "transformer-engine-torch==${TE_VERSION}" \
    && python -c "import torch, transformer_engine.pytorch, vllm, megatron.core; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| vllm', vllm.__version__, \
'| megatron-core', megatron.core.__version__)"

COPY pyproject.toml README.md ./
COPY ttrl_megatron ttrl_megatron
COPY converters converters
COPY conf conf
COPY scripts scripts
RUN pip install --no-deps -e .
WORKDIR /workspace
