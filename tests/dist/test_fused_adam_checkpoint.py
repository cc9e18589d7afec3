"""Resume with Transformer Engine / apex FusedAdam (#13 item 7), on CPU through a labelled stand-in.

With TE installed megatron-core builds TE's ``FusedAdam`` (step in the param groups, no per-parameter step) and the
restore raised NotImplementedError. TE cannot be installed here, so ``fused_adam_standin`` provides a CPU class with
FusedAdam's API and state layout and makes megatron-core take its TE (or apex) code paths; the real class is
covered by tests/gpu/test_weights_gpu.py.
One spawn of 2 gloo ranks: at DP=2 an actor with the distributed optimizer (TE and apex flavours) and one with the
plain optimizer (TE) take 2 updates, are saved, and a fresh engine loads them: the next update must be bit-identical
and the param groups' step restored. The DP=2 distributed-optimizer checkpoint then resumes at TP=2 within 1e-6. A
torch-Adam checkpoint loaded into FusedAdam is refused naming both implementations.
"""
from __future__ import annotations

import pytest
import torch

from tests.dist.fused_adam_standin import ApexFusedAdam, FusedAdam
from tests.dist.harness import run_distributed
from tests.dist.test_actor_critic_parity import make_hf_dir
from tests.dist.test_engine_checkpoint import _actor, _hf_params, _max_diff


@pytest.mark.parametrize("cls", [FusedAdam, ApexFusedAdam])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_standin_arithmetic_matches_torch_adamw(cls, weight_decay):
    """The stand-in's update is AdamW's (so a bit-identical resume is a statement about the checkpoint)."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    fused = cls([a], lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=weight_decay, adam_w_mode=True)
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=weight_decay)
    for _ in range(3):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert fused.param_groups[0]["step"] == 3 and "step" not in fused.state[a]
    assert set(fused.state[a]) == {"exp_avg", "exp_avg_sq"}


def _steps(actor) -> list:
    from ttrl_megatron.megatron.engine_checkpoint import _leaves

    return [g.get("step") for leaf in _leaves(actor.engine.optimizer) for g in leaf.optimizer.param_groups]


def _checks(hf_dir: str, root: str) -> dict:
    import os

    from megatron.core import parallel_state
    from transformers import AutoModelForCausalLM

    from tests.dist.fused_adam_standin import fused_adam_installed
    from tests.dist.test_actor_single import _batch_with_old
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.engine_checkpoint import (adam_implementation, _leaves, load_engine_checkpoint,
                                                          save_engine_checkpoint)
    from ttrl_megatron.megatron.parallel import init_distributed

    from ttrl_megatron.protocol import DataProto

    init_distributed(ParallelLayout(1, 1, 2), seed=1)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch_with_old(hf)
    data = lambda: DataProto(dict(batch))  # noqa: E731
    out, expected = {}, {}
    cases = (("te_distopt", "te", True), ("apex_distopt", "apex", True), ("te_plain", "te", False))
    for name, kind, distributed in cases:
        with fused_adam_installed(kind) as cls:
            a = _actor(hf_dir, distributed)
            out[f"{name}_class"] = [(type(leaf.optimizer).__name__, leaf.optimizer.te_style)
                                    for leaf in _leaves(a.engine.optimizer)]
            out[f"{name}_impl"] = adam_implementation(_leaves(a.engine.optimizer)[0].optimizer)
            assert all(isinstance(leaf.optimizer, cls) for leaf in _leaves(a.engine.optimizer))
            a.update_policy(data())
            a.update_policy(data())
            path = os.path.join(root, name)
            save_engine_checkpoint(a.engine, path, hf_source_dir=hf_dir)
            b = _actor(hf_dir, distributed)
            try:
                load_engine_checkpoint(b.engine, path)
            except Exception as exc:  # noqa: BLE001 - reported, the tests say what was expected
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            out[f"{name}_steps"] = (_steps(a), _steps(b))
            ma, mb = a.update_policy(data()), b.update_policy(data())
            expected[name] = (_hf_params(a), ma)
            out[name] = {"param_diff": _max_diff(_hf_params(a), _hf_params(b)),
                         "loss": (ma["actor/loss"], mb["actor/loss"]), "lr": (ma["actor/lr"], mb["actor/lr"])}
    # a torch-Adam checkpoint cannot feed FusedAdam (param groups hold other keys): refused, naming both
    t = _actor(hf_dir, True)
    t.update_policy(data())
    save_engine_checkpoint(t.engine, os.path.join(root, "torch"), hf_source_dir=hf_dir)
    with fused_adam_installed("te"):
        try:
            load_engine_checkpoint(_actor(hf_dir, True).engine, os.path.join(root, "torch"))
            out["cross"] = "no error"
        except Exception as exc:  # noqa: BLE001
            out["cross"] = f"{type(exc).__name__}: {exc}"

    # TP=2 (DP=1; the vocab is padded to 512 instead of 384): resume the DP=2 TE distributed-optimizer checkpoint
    del a, b, t
    parallel_state.destroy_model_parallel()
    init_distributed(ParallelLayout(2, 1, 1), seed=1)
    if "te_distopt" in expected:
        with fused_adam_installed("te"):
            c = _actor(hf_dir, True)
            load_engine_checkpoint(c.engine, os.path.join(root, "te_distopt"))
            mc = c.update_policy(data())
            ref_params, ref_metrics = expected["te_distopt"]
            out["tp2"] = {"param_diff": _max_diff(ref_params, _hf_params(c)),
                          "loss": (ref_metrics["actor/loss"], mc["actor/loss"])}
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    hf_dir = make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_fused_adam"))
    root = tmp_path_factory.mktemp("fused_adam_ckpts")
    return run_distributed(_checks, 2, hf_dir, str(root), timeout_s=300)


CASES = ["te_distopt", "apex_distopt", "te_plain"]


@pytest.mark.parametrize("name", CASES)
def test_megatron_built_the_fused_adam(results, name):
    assert results[0][f"{name}_class"] == [("FusedAdam", name.startswith("te"))]  # (class name, TE flavour)
    assert results[0][f"{name}_impl"] == "fused"


@pytest.mark.parametrize("name", CASES)
def test_fused_adam_resume_is_bit_identical(results, name):
    for rank in results:
        r = rank[name]
        assert "error" not in r, r.get("error")
        assert r["param_diff"] == 0.0
        assert r["loss"][0] == r["loss"][1]
        assert r["lr"][0] == r["lr"][1] > 0


@pytest.mark.parametrize("name", CASES)
def test_param_group_step_is_restored(results, name):
    saved, loaded = results[0][f"{name}_steps"]
    assert saved == loaded and set(saved) == {4}, (saved, loaded)  # 2 updates x 2 mini-batch steps


def test_torch_adam_checkpoint_into_fused_adam_is_refused(results):
    msg = results[0]["cross"]
    assert msg.startswith("CheckpointMismatchError"), msg
    assert "adam_implementation='torch'" in msg and "adam_implementation='fused'" in msg, msg


def test_fused_adam_checkpoint_resumes_at_tp2(results):
    r = results[0]["tp2"]
    assert r["param_diff"] <= 1e-6
    assert r["loss"][0] == pytest.approx(r["loss"][1], abs=1e-6)
