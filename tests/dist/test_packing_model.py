"""The CPU side of packing and chunked log-probs, in ONE spawned rank:

- ``PackedDotProductAttention`` (local spec + THD) equals megatron's local attention over the whole pack with the
  ``[1, 1, t, t]`` block-diagonal causal mask, values and gradients;
- a packed THD forward of the GPTModel (PackedSeqParams, per-sequence RoPE from cu_seqlens) gives each sequence the
  logits the HF model gives it alone;
- the chunked log-prob computation never holds a ``[n, V]`` tensor, forward or backward (the storage counter of
  bench/bench_logprob_memory.py), while the unchunked one does;
- a dry run on the ``meta`` device of the layout -> slots -> chunked log-probs -> backward path: any tensor made on
  the host where the compute device was meant fails there as it would on a GPU (the device-proxy contract).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.dist.test_actor_critic_parity import make_hf_dir

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_logprob_memory.py"


def _live_storage():
    spec = importlib.util.spec_from_file_location("bench_logprob_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.self_check()
    return module.LiveStorage


def _attention_checks(arch) -> dict:
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from ttrl_megatron.megatron.local_thd import PackedDotProductAttention, block_causal_mask
    from ttrl_megatron.megatron.model import build_transformer_config
    from ttrl_megatron.megatron.parallel import current_layout

    config = build_transformer_config(arch, current_layout())
    kw = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    packed_attn, plain_attn = PackedDotProductAttention(**kw), DotProductAttention(**kw)
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 7, 12, 16], dtype=torch.int32)
    t, heads, dim = 16, arch.num_attention_heads, arch.head_dim
    groups = arch.num_query_groups
    q = torch.randn(t, heads, dim, generator=g).requires_grad_()
    k = torch.randn(t, groups, dim, generator=g).requires_grad_()
    v = torch.randn(t, groups, dim, generator=g).requires_grad_()
    w = torch.randn(t, 1, heads * dim, generator=g)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=5, max_seqlen_kv=5)
    out_a = packed_attn(q, k, v, None, packed_seq_params=psp)
    grads_a = torch.autograd.grad((out_a * w).sum(), (q, k, v))
    out_b = plain_attn(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), block_causal_mask(cu, t))
    grads_b = torch.autograd.grad((out_b * w).sum(), (q, k, v))
    return {"attn_out_err": float((out_a - out_b).abs().max()),
            "attn_grad_err": max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b)),
            "attn_shape": tuple(out_a.shape)}


def _thd_forward_checks(arch, hf_dir) -> dict:
    from megatron.core.packed_seq_params import PackedSeqParams
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    model = build_gpt_model(arch)
    load_hf_weights(model, hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(1)
    lens = [5, 9, 3, 7]
    seqs = [torch.randint(3, arch.vocab_size, (n,), generator=g) for n in lens]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(lens),
                          max_seqlen_kv=max(lens))
    err = 0.0
    with torch.no_grad():
        out = model(ids, pos, None, packed_seq_params=psp)[..., : arch.vocab_size]
        for i, s in enumerate(seqs):
            err = max(err, float((out[0, int(cu[i]):int(cu[i + 1])] - hf(s[None]).logits[0]).abs().max()))
    # forward_logits' Transformer Engine branch (right-aligned rows, no mask) on the local spec: same logits
    from tests.dist import mcore_fixtures as fx
    from ttrl_megatron.megatron.model import forward_logits

    data = fx.batch(vocab=arch.vocab_size)
    with torch.no_grad():
        masked = forward_logits(model, data["input_ids"], data["attention_mask"])
        model.ttrl_spec = "te"
        aligned = forward_logits(model, data["input_ids"], data["attention_mask"])
        model.ttrl_spec = "local"
    valid = data["attention_mask"].bool()
    return {"thd_logits_err": err, "te_branch_err": float((masked - aligned)[valid].abs().max()),
            "te_branch_pad_zero": float(aligned[~valid].abs().max())}


def _memory_checks() -> dict:
    from ttrl_megatron.megatron.logprobs import chunked_logprobs, unchunked_logprobs

    live_storage = _live_storage()
    g = torch.Generator().manual_seed(2)
    n, h, vocab, chunk = 1024, 16, 32000, 64
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(vocab, h, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    full = n * vocab * 4
    out = {}
    for name, grad in (("forward", False), ("backward", True)):
        counter = live_storage()
        with counter, torch.set_grad_enabled(grad):
            lp, ent = chunked_logprobs(hidden, weight, targets, vocab_size=vocab, temperature=0.9, chunk_size=chunk,
                                       with_entropy=True, entropy_grad=grad)
            if grad:
                (lp.sum() + ent.sum()).backward()
        out[f"chunked_{name}_peak_over_full"] = counter.peak / full
    counter = live_storage()
    with counter, torch.no_grad():
        unchunked_logprobs(hidden @ weight.t(), targets, vocab, 0.9, True)
    out["unchunked_forward_peak_over_full"] = counter.peak / full
    out["chunk_bytes_over_full"] = chunk * vocab * 4 / full
    out["weight_grad_over_full"] = vocab * h * 4 / full
    return out


def _meta_dry_run() -> dict:
    from ttrl_megatron.megatron.logprobs import chunked_logprobs
    from ttrl_megatron.megatron.packing import build_layout, gather_slots, scatter_slots

    meta = torch.device("meta")
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    ids = torch.randint(3, 50, mask.shape) * mask
    out = {}
    for packed in (True, False):
        lay = build_layout(ids, mask, 2, packed=packed, align=2).to(meta)  # built on the host, then moved
        hidden = torch.randn(lay.tokens, 8, device=meta, requires_grad=True)
        weight = torch.randn(64, 8, device=meta, requires_grad=True)
        targets = ids[:, 2:].to(meta)[lay.rows, lay.cols]
        lp, ent = chunked_logprobs(gather_slots(hidden[None], lay), weight, targets, vocab_size=60, temperature=0.5,
                                   chunk_size=2, with_entropy=True, entropy_grad=True)
        full = scatter_slots(lp, lay, (2, 3)) + scatter_slots(ent, lay, (2, 3))
        full.sum().backward()
        out[f"meta_{'packed' if packed else 'padded'}"] = (full.device.type, hidden.grad.device.type,
                                                           weight.grad.device.type)
    return out


def _checks(hf_dir: str) -> dict:
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(1, 1, 1), seed=1)
    arch = ModelArchConfig.from_hf(hf_dir)
    return {**_attention_checks(arch), **_thd_forward_checks(arch, hf_dir), **_memory_checks(), **_meta_dry_run()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    hf_dir = make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_packing"))
    return run_distributed(_checks, 1, hf_dir, timeout_s=240)[0]


def test_packed_local_attention_equals_block_diagonal_mask(results):
    assert results["attn_shape"][:2] == (16, 1)
    assert results["attn_out_err"] <= 1e-6 and results["attn_grad_err"] <= 1e-5


def test_thd_forward_gives_each_sequence_its_own_logits(results):
    assert results["thd_logits_err"] <= 1e-5


def test_forward_logits_right_aligns_rows_for_transformer_engine(results):
    assert results["te_branch_err"] <= 1e-5 and results["te_branch_pad_zero"] == 0.0


def test_chunked_logprobs_never_hold_full_vocab_logits(results):
    # a few chunk-sized buffers (+ the [V, h] weight gradient in backward), never the [n, V] logits
    chunk = results["chunk_bytes_over_full"]
    assert results["chunked_forward_peak_over_full"] <= 2.5 * chunk, results
    assert results["chunked_backward_peak_over_full"] <= 4 * chunk + 3 * results["weight_grad_over_full"], results
    assert results["unchunked_forward_peak_over_full"] >= 2.0, results  # the counter does see full-size tensors


def test_layout_and_chunked_logprobs_dry_run_on_meta(results):
    assert results["meta_packed"] == results["meta_padded"] == ("meta", "meta", "meta")
