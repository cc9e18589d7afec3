"""Rollout engines: the engine-neutral contract (base.py) and the vLLM implementation (vllm_engine.py).

Importing this package does not import vllm; import `ttrl_megatron.rollout.vllm_engine` for the engine.
"""

from ttrl_megatron.rollout.base import (
    FINISH_REASONS,
    RolloutEngine,
    RolloutOutput,
    SamplingConfig,
    derive_seed,
    right_pad,
)
from ttrl_megatron.rollout.config import VLLMEngineConfig
from ttrl_megatron.rollout.weights import WeightSpec, WeightUpdateError

__all__ = [
    "FINISH_REASONS",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingConfig",
    "VLLMEngineConfig",
    "WeightSpec",
    "WeightUpdateError",
    "derive_seed",
    "right_pad",
]
