"""megatron/offload.py on a real megatron-core actor (2 ranks, DP=2, gloo): offloading params / grads / optimizer
state between updates frees their storages and changes nothing about training.

Two actors are built from the same weights; one offloads everything after each update (as around generation) and
reloads before the next, the other never does. Their losses, grad norms and parameters must stay bit-identical over
three updates, for the two layouts that store state differently: fp32 + distributed optimizer (params in DDP's
contiguous buffer, main params are views of it) and bf16 + plain optimizer (fp32 main params are separate tensors,
so they count as optimizer state). One spawn for both.
"""
from __future__ import annotations

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, make_tiny_model

SPEC = TinySpec(arch="qwen2", tie_word_embeddings=True, num_hidden_layers=2, seed=3)
PROMPTS = [[17, 42, 99, 5], [8, 8, 150, 77], [201, 33, 64, 12], [9, 48, 3, 3]]


def _actor(hf_dir: str, dtype: torch.dtype, distopt: bool):
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.optimizer import OptimConfig

    model = build_gpt_model(ModelArchConfig.from_hf(hf_dir), params_dtype=dtype)
    load_hf_weights(model, hf_dir)
    return MegatronActor([model], LogProbConfig(micro_batch_size_per_gpu=2, temperature=1.0),
                         ActorEngineConfig(ppo_mini_batch_size=2, rows_per_prompt=2, ppo_micro_batch_size_per_gpu=2),
                         OptimConfig(lr=1e-2, weight_decay=0.0, clip_grad=1.0, use_distributed_optimizer=distopt))


def _batch(step: int):
    from ttrl_megatron.bridge.sync import verl_batch
    from ttrl_megatron.protocol import DataProto

    gen = torch.Generator().manual_seed(step)
    responses = torch.randint(3, 290, (8, 6), generator=gen).tolist()
    batch = verl_batch([p for p in PROMPTS for _ in range(2)], responses)
    mask = batch["response_mask"].float()
    batch["old_log_probs"] = -torch.rand(8, 6, generator=gen) * mask
    batch["advantages"] = torch.randn(8, 1, generator=gen) * mask
    return DataProto(batch)


def _params(actor) -> list[torch.Tensor]:
    return [p.detach().clone() for chunk in actor.model for p in chunk.parameters()]


def _rank(hf_dir: str) -> dict:
    import torch.distributed as dist

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.offload import RoleOffloader
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout.from_world(dist.get_world_size(), 1, 1), seed=0)
    out = {}
    for tag, dtype, distopt in (("fp32_distopt", torch.float32, True), ("bf16_plain", torch.bfloat16, False)):
        plain, offloaded = _actor(hf_dir, dtype, distopt), _actor(hf_dir, dtype, distopt)
        offloader = RoleOffloader(offloaded.engine, params=True, grads=True, optimizer=True, name="actor")
        same, freed, device_bytes = True, [], []
        for step in range(3):
            a = plain.update_policy(_batch(step))
            b = offloaded.update_policy(_batch(step))
            same &= a["actor/pg_loss"] == b["actor/pg_loss"] and a["actor/grad_norm"] == b["actor/grad_norm"]
            before = offloader.device_bytes()
            freed.append(offloader.offload())  # ... generation would run here ...
            device_bytes.append((before, offloader.device_bytes()))
            offloader.load()
            same &= all(torch.equal(x, y) for x, y in zip(_params(plain), _params(offloaded)))
        out[tag] = {"same": same, "freed": freed, "device_bytes": device_bytes,
                    "param_bytes": sum(p.numel() * p.element_size() for p in _params(offloaded))}
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    hf_dir = str(make_tiny_model(tmp_path_factory.mktemp("tiny_offload"), SPEC))
    return run_distributed(_rank, 2, hf_dir, timeout_s=300)


@pytest.mark.parametrize("tag", ["fp32_distopt", "bf16_plain"])
def test_offload_frees_storages_and_training_is_unchanged(results, tag):
    for rank, r in enumerate(results):
        res = r[tag]
        assert res["same"], f"rank {rank} {tag}: offloaded training diverged"
        for before, after in res["device_bytes"]:
            assert all(v > 0 for v in before.values()), before
            assert all(v == 0 for v in after.values()), after  # every enabled part is freed on the device
        freed = res["freed"][0]
        assert freed["offload/actor_params_bytes"] >= res["param_bytes"]  # whole buffers, maybe padded
        assert freed["offload/actor_grads_bytes"] > 0 and freed["offload/actor_optimizer_bytes"] > 0
        if tag == "bf16_plain":  # fp32 main params (4 B) + two Adam moments (2 x 4 B) per bf16 param (2 B)
            assert freed["offload/actor_optimizer_bytes"] >= 6 * res["param_bytes"]
        else:  # distributed optimizer: each DP rank holds half of the two moments; main params are the model's
            assert freed["offload/actor_optimizer_bytes"] < 2 * res["param_bytes"]
