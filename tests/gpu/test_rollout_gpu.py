"""GPU checks of the rollout side (marked `gpu`, skipped without CUDA): what the CPU tests cannot show.

Launches tests/gpu/rollout_gpu_worker.py with torchrun (NCCL, one rank per GPU, at most 2) on a ~150M-parameter
random Qwen2 made here, and checks per rank:
- the external_launcher engine owns the rank's device (its worker on cuda:LOCAL_RANK, the trainer's current device
  unchanged), and generation runs with CUDA graphs (enforce_eager=False), reproducible per seed;
- sleep (level 2) frees device memory (weights + KV cache), `wake_up(["weights"])` and `wake_up(["kv_cache"])` take
  it back, a full push after the sleep restores the model: the default bf16 parity check passes (megatron-core bf16
  actor vs vLLM bf16), and the colocated refit (ColocatedRollout) runs; its GB/s is printed;
- with >= 2 GPUs: rollout TP=2 (one engine over ranks 0-1) gives the same samples on both ranks and passes parity;
- an engine core in another process (in_process=False) takes a push over one reused CUDA IPC bucket.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("rollout_gpu_worker.py")


def _model(path: Path) -> str:
    from tests.integration.tiny_models import TinySpec, make_tiny_model

    spec = TinySpec(arch="qwen2", vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                    num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                    tie_word_embeddings=True, seed=3)
    return str(make_tiny_model(path, spec))


def _launch(scenario: str, nproc: int, hf_dir: str, out: Path) -> list[dict]:
    from ttrl_megatron.distributed import free_port

    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               VLLM_CACHE_ROOT=str(out / "vllm_cache"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                           str(WORKER), scenario, hf_dir, str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:]
    return [json.loads((out / f"{scenario}_rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("gpu_qwen2"))


@pytest.fixture(scope="module")
def colocated(hf_dir, tmp_path_factory):
    return _launch("colocated", min(2, torch.cuda.device_count()), hf_dir, tmp_path_factory.mktemp("colocated"))


def test_engine_per_rank_owns_its_device(colocated):
    for r in colocated:
        assert r["backend"] == "external_launcher"
        assert r["worker_device"] == f"cuda:{r['local_rank']}", r
        assert r["current_device"] == r["current_device_after"] == r["local_rank"], r
        assert r["engine_gib"] > 0.5, r  # weights + KV cache landed on THIS rank's device


def test_cuda_graph_generation_is_reproducible_per_seed(colocated):
    for r in colocated:
        assert "NONE" not in r["cudagraph_mode"], r["cudagraph_mode"]
        assert r["reproducible"] and r["seed_matters"], r
        print(f"rank {r['rank']}: {r['tokens']} tokens in {r['generate_s']:.2f} s with CUDA graphs")
    if len(colocated) == 2:  # the two ranks are independent engines with their own (same) seed: same samples
        assert colocated[0]["sampled"] == colocated[1]["sampled"]


def test_sleep_frees_and_wake_restores_memory(colocated):
    for r in colocated:
        assert r["freed_by_sleep_gib"] > 0.5 * r["engine_gib"], r
        assert r["weights_wake_gib"] > 0 and r["kv_wake_gib"] > 0, r
        back = r["weights_wake_gib"] + r["kv_wake_gib"]
        assert abs(r["freed_by_sleep_gib"] - back) < 0.1 * r["freed_by_sleep_gib"] + 0.25, r


def test_bf16_parity_after_a_push_and_refit_speed(colocated):
    for r in colocated:
        assert r["parity"]["rollout/token_mult_prob_error"] - 1 <= 0.05, r["parity"]
        assert r["refit"]["rollout/token_mult_prob_error"] - 1 <= 0.05, r["refit"]
        model_mib = r["refit_bytes"] / 2**20
        print(f"rank {r['rank']}: refit {model_mib:.0f} MiB in {r['refit_s']:.3f} s = {r['refit_gbps']:.2f} GB/s, "
              f"peak extra {r['refit_peak_extra_mib']:.0f} MiB with 64 MiB buckets; parity {r['parity']}")
        assert r["refit_peak_extra_mib"] < 0.6 * model_mib, r  # about a bucket + a layer, not a model copy


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="rollout TP=2 needs 2 GPUs")
def test_rollout_tp2_engine_over_two_ranks(hf_dir, tmp_path_factory):
    r0, r1 = _launch("tp2", 2, hf_dir, tmp_path_factory.mktemp("tp2"))
    assert r0["backend"] == "external_launcher" and r0["sampled"] == r1["sampled"]
    for r in (r0, r1):
        assert r["worker_device"] == f"cuda:{r['local_rank']}"
        assert r["parity"]["rollout/token_mult_prob_error"] - 1 <= 0.05, r["parity"]


def test_engine_core_in_another_process_refits_over_cuda_ipc(hf_dir, tmp_path):
    """in_process=False on a GPU: the weights reach the engine core's process through ONE reused CUDA IPC bucket (the
    anchors' colocated refit): what lands scores bit for bit like an engine started from the saved weights, and the
    sender's extra device memory during the push is one buffer (a bucket, or the largest module when bigger)."""
    from tests.integration.tiny_models import load_hf_model, perturbed_state_dict
    from ttrl_megatron.rollout import SamplingConfig, VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    def config(path, **kw):
        return VLLMEngineConfig(model_path=str(path), dtype="float32", max_model_len=256, seed=0, in_process=False,
                                gpu_memory_utilization=0.3, run_dir=str(tmp_path / "run"), **kw)

    hf = load_hf_model(hf_dir)
    new = {k: v.cuda() for k, v in perturbed_state_dict(hf, seed=4).items()}
    largest = max(t.numel() * t.element_size() for t in new.values())
    prompts = [[5, 6, 7, 8], [9, 10]]
    far = VLLMRolloutEngine(config(hf_dir, update_bucket_mib=16))
    try:
        assert far.weight_transport == "shared" and far.placement()["pid"] != os.getpid()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stats = far.update_weights(new)
        extra = torch.cuda.max_memory_allocated() - before
        assert stats["calls"] >= 2 and stats["tensors"] == len(new), stats
        assert extra <= max(16 << 20, largest) + (1 << 20), (extra, largest)
        responses = far.generate(prompts, 2, SamplingConfig(max_tokens=16, seed=3)).response_ids
        got = far.compute_logprobs([p for p in prompts for _ in range(2)], responses)
        print(f"CUDA IPC refit: {stats['bytes'] / 2**20:.0f} MiB in {stats['calls']} buckets, "
              f"{stats['seconds']:.3f} s, sender peak extra {extra / 2**20:.0f} MiB")
    finally:
        far.shutdown()
    hf.load_state_dict({k: v.cpu() for k, v in new.items()}, strict=False)
    hf.save_pretrained(tmp_path / "saved", safe_serialization=True)
    fresh = VLLMRolloutEngine(config(tmp_path / "saved"))
    try:
        want = fresh.compute_logprobs([p for p in prompts for _ in range(2)], responses)
        diff = max(abs(a - b) for x, y in zip(got, want) for a, b in zip(x, y))
        assert diff < 1e-5, diff  # fp32 on both sides, same kernels; a stale or garbled tensor moves nats
    finally:
        fresh.shutdown()
