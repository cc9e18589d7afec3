"""GPU checks of the compute path (marked ``gpu``; skipped without CUDA). Written against megatron-core 0.16.1 and
Transformer Engine as the anchors use them; they have NOT run yet (the CPU suite covers the same logic through the
local layer spec: tests/dist/test_actor_critic_parity.py, tests/dist/test_packing_model.py).

One process, one GPU, world size 1 (NCCL):
- THD packed log-probs through Transformer Engine attention (PackedSeqParams, qkv_format thd, per-sequence RoPE)
  equal the padded (right-aligned, causal) ones and the HF model's, in bf16;
- the chunked log-prob path's peak extra CUDA memory (``torch.cuda.max_memory_allocated``) at vocab 151,936 and
  2,048 tokens stays under half of one fp32 ``[tokens, vocab]`` logits tensor;
- the fusion / overlap settings resolved for this stack (config null = auto: TE RoPE / softmax fusion, Apex
  gradient-accumulation fusion when present, overlapped grad reduce and param gather with the distributed
  optimizer, selective recompute) build, and one update + one log-prob pass run with finite results.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

B, P, R = 4, 16, 24


@pytest.fixture(scope="module")
def world():
    from ttrl_megatron.distributed import ParallelLayout, free_port
    from ttrl_megatron.megatron.parallel import destroy_distributed, init_distributed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    torch.cuda.set_device(0)
    init_distributed(ParallelLayout(1, 1, 1), backend="nccl", seed=1)
    yield
    destroy_distributed()


def _hf_dir(path, vocab=300, hidden=128):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=hidden // 64, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, P + R, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip([16, 5, 9, 1], [24, 3, 17, 11])):
        mask[i, P - pl: P + rl] = 1
    ids = torch.randint(3, vocab, (B, P + R), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "responses": ids[:, P:], "response_mask": mask[:, P:],
            "advantages": torch.randn(B, R, generator=g)}


def test_thd_packed_logprobs_through_te_match_padded_and_hf(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.config.perf import PerfSettings
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import build_model_chunks
    from ttrl_megatron.megatron.model import layer_spec_kind
    from ttrl_megatron.protocol import DataProto

    assert layer_spec_kind() == "te", "this check is about Transformer Engine's THD attention"
    hf_dir = _hf_dir(tmp_path / "hf")
    batch = _batch(300)
    perf = PerfSettings(apply_rope_fusion=True)  # TE's fused THD RoPE
    out = {}
    for packed in (True, False):
        actor = MegatronActor(build_model_chunks(hf_dir, "bfloat16", perf=perf),
                              LogProbConfig(micro_batch_size_per_gpu=B, chunk_size=16), packed=packed, perf=perf)
        out[packed], _ = actor.compute_log_prob(DataProto(dict(batch)))
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).cuda().eval()
    with torch.no_grad():
        ids, mask = batch["input_ids"].cuda(), batch["attention_mask"].cuda()
        logits = hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        ref = torch.log_softmax(logits[:, P - 1: P + R - 1].float(), -1).gather(
            -1, batch["responses"].cuda()[..., None])[..., 0].cpu()
    m = batch["response_mask"].float()
    assert float(((out[True] - out[False]) * m).abs().max()) < 0.05
    assert float(((out[True] - ref) * m).abs().sum() / m.sum()) < 0.02


def test_chunked_logprob_peak_cuda_memory_is_under_half_the_logits(world, tmp_path):
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import build_model_chunks
    from ttrl_megatron.protocol import DataProto

    vocab, t = 151936, 2048
    hf_dir = _hf_dir(tmp_path / "big_vocab", vocab=vocab, hidden=64)
    actor = MegatronActor(build_model_chunks(hf_dir, "bfloat16"), LogProbConfig(micro_batch_size_per_gpu=1))
    ids = torch.randint(3, vocab, (1, t))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "responses": ids[:, 512:]}
    for entropy in (False, True):
        actor.compute_log_prob(DataProto(dict(batch)), calculate_entropy=entropy)  # warm-up
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        actor.compute_log_prob(DataProto(dict(batch)), calculate_entropy=entropy)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        assert extra <= 0.5 * t * vocab * 4, (entropy, extra / (t * vocab * 4))


def test_fusions_and_overlap_build_and_run_one_step(world, tmp_path):
    from ttrl_megatron.config import ActorConfig, ModelConfig, OptimConfig, RolloutConfig
    from ttrl_megatron.config.model_sections import MegatronConfig, TransformerOverrideConfig
    from ttrl_megatron.megatron.actor import build_actor
    from ttrl_megatron.megatron.build import stack_facts
    from ttrl_megatron.megatron.model import unwrap_model
    from ttrl_megatron.protocol import DataProto

    facts = stack_facts()
    hf_dir = _hf_dir(tmp_path / "hf_perf")
    megatron = MegatronConfig(dtype="bfloat16", use_distributed_optimizer=True,
                              override_transformer_config=TransformerOverrideConfig(recompute_granularity="selective"))
    actor = build_actor(ModelConfig(path=hf_dir), ActorConfig(ppo_mini_batch_size=2, megatron=megatron,
                                                              optim=OptimConfig(lr=1e-3)),
                        RolloutConfig(n=2))
    cfg = unwrap_model(actor.model[0]).config
    assert cfg.apply_rope_fusion == facts.te and cfg.bias_activation_fusion
    assert cfg.gradient_accumulation_fusion == facts.apex_grad_accum
    assert cfg.recompute_granularity == "selective"
    ddp = actor.model[0].ddp_config
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather
    batch = _batch(300)
    lp, _ = actor.compute_log_prob(DataProto(dict(batch)))
    batch = dict(batch, old_log_probs=lp)
    metrics = actor.update_policy(DataProto(dict(batch)))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    lp2, _ = actor.compute_log_prob(DataProto(dict(batch)))  # the updated (force-gathered) parameters
    assert torch.isfinite(lp2).all() and not torch.equal(lp2, lp)
    assert dataclasses.is_dataclass(actor.engine.perf)
