"""Shared fixtures: a Qwen2.5-Math-1.5B config.json (the architecture only: the plan needs no weights) and the
reference run's config (conf/examples/qwen2.5-math-1.5b.yaml) pointed at it."""

import json

import pytest

from tests.unit.megatron.test_arch import QWEN25_MATH_15B
from ttrl_megatron.config import compose


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2.5-math-1.5b")
    (path / "config.json").write_text(json.dumps(QWEN25_MATH_15B))
    return path


@pytest.fixture(scope="session")
def qwen_arch(qwen_dir):
    from ttrl_megatron.megatron.arch import ModelArchConfig

    return ModelArchConfig.from_hf(qwen_dir)


KEEP = object()


@pytest.fixture
def reference(qwen_dir):
    """compose(*overrides, chunk=KEEP) -> the reference config with ``model.path`` = the 1.5B config folder.

    ``chunk`` pins the log-prob path the plan models (``actor_rollout_ref.model.logprob_chunk_size``): None = the
    full-logits path, an int = the chunked one, whether or not this checkout's ModelConfig has the field (the
    compute helper adds it with a default), so the arithmetic tests mean the same on both sides of that merge.
    KEEP leaves the composed value (what validate() checks)."""

    def make(*overrides, chunk=KEEP):
        cfg = compose([f"actor_rollout_ref.model.path={qwen_dir}", *overrides],
                      config_name="examples/qwen2.5-math-1.5b")
        if chunk is not KEEP:
            cfg.actor_rollout_ref.model.logprob_chunk_size = chunk
        return cfg

    return make
