"""Each piece of the megatron-core CPU compatibility layer is still needed, and the layer stays scoped.

One 2-rank spawn (PP=2, so pipeline p2p and tied-embedding sync are exercised). For every piece: the megatron call
that needs it succeeds with all pieces applied, and fails on CPU with that one piece left out, at the expected site.
Every ablated call fails on both ranks at the same point, so no rank waits in a collective.
"""
import pytest

from tests.dist.harness import run_distributed


def _attempt(fn):
    """Run ``fn``; return None on success, else (exception type, innermost frame 'file:function')."""
    import os
    import sys
    import traceback

    try:
        fn()
        return None
    except Exception as exc:  # the ablated piece must make megatron raise; report where
        frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if "megatron/core" in f.filename]
        site = f"{os.path.basename(frames[-1].filename)}:{frames[-1].name}" if frames else "?"
        return type(exc).__name__, site, str(exc)[:200]


def _calls(archs, data):
    """piece -> megatron call needing it (each builds what it uses, so no state leaks between attempts)."""
    import torch

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import seed_all

    def rotary():  # fresh model: RotaryEmbedding moves inv_freq to torch.cuda.current_device() on first use
        build_gpt_model(archs["llama"]).rotary_pos_emb(8)

    def clip():
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        p = torch.nn.Parameter(torch.ones(4))
        p.grad = torch.ones(4)
        clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=2.0)

    def grad_scaler():
        from megatron.core.optimizer.grad_scaler import ConstantGradScaler

        ConstantGradScaler(1.0)

    return {
        "current_device": rotary,
        "synchronize": lambda: fx.train_step(build_gpt_model(archs["llama"]), data),  # p2p sync under PP=2
        "rng_tracker": lambda: seed_all(0),
        "cuda_factories": grad_scaler,  # torch.tensor(..., device="cuda")
        "cuda_factories/tensor.cuda": lambda: build_gpt_model(archs["qwen2_tied"]),  # .cuda() on the tied copy
        "tensor_type": clip,
    }


def _ablations():
    import torch

    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron import cpu_compat
    from ttrl_megatron.megatron.model import ModelArchConfig
    from ttrl_megatron.megatron.parallel import init_distributed, seed_all

    init_distributed(ParallelLayout(tp=1, pp=2, dp=1), seed=0)
    archs = {"llama": ModelArchConfig.from_hf(fx.llama_config(False)),
             "qwen2_tied": ModelArchConfig.from_hf(fx.qwen2_config(True))}
    data = fx.batch()
    out = {"active": cpu_compat.active_pieces(), "idempotent": cpu_compat.apply_cpu_compat() == cpu_compat.PIECES}
    for key, call in _calls(archs, data).items():
        piece = key.split("/")[0]
        cpu_compat.apply_cpu_compat()
        with_all = _attempt(call)
        cpu_compat.apply_cpu_compat([p for p in cpu_compat.PIECES if p != piece])
        without = _attempt(call)
        cpu_compat.apply_cpu_compat()
        seed_all(0)  # an ablated call may have left megatron's RNG tracker half-initialised
        out[key] = dict(with_all=with_all, without=without)
    out["scope"] = _scope_checks(torch)
    import megatron.core.energy_monitor as late  # not imported by megatron's model/optimizer/schedule code

    before = late.torch is torch
    cpu_compat.apply_cpu_compat()
    out["late_import"] = dict(real_before=before, proxied_after=late.torch is not torch)
    return out


def _scope_checks(torch):
    """User code keeps the real torch: CUDA calls outside megatron.core still fail, type() is unchanged."""
    res = {"type": torch.ones(1).type()}
    for name, fn in {"zeros_cuda": lambda: torch.zeros(1, device="cuda"),
                     "current_device": torch.cuda.current_device}.items():
        try:
            fn()
            res[name] = "no error"
        except Exception as exc:  # expected: no CUDA here
            res[name] = type(exc).__name__
    return res


@pytest.fixture(scope="module")
def ranks():
    return run_distributed(_ablations, 2, timeout_s=150)


EXPECTED_SITE = {  # where megatron fails on CPU without the piece (innermost megatron frame)
    "current_device": "rotary_pos_embedding.py:get_emb",
    "synchronize": "p2p_communication.py",
    "rng_tracker": "random.py:add",
    "cuda_factories": "grad_scaler.py:__init__",
    "cuda_factories/tensor.cuda": "language_module.py:setup_embeddings_and_output_layer",
    "tensor_type": "clip_grads.py:clip_grad_by_total_norm_fp32",
}


def test_layer_active_and_idempotent(ranks):
    for r in ranks:
        assert r["active"] == ("current_device", "synchronize", "rng_tracker", "cuda_factories", "tensor_type")
        assert r["idempotent"]


@pytest.mark.parametrize("key", sorted(EXPECTED_SITE))
def test_piece_is_still_needed(ranks, key):
    for r in ranks:
        res = r[key]
        assert res["with_all"] is None, res
        assert res["without"] is not None, f"{key}: megatron call succeeded without the piece; drop the piece?"
        assert res["without"][1].startswith(EXPECTED_SITE[key]), res


def test_user_code_keeps_real_torch(ranks):
    for r in ranks:
        assert r["scope"] == {"type": "torch.FloatTensor", "zeros_cuda": r["scope"]["zeros_cuda"],
                              "current_device": r["scope"]["current_device"]}
        assert r["scope"]["zeros_cuda"] != "no error" and r["scope"]["current_device"] != "no error"


def test_repeated_apply_covers_late_imports(ranks):
    for r in ranks:
        assert r["late_import"] == {"real_before": True, "proxied_after": True}
