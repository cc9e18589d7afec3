"""Packed (THD) and right-aligned (BSHD) micro-batch layouts and their response slots (megatron/packing.py)."""
import pytest
import torch

from ttrl_megatron.megatron.packing import build_layout, gather_slots, scatter_slots

P, R = 4, 3


def _micro_batch(prompt_lens, response_lens):
    """verl layout, token ids 1.. (0 = pad)."""
    b = len(prompt_lens)
    mask = torch.zeros(b, P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        mask[i, P - p: P + r] = 1
    ids = (torch.arange(b * (P + R)).reshape(b, P + R) + 1) * mask
    return ids, mask


def _sequences(ids, mask):
    return [ids[i][mask[i].bool()] for i in range(ids.shape[0])]


@pytest.mark.parametrize("align", [1, 2, 4])
def test_packed_layout_concatenates_real_tokens_with_per_sequence_positions(align):
    ids, mask = _micro_batch([2, 4, 1], [3, 0, 2])
    lay = build_layout(ids, mask, P, packed=True, align=align)
    seqs = _sequences(ids, mask)
    lens = torch.tensor([len(s) for s in seqs])
    padded = (lens + align - 1) // align * align
    assert lay.packed and lay.inputs["input_ids"].shape == (1, int(padded.sum())) == (1, lay.tokens)
    cu = lay.inputs["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu.tolist() == [0] + padded.cumsum(0).tolist()
    assert lay.max_seqlen == int(padded.max())
    for i, s in enumerate(seqs):
        start = int(cu[i])
        assert torch.equal(lay.inputs["input_ids"][0, start:start + len(s)], s)
        assert lay.inputs["input_ids"][0, start + len(s):int(cu[i + 1])].eq(0).all()  # alignment padding
        assert lay.inputs["position_ids"][0, start:int(cu[i + 1])].tolist() == list(range(int(padded[i])))


@pytest.mark.parametrize("packed", [True, False])
def test_slots_point_at_the_token_before_each_response_token(packed):
    ids, mask = _micro_batch([2, 4, 1], [3, 0, 2])
    lay = build_layout(ids, mask, P, packed=packed, align=2)
    flat = lay.inputs["input_ids"].reshape(-1)
    resp = ids[:, P:]
    assert lay.rows.tolist() == [0, 0, 0, 2, 2] and lay.cols.tolist() == [0, 1, 2, 0, 1]
    for row, col, idx in zip(lay.rows.tolist(), lay.cols.tolist(), lay.index.tolist()):
        # the slot's position holds the previous real token, and the next position holds the response token
        seq = _sequences(ids[row:row + 1], mask[row:row + 1])[0].tolist()
        k = seq.index(int(resp[row, col]))
        assert int(flat[idx]) == seq[k - 1] and int(flat[idx + 1]) == seq[k]


def test_padded_layout_is_right_aligned_with_positions_from_zero():
    ids, mask = _micro_batch([2, 4], [1, 3])
    lay = build_layout(ids, mask, P, packed=False, align=4)
    assert not lay.packed and lay.inputs["input_ids"].shape == (2, 8) and lay.tokens == 16
    for i, s in enumerate(_sequences(ids, mask)):
        assert torch.equal(lay.inputs["input_ids"][i, :len(s)], s) and lay.inputs["input_ids"][i, len(s):].eq(0).all()
    assert lay.inputs["position_ids"][1].tolist() == list(range(8))


def test_gather_and_scatter_slots():
    ids, mask = _micro_batch([2, 3], [2, 1])
    lay = build_layout(ids, mask, P, packed=True)
    out = torch.arange(lay.tokens, dtype=torch.float32).reshape(1, -1, 1).requires_grad_()
    got = gather_slots(out, lay)[:, 0]
    assert got.tolist() == lay.index.float().tolist()
    full = scatter_slots(got, lay, (2, R))
    assert full.shape == (2, R) and full[0, 2] == 0 and full[1, 1] == 0
    full.sum().backward()  # differentiable through both
    assert out.grad.reshape(-1)[lay.index].eq(1).all() and out.grad.sum() == len(lay.index)


def test_a_response_without_prompt_is_refused():
    ids, mask = _micro_batch([0], [2])
    with pytest.raises(ValueError, match="prompt"):
        build_layout(ids, mask, P, packed=True)
