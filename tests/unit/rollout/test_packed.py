"""Packed rollouts (rollout/packed.py) and the tensor gather over rollout groups (trainer/generation.py).

The gather runs in a real 2-process gloo world (one spawn). The engine there is a deterministic function of
(prompt, seed) standing in for vLLM, because what is tested is the orchestration around it: which rollout group
generates which prompts, which rank keeps which slice, and that the gathered batch equals the single-process one.
The real engine under the same orchestration (TP=2 over two ranks) is tests/integration/test_rollout_tp.py.
"""

import pytest
import torch

from ttrl_megatron.rollout.base import RolloutOutput, SamplingConfig
from ttrl_megatron.rollout.packed import PackedRollout, pack_bits, unpack_bits
from ttrl_megatron.trainer.assemble import assemble_batch, prompt_uids
from ttrl_megatron.trainer.generation import RolloutGroups, generate_dp, sampling_for

OUT = RolloutOutput(n=2, response_ids=[[11, 12, 1], [13], [], [150_000, 17, 18]],
                    logprobs=[[-0.1, -0.2, -0.3], [-0.4], [], [-0.7, -1e-9, -33.5]],
                    finish_reasons=["stop", "stop", "abort", "length"])


def test_pack_roundtrip_padding_and_wire_format():
    packed = PackedRollout.from_output(OUT)
    assert packed.token_ids.dtype == torch.int32 and packed.logprobs.dtype == torch.float32
    assert packed.to_output().response_ids == OUT.response_ids
    assert packed.finish_reasons == OUT.finish_reasons and packed.num_prompts == 2
    for length in (None, 5):
        want, got = OUT.to_padded(0, length), packed.to_padded(0, length)
        assert set(want) == set(got)
        for key in want:
            assert torch.equal(want[key], got[key]), key
    with pytest.raises(ValueError, match="shorter than the longest row"):
        packed.to_padded(0, 2)
    # the float32 log-probs travel as int32 words bit for bit; padding of a gather buffer is ignored
    words = torch.cat([packed.encode(), torch.full((7,), -5, dtype=torch.int32)])
    back = PackedRollout.decode(2, packed.header().tolist(), words)
    assert torch.equal(back.token_ids, packed.token_ids) and torch.equal(back.logprobs, packed.logprobs)
    assert torch.equal(back.lengths, packed.lengths) and torch.equal(back.finish, packed.finish)
    # 7 ids up to 150,000 packed at 18 bits: 126 bits = 4 words (not 7); 7 log-prob words; lengths + finish 2 x 4
    assert packed.header().tolist() == [4, 7, 1, 18]
    assert PackedRollout.words(packed.header().tolist()) == 2 * 4 + 4 + 7 == packed.encode().numel()
    wide = packed.encode(25)  # a gather packs every part at the widest part's width
    assert wide.numel() == PackedRollout.words(packed.header().tolist(), 25) == 2 * 4 + 6 + 7
    assert PackedRollout.decode(2, packed.header().tolist(), wide, 25).to_output().response_ids == OUT.response_ids
    with pytest.raises(ValueError, match="token id 150000 needs more than 17 bits"):
        packed.encode(17)
    # row slices and concatenation keep prompt-major order
    parts = [packed.rows(0, 1), packed.rows(1, 3), packed.rows(3, 4), PackedRollout.empty(2)]
    assert PackedRollout.concat(parts).to_output().response_ids == OUT.response_ids
    with pytest.raises(ValueError, match="different n"):
        PackedRollout.concat([packed, PackedRollout.empty(3)])


@pytest.mark.parametrize("bits", [1, 5, 17, 18, 31])
def test_bit_packing_round_trips_at_every_width(bits):
    gen = torch.Generator().manual_seed(bits)
    for count in (0, 1, 31, 32, 33, 1000):
        values = torch.randint(0, 1 << bits, (count,), generator=gen, dtype=torch.int64).to(torch.int32)
        if count:
            values[0] = (1 << bits) - 1  # all ones, the top value of the width
        words = pack_bits(values, bits)
        assert words.dtype == torch.int32 and words.numel() == -(-count * bits // 32)
        assert torch.equal(unpack_bits(torch.cat([words, torch.full((3,), -1, dtype=torch.int32)]), bits, count),
                           values)
    with pytest.raises(ValueError, match="bits=32 must be in"):
        pack_bits(torch.zeros(2, dtype=torch.int32), 32)


def test_packed_batch_assembles_like_the_list_batch():
    prompts = {"input_ids": torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]),
               "attention_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
               "position_ids": torch.tensor([[0, 0, 0, 1], [0, 0, 1, 2]]),
               "raw_prompt_ids": [[5, 6], [7, 8, 9]], "data_source": ["d", "d"]}
    kwargs = dict(uids=prompt_uids(1, 2), pad_token_id=0, response_length=4, decode=str)
    a = assemble_batch(prompts, OUT, **kwargs)
    b = assemble_batch(prompts, PackedRollout.from_output(OUT), **kwargs)
    assert all(torch.equal(a.batch[k], b.batch[k]) for k in a.batch.keys())
    assert list(a.obj("response_text")) == list(b.obj("response_text"))
    assert list(a.obj("finish_reason")) == list(b.obj("finish_reason"))


def test_rollout_groups():
    g = RolloutGroups(rank=5, world=8, tp=2)
    assert (g.groups, g.group, g.tp_rank) == (4, 2, 1)
    with pytest.raises(ValueError, match="tensor_model_parallel_size=3 must divide the world size 8"):
        RolloutGroups(0, 8, 3)
    base = SamplingConfig()
    peers = [sampling_for(base, 7, 3, 0, RolloutGroups(r, 8, 2)).seed for r in range(8)]
    assert peers[0] == peers[1] != peers[2] == peers[3]  # TP peers share a seed, groups differ


class _Engine:
    """Deterministic stand-in: n rows per prompt, tokens and log-probs a function of (prompt, sample, seed)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, sampling):
        self.calls.append([list(p) for p in prompts])
        ids, lps, reasons = [], [], []
        for p in prompts:
            for k in range(n):
                length = (sum(p) + k) % 4 + 1
                ids.append([(p[0] * 31 + k * 7 + j + sampling.seed % 97) % 1000 for j in range(length)])
                lps.append([-(j + 1) / (k + 2) for j in range(length)])
                reasons.append("stop" if length % 2 else "length")
        return RolloutOutput(n, ids, lps, reasons)


PROMPTS = [[i + 3, 2 * i + 1] for i in range(5)]  # 5 prompts over 2 (TP=1) or 1 (TP=2) groups


def _gather(tp: int):
    import torch.distributed as dist

    groups = RolloutGroups.current(tp)
    engine = _Engine()
    sampling = SamplingConfig(seed=1234)  # the same on all ranks, so every layout must give the same rows
    batch = {"input_ids": torch.zeros(len(PROMPTS), 2, dtype=torch.long), "raw_prompt_ids": PROMPTS}
    out = generate_dp(engine, batch, 3, sampling, groups)
    here = generate_dp(engine, batch, 3, sampling, groups, logprobs_everywhere=False)
    return {"rank": dist.get_rank(), "calls": engine.calls[:1], "ids": out.response_ids, "lp": out.logprobs.tolist(),
            "finish": out.finish_reasons, "lengths": out.lengths.tolist(), "here_ids": here.response_ids,
            "here_lp": here.logprobs.tolist(), "here_rank": here.logprob_rank.tolist(),
            "padded_rank": here.to_padded(0)["rollout_log_probs_rank"].tolist()}


def test_gather_over_rollout_groups_equals_one_process():
    from tests.dist.harness import run_distributed

    single = PackedRollout.from_output(_Engine().generate(PROMPTS, 3, SamplingConfig(seed=1234)))
    for tp in (1, 2):
        results = run_distributed(_gather, 2, tp, timeout_s=60)
        for r in results:
            assert r["ids"] == single.response_ids, (tp, r["rank"])
            assert r["lp"] == single.logprobs.tolist() and r["finish"] == single.finish_reasons
            # Log-probs left where they were sampled: the same ids; this rank's rows' log-probs, zeros elsewhere.
            assert r["here_ids"] == single.response_ids and r["here_rank"] == r["padded_rank"]
            offsets = single.offsets().tolist()
            for row, owner in enumerate(r["here_rank"]):
                got = r["here_lp"][offsets[row]:offsets[row + 1]]
                want = r["lp"][offsets[row]:offsets[row + 1]] if owner == r["rank"] else [0.0] * len(got)
                assert got == want, (tp, r["rank"], row)
        # every row is held by exactly one rank: the one whose slice it is (DP: prompt shares; TP: row halves)
        assert results[0]["here_rank"] == ([0] * 9 + [1] * 6 if tp == 1 else [0] * 8 + [1] * 7)
        if tp == 1:  # DP: each rank generated its own prompts
            assert [r["calls"] for r in results] == [[PROMPTS[:3]], [PROMPTS[3:]]]
        else:  # one TP group: both ranks called their engine with all prompts
            assert [r["calls"] for r in results] == [[PROMPTS], [PROMPTS]]
