"""``rollout_is_weights`` from the batch to the policy loss, on the real Megatron actor (one spawned rank).

Plumbing: the actor ships the batch's ``rollout_is_weights [B, R]`` to every micro-batch, row- and
column-aligned with that micro-batch's responses (each row's weights are ``row id + 1 + t / 100`` on its valid tokens,
so a misaligned row or column is caught), and an update without the key is bit-identical to one before the key
existed (same metrics, same weights).

Effect (the actor passes ``mb.tensors.get("rollout_is_weights")`` to the policy loss, as verl's actor does): with every weight 0.5 the first update's pg_loss and pre-clip grad norm are exactly half of
the unweighted ones (a loss scaled by 0.5 has gradients scaled by 0.5, exactly in binary floating point).
"""
from __future__ import annotations


import pytest
import torch

from tests.dist.harness import run_distributed
from tests.dist.test_actor_critic_parity import B, make_hf_dir
from tests.dist.test_actor_single import _batch_with_old, _configs





def _build(hf_dir: str, **kw):
    from ttrl_megatron.megatron.actor import build_actor

    return build_actor(*_configs(hf_dir, entropy_coeff=0.0, **kw))


def _checks(hf_dir: str) -> dict:
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.protocol import DataProto

    init_distributed(ParallelLayout(1, 1, 1), seed=1)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch_with_old(hf)
    mask = batch["response_mask"].float()
    rows, cols = batch["responses"].shape
    tagged = (torch.arange(rows)[:, None] + 1.0 + torch.arange(cols)[None, :] / 100.0) * mask
    out = {"mismatches": [], "microbatches": 0}

    actor = _build(hf_dir, use_dynamic_bsz=False)  # fixed 2-row micro-batches: several per mini-batch
    original = actor._policy_loss

    def recording(counts, scale, gen, mb, output):
        w, resp = mb.tensors.get("rollout_is_weights"), mb.tensors["responses"]
        out["microbatches"] += 1
        for j in range(resp.shape[0]):
            row = int(w[j].max().round()) - 1 if w is not None and w[j].max() > 0 else -1
            width = w.shape[1] if w is not None else 0
            if w is None or row < 0 or not torch.equal(resp[j], batch["responses"][row, :width]) \
                    or not torch.equal(w[j], tagged[row, :width]):
                out["mismatches"].append(j)
        return original(counts, scale, gen, mb, output)

    actor._policy_loss = recording
    actor.update_policy(DataProto(dict(batch, rollout_is_weights=tagged)))

    # one optimizer step (all 8 rows in one mini-batch), so the first update's metrics are comparable exactly
    plain, half, again = (_build(hf_dir, ppo_mini_batch_size=B // 2) for _ in range(3))
    out["plain"] = plain.update_policy(DataProto(dict(batch)))
    out["half"] = half.update_policy(DataProto(dict(batch, rollout_is_weights=0.5 * mask)))
    out["again"] = again.update_policy(DataProto(dict(batch)))
    out["same_params"] = all(torch.equal(a, b) for a, b in zip(plain.model[0].parameters(),
                                                                again.model[0].parameters()))
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_distributed(_checks, 1, make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_is")), timeout_s=300)[0]


def test_weights_reach_every_micro_batch_aligned(results):
    assert results["microbatches"] >= 4 and results["mismatches"] == []


def test_update_without_weights_is_bit_identical(results):
    assert results["plain"] == results["again"] and results["same_params"]


def test_half_weights_halve_the_first_update(results):
    plain, half = results["plain"], results["half"]
    assert half["actor/pg_loss"] == pytest.approx(0.5 * plain["actor/pg_loss"], rel=1e-6, abs=1e-9)
    assert half["actor/grad_norm"] == pytest.approx(0.5 * plain["actor/grad_norm"], rel=1e-6)
