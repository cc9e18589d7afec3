# GPU image: NGC PyTorch (carries CUDA, torch, Transformer Engine and Apex) + megatron-core + vLLM + ttrl-megatron.
#   docker build -t ttrl-megatron .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 -v $PWD/data:/data ttrl-megatron \
#       torchrun --nproc-per-node 8 -m ttrl_megatron.main --config-name examples/qwen2.5-math-1.5b data.train_files=[/data/train.parquet] ...
# It cannot be built on the project's CPU machines (no Docker engine there); the pins follow requirements/gpu.txt.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    VLLM_CACHE_ROOT=/workspace/.cache/vllm

WORKDIR /opt/ttrl-megatron
COPY requirements/gpu.txt requirements/gpu.txt
# Keep the container's torch: vLLM's wheel must match it, so install vLLM without letting it replace torch.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-torch.txt \
    && pip install --no-cache-dir -r requirements/gpu.txt --constraint /tmp/keep-torch.txt
COPY pyproject.toml README.md ./
COPY ttrl_megatron ttrl_megatron
COPY converters converters
COPY conf conf
COPY scripts scripts
RUN pip install --no-cache-dir --no-deps -e .
WORKDIR /workspace
