"""Rollout outputs as flat tensors: the form that crosses ranks and becomes the padded batch.

`RolloutOutput` (base.py) is what an engine returns: Python lists, one per row. Gathering those with
`all_gather_object` pickles every token id (3-5 bytes) and log-prob (9 bytes, a Python float) and rebuilds millions
of Python objects on every rank, and padding them is a Python loop. `PackedRollout` holds the same rows as

  lengths    [R]  int64    generated tokens per row
  token_ids  [N]  int32    all rows' token ids end to end (N = lengths.sum(); any vocab below 2**31)
  logprobs   [N]  float32  the sampled tokens' log-probs, same layout (None when not asked)
  finish     [R]  uint8    index into FINISH_REASONS
  logprob_rank [R] int64   when set: the rank whose `logprobs` of the row are real (a gather that left the log-probs
                           on the rank that sampled them; the other ranks hold zeros there); None: real everywhere

Rows stay prompt-major (row r belongs to prompt r // n). `encode` lays a part out as ONE int32 word buffer, so a
gather is one small header collective plus one payload collective: the token ids bit-packed at the width of the
largest id (`pack_bits`: 18 bits for any id of a 151,936-token vocabulary, instead of 32), the float32 log-probs bit
for bit as int32 words (lossless: they feed the rollout-correction ratios). `to_padded` scatters the flat tokens into
verl's right-padded `[R, T]` layout without a Python loop.

Everything here lives on the host unless a caller moves the word buffer (collectives on NCCL groups need it on the
compute device: trainer/generation.py asks distributed/devices.py). Pure torch; no vllm, no torch.distributed.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
from collections.abc import Sequence

import torch

from ttrl_megatron.rollout.base import FINISH_REASONS, RolloutOutput

HEADER_WORDS = 4  # rows, tokens, has_logprobs, id_bits
LOGPROB_RANK = "rollout_log_probs_rank"  # to_padded's [R] column: the rank holding each row's real log-probs
_CODE = {reason: i for i, reason in enumerate(FINISH_REASONS)}
_U32 = 1 << 32


def packed_words(count: int, bits: int) -> int:
    """int32 words that `count` values of `bits` bits fill (`pack_bits`' output length)."""
    return -(-count * bits // 32)


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """`[N]` ints in [0, 2**bits) -> `[ceil(N * bits / 32)]` int32 words; value i sits at bits [i*bits, (i+1)*bits)
    of the word stream, least significant bit first (a value may straddle two words). 1 <= bits <= 31.

    The layout repeats every 32 values (32 values fill exactly `bits` words), so the values are viewed as blocks
    `[N / 32, 32]` and packed one column at a time: 32 vectorized steps whatever N is."""
    if not 1 <= bits <= 31:
        raise ValueError(f"pack_bits: bits={bits} must be in [1, 31]")
    n = values.numel()
    blocks = -(-n // 32)
    v = torch.zeros(blocks * 32, dtype=torch.int64, device=values.device)
    v[:n] = values.reshape(-1)
    v = v.view(blocks, 32).t().contiguous()  # [32, blocks]: each step below reads and writes contiguous rows
    out = torch.zeros(bits + 1, blocks, dtype=torch.int64, device=values.device)
    for j in range(32):  # disjoint bit ranges: OR-ing them into place
        word, shift = (j * bits) >> 5, (j * bits) & 31
        out[word] |= (v[j] << shift) & (_U32 - 1)
        out[word + 1] |= v[j] >> (32 - shift)  # the bits that spill into the next word (0 when none do)
    out = out[:bits].t().reshape(-1)[:packed_words(n, bits)]
    return torch.where(out >= 1 << 31, out - _U32, out).to(torch.int32)  # the uint32 pattern as int32


def unpack_bits(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` values of `words` as `[count]` int32."""
    if not 1 <= bits <= 31:
        raise ValueError(f"unpack_bits: bits={bits} must be in [1, 31]")
    blocks = -(-count // 32)
    nwords = packed_words(count, bits)
    flat = torch.zeros(blocks * bits, dtype=torch.int64, device=words.device)
    flat[:nwords] = words[:nwords].to(torch.int64) & (_U32 - 1)
    w = torch.cat([flat.view(blocks, bits).t(), flat.new_zeros(1, blocks)])  # [bits + 1, blocks]: + a 0 spill row
    out = torch.empty(32, blocks, dtype=torch.int32, device=words.device)
    for j in range(32):
        word, shift = (j * bits) >> 5, (j * bits) & 31
        out[j] = ((w[word] >> shift) | (w[word + 1] << (32 - shift))) & ((1 << bits) - 1)
    return out.t().reshape(-1)[:count]


def id_bits(token_ids: torch.Tensor) -> int:
    """Bits needed for the largest id (at least 1)."""
    if token_ids.numel() and int(token_ids.min()) < 0:
        raise ValueError(f"PackedRollout: negative token id {int(token_ids.min())}")
    return max(1, int(token_ids.max()).bit_length()) if token_ids.numel() else 1


def _flat(rows: Sequence[Sequence], typecode: str, dtype: torch.dtype) -> torch.Tensor:
    """Rows of Python numbers end to end as one host tensor ("i" = int32, "f" = float32)."""
    values = array.array(typecode, itertools.chain.from_iterable(rows))
    if not values:
        return torch.zeros(0, dtype=dtype)  # host: rollout batch
    return torch.frombuffer(values, dtype=dtype).clone()  # host: rollout batch (own the memory, not the array's)


@dataclasses.dataclass
class PackedRollout:
    """Responses of P prompts x n samples as flat tensors (see the module docstring for shapes and dtypes)."""

    n: int
    lengths: torch.Tensor
    token_ids: torch.Tensor
    logprobs: torch.Tensor | None
    finish: torch.Tensor
    logprob_rank: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows = self.lengths.numel()
        if self.n < 1:
            raise ValueError(f"PackedRollout: n={self.n} must be >= 1")
        if self.finish.numel() != rows:
            raise ValueError(f"PackedRollout: {self.finish.numel()} finish codes for {rows} rows")
        total = int(self.lengths.sum()) if rows else 0
        if self.token_ids.numel() != total:
            raise ValueError(f"PackedRollout: {self.token_ids.numel()} token ids but the lengths sum to {total}")
        if self.logprobs is not None and self.logprobs.numel() != total:
            raise ValueError(f"PackedRollout: {self.logprobs.numel()} log-probs for {total} tokens")
        if self.logprob_rank is not None and (self.logprobs is None or self.logprob_rank.numel() != rows):
            raise ValueError("PackedRollout: logprob_rank needs log-probs and one rank per row")

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, n: int, with_logprobs: bool = True) -> "PackedRollout":
        """No rows (a rank or TP group without prompts in this call)."""
        return cls(n, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.int32),  # host: rollout batch
                   torch.zeros(0, dtype=torch.float32) if with_logprobs else None,  # host: rollout batch
                   torch.zeros(0, dtype=torch.uint8))  # host: rollout batch

    @classmethod
    def from_output(cls, out: RolloutOutput) -> "PackedRollout":
        """Pack an engine's list output (one flat copy of its ids and log-probs, built in C by `array`: ~5x faster
        than `torch.tensor` on a flattened Python list)."""
        lengths = torch.tensor([len(r) for r in out.response_ids], dtype=torch.long)  # host: rollout batch
        logprobs = None
        if out.logprobs is not None:
            logprobs = _flat(out.logprobs, "f", torch.float32)
        return cls(out.n, lengths, _flat(out.response_ids, "i", torch.int32), logprobs,
                   torch.tensor([_CODE[f] for f in out.finish_reasons], dtype=torch.uint8))  # host: rollout batch

    @classmethod
    def concat(cls, parts: Sequence["PackedRollout"]) -> "PackedRollout":
        """Rows of `parts` in order (same n; log-probs kept only when every part has them)."""
        if not parts:
            raise ValueError("PackedRollout.concat: no parts")
        n = parts[0].n
        if any(p.n != n for p in parts):
            raise ValueError(f"PackedRollout.concat: parts have different n {[p.n for p in parts]}")
        with_lp = all(p.logprobs is not None for p in parts)
        ranked = [p.logprob_rank is not None for p in parts]
        if with_lp and any(ranked) and not all(ranked):
            raise ValueError("PackedRollout.concat: some parts say which rank holds their log-probs, some do not")
        return cls(n, torch.cat([p.lengths for p in parts]), torch.cat([p.token_ids for p in parts]),
                   torch.cat([p.logprobs for p in parts]) if with_lp else None,
                   torch.cat([p.finish for p in parts]),
                   torch.cat([p.logprob_rank for p in parts]) if with_lp and all(ranked) else None)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.lengths.numel()

    @property
    def num_prompts(self) -> int:
        return len(self) // self.n

    def offsets(self) -> torch.Tensor:
        """`[R + 1]` start of each row in the flat tensors (and the end)."""
        return torch.cat([self.lengths.new_zeros(1), self.lengths.cumsum(0)])

    def rows(self, start: int, end: int) -> "PackedRollout":
        """Rows [start, end) (views of the flat tensors, no copy)."""
        offsets = self.offsets()
        lo, hi = int(offsets[start]), int(offsets[end])
        return PackedRollout(self.n, self.lengths[start:end], self.token_ids[lo:hi],
                             None if self.logprobs is None else self.logprobs[lo:hi], self.finish[start:end],
                             None if self.logprob_rank is None else self.logprob_rank[start:end])

    @property
    def response_ids(self) -> list[list[int]]:
        """Per-row Python lists (for the tokenizer's decode)."""
        return [chunk.tolist() for chunk in self.token_ids.split(self.lengths.tolist())]

    @property
    def finish_reasons(self) -> list[str]:
        return [FINISH_REASONS[c] for c in self.finish.tolist()]

    def response_lengths(self) -> torch.Tensor:
        return self.lengths.clone()

    def to_output(self) -> RolloutOutput:
        """Back to the engine's list form."""
        logprobs = None
        if self.logprobs is not None:
            logprobs = [chunk.tolist() for chunk in self.logprobs.split(self.lengths.tolist())]
        return RolloutOutput(self.n, self.response_ids, logprobs, self.finish_reasons)

    def to_padded(self, pad_token_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """verl's right-padded layout, as `RolloutOutput.to_padded`: responses `[R, T]` long, response_mask `[R, T]`
        long, rollout_log_probs `[R, T]` float32 (0 on padding) when kept, and rollout_log_probs_rank `[R]` int64
        when only one rank holds each row's real log-probs (`logprob_rank`). `length` defaults to the longest row."""
        longest = int(self.lengths.max()) if len(self) else 0
        length = longest if length is None else length
        if length < longest:
            raise ValueError(f"to_padded: length={length} is shorter than the longest row ({longest})")
        mask = torch.arange(length).unsqueeze(0) < self.lengths.unsqueeze(1)  # host: rollout batch, [R, T]
        responses = torch.full((len(self), length), pad_token_id, dtype=torch.long)  # host: rollout batch
        responses[mask] = self.token_ids.long()  # boolean indexing fills row-major: row r's tokens in order
        out = {"responses": responses, "response_mask": mask.long()}
        if self.logprobs is not None:
            padded = torch.zeros(len(self), length, dtype=torch.float32)  # host: rollout batch
            padded[mask] = self.logprobs
            out["rollout_log_probs"] = padded
            if self.logprob_rank is not None:
                out[LOGPROB_RANK] = self.logprob_rank.clone()
        return out

    # ------------------------------------------------------------------ wire format
    def header(self, with_logprobs: bool = True) -> torch.Tensor:
        """`[HEADER_WORDS]` int64: rows, tokens, has_logprobs (0 when `with_logprobs` is False: they stay here),
        bits of the largest token id."""
        return torch.tensor([len(self), self.token_ids.numel(),  # host: header
                             int(with_logprobs and self.logprobs is not None), id_bits(self.token_ids)],
                            dtype=torch.long)

    def encode(self, bits: int | None = None, with_logprobs: bool = True) -> torch.Tensor:
        """One int32 word buffer: lengths | finish | token ids packed at `bits` each (default: this part's
        `id_bits`; a gather uses the largest over its parts) | log-prob bits (float32 reinterpreted; left out when
        `with_logprobs` is False)."""
        own = id_bits(self.token_ids)
        bits = own if bits is None else bits
        if own > bits:
            raise ValueError(f"PackedRollout.encode: token id {int(self.token_ids.max())} needs more than {bits} bits")
        parts = [self.lengths.to(torch.int32), self.finish.to(torch.int32), pack_bits(self.token_ids, bits)]
        if with_logprobs and self.logprobs is not None:
            parts.append(self.logprobs.to(torch.float32).contiguous().view(torch.int32))
        return torch.cat(parts)

    @staticmethod
    def words(header: Sequence[int], bits: int | None = None) -> int:
        """Length of `encode(bits)` of the part described by `header` (default bits: the header's own)."""
        rows, tokens, has_lp, own = (int(h) for h in header)
        bits = own if bits is None else bits
        return 2 * rows + packed_words(tokens, bits) + tokens * has_lp

    @classmethod
    def decode(cls, n: int, header: Sequence[int], buffer: torch.Tensor, bits: int | None = None) -> "PackedRollout":
        """Inverse of `encode(bits)` (`buffer` may be longer: padding of a gather is ignored)."""
        rows, tokens, has_lp, own = (int(h) for h in header)
        bits = own if bits is None else bits
        buffer = buffer.to("cpu")  # host: the rollout batch lives on the host between phases
        lengths = buffer[:rows].long()
        finish = buffer[rows:2 * rows].to(torch.uint8)
        start = 2 * rows
        packed = packed_words(tokens, bits)
        ids = unpack_bits(buffer[start:start + packed], bits, tokens)
        start += packed
        logprobs = buffer[start:start + tokens].clone().view(torch.float32) if has_lp else None
        return cls(n, lengths, ids, logprobs, finish)
