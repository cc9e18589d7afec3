"""Round trips and explicit layouts of the fused-tensor / TP / vocab rules in bridge/layouts.py and names.py."""

import pytest
import torch

from ttrl_megatron.bridge import layouts as L
from ttrl_megatron.bridge import names as N


def _arch(heads=4, groups=2, head_dim=8, hidden=32, ffn=48, vocab=50, padded=64, tied=False, bias=True, layers=2,
          naming="local"):
    return N.ArchFacts(layers, hidden, heads, groups, head_dim, ffn, vocab, padded, tied, bias, naming)


def _qkv_by_loop(q, k, v, arch):
    """Independent construction of Megatron's per-group qkv order, one group at a time."""
    hpg, hd, rows = arch.heads_per_group, arch.head_dim, []
    for g in range(arch.num_query_groups):
        rows += [q[g * hpg * hd:(g + 1) * hpg * hd], k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]]
    return torch.cat(rows)


@pytest.mark.parametrize("heads,groups", [(4, 1), (4, 2), (4, 4), (8, 2), (8, 4), (12, 4), (8, 8)])
@pytest.mark.parametrize("trailing", [(32,), ()], ids=["weight", "bias"])
def test_qkv_merge_matches_per_group_order_and_round_trips(heads, groups, trailing):
    arch = _arch(heads=heads, groups=groups)
    q = torch.randn(heads * 8, *trailing)
    k, v = torch.randn(groups * 8, *trailing), torch.randn(groups * 8, *trailing)
    fused = L.merge_qkv(q, k, v, groups)
    assert torch.equal(fused, _qkv_by_loop(q, k, v, arch))
    q2, k2, v2 = L.split_qkv(fused, groups, heads // groups, 8)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fc1_tp_shard_is_gate_r_up_r_and_gathers_back(tp):
    gate, up = torch.randn(48, 32), torch.randn(48, 32)
    full = L.merge_fc1(gate, up)
    shards = [L.tp_shard("fc1", L.FC1, full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, torch.cat([gate.chunk(tp)[r], up.chunk(tp)[r]]))
    assert torch.equal(L.tp_gather(L.FC1, shards), full)
    if tp > 1:  # the classic bug: concatenating fc1 shards as if column-parallel scrambles gate and up
        assert not torch.equal(torch.cat(shards), full)
    g2, u2 = L.split_fc1(L.tp_gather(L.FC1, shards))
    assert torch.equal(g2, gate) and torch.equal(u2, up)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("kind,shape", [(L.VOCAB, (64, 32)), (L.QKV, (64, 32)), (L.ROW, (32, 64)),
                                        (L.REPLICATED, (32,)), (L.QKV, (64,))])
def test_tp_shard_gather_round_trip(tp, kind, shape):
    full = torch.randn(*shape)
    shards = [L.tp_shard("t", kind, full, r, tp) for r in range(tp)]
    dim = L.SPLIT_DIM[kind]
    if dim is not None:
        assert all(s.shape[dim] == shape[dim] // tp for s in shards)
    assert torch.equal(L.tp_gather(kind, shards), full)


def test_tp_shard_rejects_indivisible_size_naming_the_tensor():
    with pytest.raises(ValueError, match="my.weight.*not divisible"):
        L.tp_shard("my.weight", L.ROW, torch.randn(4, 6), 0, 4)


def test_qkv_shard_needs_whole_groups():
    arch = _arch(heads=4, groups=2)
    with pytest.raises(ValueError, match="num_query_groups=2.*tensor parallel size 4"):
        N.shard_full("decoder.layers.0.self_attention.linear_qkv.weight", torch.randn(64, 32), arch, 0, 4)


def test_vocab_padding_adds_zero_rows_and_export_strips_them():
    arch = _arch(vocab=50, padded=64)
    emb = torch.randn(50, 32)
    full = N.hf_to_megatron_full(N.param_specs(arch)[0], {"model.embed_tokens.weight": emb}, arch)
    assert full.shape == (64, 32) and torch.equal(full[:50], emb) and not full[50:].any()
    [(name, back)] = N.megatron_full_to_hf(N.EMBEDDING, full, arch)
    assert name == "model.embed_tokens.weight" and torch.equal(back, emb)
    with pytest.raises(ValueError, match="more than the padded vocab"):
        L.pad_vocab(torch.randn(70, 32), 64)


def _random_hf(arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g) for n, s in N.expected_hf_shapes(arch).items()}


def _shard_from_pieces(spec, hf, arch, tp_rank, tp_size, like):
    """Assemble one TP rank's local tensor from the streaming pieces of each HF tensor."""
    local = torch.full_like(like, float("nan"))
    for hf_name in spec.hf_names:
        for p in N.hf_to_megatron_shard(hf_name, hf[hf_name], arch, tp_rank, tp_size):
            if p.megatron_name != spec.megatron_name:
                continue
            if p.rows is None:
                local.copy_(p.data)
            else:
                local[p.rows] = p.data
    return local


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("heads,groups", [(4, 4), (8, 4), (16, 4), (8, 8)])
@pytest.mark.parametrize("tied,bias", [(False, True), (True, True), (False, False)])
def test_streaming_pieces_equal_sharded_full_and_model_round_trips(tp, heads, groups, tied, bias):
    """HF -> per-rank shards (built tensor by tensor) == shard(full); gather + export gives the HF tensors back."""
    arch = _arch(heads=heads, groups=groups, tied=tied, bias=bias)
    hf = _random_hf(arch)
    back = {}
    for spec in N.param_specs(arch):
        full = N.hf_to_megatron_full(spec, hf, arch)
        shards = [N.shard_full(spec.megatron_name, full, arch, r, tp) for r in range(tp)]
        for r in range(tp):
            assert torch.equal(_shard_from_pieces(spec, hf, arch, r, tp, shards[r]), shards[r]), spec.megatron_name
        back.update(N.megatron_full_to_hf(spec.megatron_name, N.gather_shards(spec.megatron_name, shards), arch))
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_tied_embedding_feeds_output_copy_and_exports_once():
    arch = _arch(tied=True)
    emb = torch.randn(50, 32)
    pieces = N.hf_to_megatron_shard("model.embed_tokens.weight", emb, arch, 1, 2)
    assert [(p.megatron_name, p.tied_copy) for p in pieces] == [(N.EMBEDDING, False), (N.OUTPUT_LAYER, True)]
    assert torch.equal(pieces[0].data, pieces[1].data) and pieces[0].data.shape == (32, 32)
    assert N.megatron_full_to_hf(N.OUTPUT_LAYER, torch.randn(64, 32), arch) == []
    assert N.OUTPUT_LAYER not in [s.megatron_name for s in N.param_specs(arch)]
    with pytest.raises(KeyError, match="lm_head.weight.*ties embeddings"):
        N.hf_to_megatron_name("lm_head.weight", arch)


@pytest.mark.parametrize("tied", [False, True])
def test_megatron_full_shape_matches_the_built_tensor(tied):
    arch = _arch(tied=tied)
    hf = _random_hf(arch)
    for spec in N.param_specs(arch):
        assert N.megatron_full_shape(spec, arch) == tuple(N.hf_to_megatron_full(spec, hf, arch).shape)
