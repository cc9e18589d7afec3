"""Weight export (bridge/export.py): Megatron shards -> HF tensors, bit-exact at TP=2 and PP=2, in whole-module buckets.

One spawn per layout checks three tiny checkpoints made here (Qwen2 tied, Qwen2 untied, Llama untied; vocab 300, so
TP=2 pads it to 512 and the padding must be stripped): HF -> Megatron (`load_hf_weights`) -> export must give back
every safetensors tensor bit-for-bit, on every rank, in the planned deterministic order, with every fused vLLM module
(q/k/v weights + biases, gate/up) inside one bucket and no bucket above its limit unless one module alone exceeds it.
The plan itself (pure) is checked without spawning.
"""
from __future__ import annotations

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, make_tiny_model
from ttrl_megatron.bridge import export as E
from ttrl_megatron.bridge import names as N

SPECS = {
    "qwen2_tied": TinySpec(arch="qwen2", tie_word_embeddings=True, seed=1),
    "qwen2_untied": TinySpec(arch="qwen2", tie_word_embeddings=False, seed=2),
    "llama_untied": TinySpec(arch="llama", tie_word_embeddings=False, seed=3),
}
SMALL_BUCKET = 200_000  # below one layer (~0.6 MB here): many buckets, gate+up (256 KB) travels alone


def _facts(tied=True, bias=True, layers=2, vocab=300, padded=512) -> N.ArchFacts:
    return N.ArchFacts(num_layers=layers, hidden_size=128, num_attention_heads=4, num_query_groups=2, head_dim=32,
                       ffn_hidden_size=256, vocab_size=vocab, padded_vocab_size=padded, tie_word_embeddings=tied,
                       qkv_bias=bias, norm_naming="local")


# --- the plan (pure) ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied,bias", [(True, True), (False, False)])
@pytest.mark.parametrize("limit", [1, 150_000, 10 << 20])
def test_plan_keeps_modules_whole_and_respects_the_limit(tied, bias, limit):
    facts = _facts(tied, bias)
    plans = E.plan_buckets(facts, limit, itemsize=4)
    names = [n for p in plans for n in p.names]
    assert names == [n for n, _ in E.stream_order(facts)]  # every tensor once, in stream order
    assert ("lm_head.weight" in names) == (not tied)
    where = {n: i for i, p in enumerate(plans) for n in p.names}
    groups = E.module_groups(facts)
    for name, group in groups.items():
        assert {where[m] for m in group} == {where[name]}, f"{group} split across buckets"
    shapes = N.expected_hf_shapes(facts)
    for p in plans:
        assert p.nbytes == sum(4 * torch.Size(shapes[n]).numel() for n in p.names)
        atoms = {groups[n] for n in p.names}
        assert p.nbytes <= limit or len(atoms) == 1, "an oversize bucket must hold a single module"
    if limit == 1:  # every module alone
        assert len(plans) == len(set(groups.values()))
    if limit == 10 << 20:
        assert len(plans) == 1


def test_plan_rejects_bad_bucket_size():
    with pytest.raises(ValueError, match="bucket_bytes"):
        E.plan_buckets(_facts(), 0, itemsize=4)


# --- TP=2 / PP=2 round trips (one spawn per layout) ---------------------------------------------------------------

def _rank_export(dirs: dict, tp: int, pp: int) -> dict:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout.from_world(dist.get_world_size(), tp, pp), seed=0)
    out = {}
    for key, hf_dir in dirs.items():
        model = build_gpt_model(ModelArchConfig.from_hf(hf_dir))
        load_hf_weights(model, hf_dir)
        hf = load_file(f"{hf_dir}/model.safetensors")
        facts = E.export_facts([model])
        limit_plans = E.plan_buckets(facts, SMALL_BUCKET, 4)
        stats = E.ExportStats()
        got, bucket_names = {}, []
        for bucket in E.export_buckets([model], SMALL_BUCKET, stats):
            bucket_names.append(tuple(n for n, _ in bucket))
            for name, tensor in bucket:
                got[name] = tensor.clone()
        expected = {n: t for n, t in hf.items() if not (facts.tie_word_embeddings and n == "lm_head.weight")}
        out[key] = dict(
            names=list(got), want_names=[n for n, _ in E.stream_order(facts)],
            missing=sorted(set(expected) - set(got)), extra=sorted(set(got) - set(expected)),
            not_exact=sorted(n for n in expected if n in got and not torch.equal(got[n], expected[n])),
            dtypes=sorted({str(t.dtype) for t in got.values()}),
            buckets=bucket_names, plan=[p.names for p in limit_plans], stats=stats.__dict__.copy(),
            bytes=sum(t.numel() * t.element_size() for t in got.values()),
            padded_vocab=facts.padded_vocab_size, vocab=facts.vocab_size,
        )
        # a second export of the same weights is identical (no state carried between syncs)
        again = dict(E.export_tensors([model], 1 << 30))
        out[key]["second_pass_exact"] = all(torch.equal(again[n], got[n]) for n in got) and list(again) == list(got)
    return out


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    return {k: str(make_tiny_model(tmp_path_factory.mktemp(k), spec)) for k, spec in SPECS.items()}


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_export_reproduces_hf_tensors_bit_exactly(hf_dirs, tp, pp):
    results = run_distributed(_rank_export, 2, hf_dirs, tp, pp, timeout_s=240)
    for rank, per_model in enumerate(results):
        for key, r in per_model.items():
            where = f"tp={tp} pp={pp} rank {rank} {key}"
            assert not r["missing"] and not r["extra"], f"{where}: missing {r['missing']} extra {r['extra']}"
            assert not r["not_exact"], f"{where}: not bit-exact: {r['not_exact']}"
            assert r["names"] == r["want_names"], f"{where}: order differs from the plan"
            assert r["buckets"] == r["plan"], f"{where}: buckets differ from the plan"
            assert r["dtypes"] == ["torch.float32"]
            assert r["second_pass_exact"], where
            s = r["stats"]
            assert s["tensors"] == len(r["names"]) and s["buckets"] == len(r["plan"]) and s["bytes"] == r["bytes"]
            # a bucket exceeds the limit only when one module alone does (gate+up: 2 x 256 x 128 fp32)
            assert s["peak_bucket_bytes"] <= max(SMALL_BUCKET, 2 * 256 * 128 * 4)
            assert 0 < s["peak_extra_bytes"] <= s["peak_bucket_bytes"]  # gathered / broadcast tensors are copies
            if tp == 2:
                assert r["padded_vocab"] == 512 and r["vocab"] == 300
    for key in SPECS:  # every rank received every tensor (each checked bit-exact above), in the same buckets
        assert results[0][key]["buckets"] == results[1][key]["buckets"]
