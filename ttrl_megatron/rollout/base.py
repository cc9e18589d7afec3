"""The rollout-engine contract: sampling settings, the batched output, and the `RolloutEngine` protocol.

The trainer talks to a rollout engine only through this module: `generate` samples `n` responses per prompt
(n_votes for TTRL voting, val_kwargs.n for validation: `n` is a per-call argument, never fixed at start-up),
`compute_logprobs` scores fixed continuations (the train/rollout parity check), `update_weights` loads HF-named
tensors streamed by the bridge, `sleep`/`wake_up` free and restore accelerator memory around training.

Rows are prompt-major: the `n` samples of prompt `i` are rows `i*n .. i*n+n-1`, the layout verl's
`DataProto.repeat(n, interleave=True)` produces, so per-prompt grouping (majority vote, GRPO) is a reshape.

Must not import vllm (or any engine): this is what the trainer and the bridge import.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch

# Finish reasons, as vLLM reports them: "stop" = a stop/EOS token ended the response (it is the last token),
# "length" = max_tokens was reached, "abort" = the engine dropped the request.
FINISH_REASONS = ("stop", "length", "abort")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Per-call sampling settings (verl's rollout temperature/top_p/top_k/response_length, val_kwargs.*).

    temperature: 0 means greedy. top_k: -1 (or 0) disables top-k. top_p: 1.0 disables nucleus sampling.
    seed: the seed of this call's sampling noise (one per call, not per request: the samples depend on the whole
      call -- its prompts, n and settings -- and are reproduced by the same call with the same seed and weights).
      None = the engine derives it from its base seed and a call counter (two calls differ, a rerun of the same
      call sequence matches); an int pins this call's samples regardless of call history.
    stop_token_ids: extra stop tokens; the checkpoint's EOS ids stop too unless ignore_eos (a stop token ends the
      response and is included in it, finish reason "stop").
    ignore_eos: keep generating after EOS up to max_tokens (verl's rollout.ignore_eos).
    logprobs: return the log-prob of every sampled token.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = True

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1] (1 = disabled)")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"SamplingConfig.top_k={self.top_k!r}: must be an int, -1 or 0 (disabled) or >= 1")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens={self.max_tokens!r}: must be an int >= 1")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"SamplingConfig.seed={self.seed!r}: must be None or an int >= 0")
        bad = [t for t in self.stop_token_ids if not isinstance(t, int) or t < 0]
        if bad:
            raise ValueError(f"SamplingConfig.stop_token_ids has invalid ids {bad}: must be ints >= 0")
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


def derive_seed(*keys: int) -> int:
    """A 62-bit seed from integer keys (e.g. base seed, step, purpose, rollout group), well spread.

    Hashing (not `base + i`) keeps seeds of neighbouring keys unrelated (vLLM, given per-request seeds, would give
    sample `k` the seed `seed + k`, so consecutive seeds would share noise).
    """
    digest = hashlib.blake2b(":".join(str(int(k)) for k in keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def right_pad(rows: Sequence[Sequence], pad_value, length: int | None = None, dtype=torch.long) -> torch.Tensor:
    """Right-pad variable-length rows into a `[len(rows), length]` tensor (length defaults to the longest row)."""
    longest = max((len(r) for r in rows), default=0)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"right_pad: length={length} is shorter than the longest row ({longest})")
    out = torch.full((len(rows), length), pad_value, dtype=dtype)  # host: rollout outputs live on the host
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(list(r), dtype=dtype)  # host: rollout outputs
    return out


@dataclasses.dataclass
class RolloutOutput:
    """Responses for P prompts x n samples, prompt-major (row r belongs to prompt r // n).

    response_ids: R = P*n lists of sampled token ids (a stop token, when one ended the row, is its last id).
    logprobs: R lists, the log-prob of each sampled token (same lengths as response_ids), or None when not asked.
    finish_reasons: R strings from FINISH_REASONS.
    """

    n: int
    response_ids: list[list[int]]
    logprobs: list[list[float]] | None
    finish_reasons: list[str]

    def __post_init__(self) -> None:
        rows = len(self.response_ids)
        if self.n < 1 or rows % self.n:
            raise ValueError(f"RolloutOutput: {rows} rows is not a multiple of n={self.n}")
        if len(self.finish_reasons) != rows:
            raise ValueError(f"RolloutOutput: {len(self.finish_reasons)} finish_reasons for {rows} rows")
        if self.logprobs is not None:
            bad = [i for i, (ids, lp) in enumerate(zip(self.response_ids, self.logprobs)) if len(ids) != len(lp)]
            if len(self.logprobs) != rows or bad:
                raise ValueError(f"RolloutOutput: logprobs do not match response lengths (rows {bad[:5]})")

    @property
    def num_prompts(self) -> int:
        return len(self.response_ids) // self.n

    def __len__(self) -> int:
        return len(self.response_ids)

    def prompt_index(self) -> list[int]:
        """The prompt each row came from: `[R]`, i.e. [0]*n + [1]*n + ..."""
        return [r // self.n for r in range(len(self.response_ids))]

    def response_lengths(self) -> torch.Tensor:
        """`[R]` long: number of generated tokens per row."""
        return torch.tensor([len(r) for r in self.response_ids], dtype=torch.long)  # host: rollout outputs

    def to_padded(self, pad_token_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-padded tensors (verl's `responses` layout), `length` defaults to the longest response.

        Returns responses `[R, T]` long (pad_token_id after the end), response_mask `[R, T]` long (1 on generated
        tokens), and, when log-probs were kept, rollout_log_probs `[R, T]` float32 (0 on padding).
        """
        out = {
            "responses": right_pad(self.response_ids, pad_token_id, length),
            "response_mask": right_pad([[1] * len(r) for r in self.response_ids], 0, length),
        }
        if self.logprobs is not None:
            out["rollout_log_probs"] = right_pad(self.logprobs, 0.0, out["responses"].shape[1], torch.float32)
        return out


NamedTensors = Iterable[tuple[str, torch.Tensor]]


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine (one engine per rank)."""

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingConfig) -> RolloutOutput:
        """Sample `n` responses per prompt; rows prompt-major."""
        ...

    def compute_logprobs(
        self, prompt_token_ids: list[list[int]], response_token_ids: list[list[int]]
    ) -> list[list[float]]:
        """Log-prob of each response token given its prompt and the response tokens before it (temperature 1)."""
        ...

    def update_weights(self, named_tensors: NamedTensors | Iterable[Sequence[tuple[str, torch.Tensor]]]) -> dict:
        """Load HF-named full tensors (or buckets of them) into the engine; returns stats."""
        ...

    def sleep(self) -> None:
        """Free weights and KV cache (colocated training; rollout/colocate.py gives the order)."""
        ...

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Restore memory: tags ("weights", "kv_cache") or both (weights first) when None."""
        ...

    def shutdown(self) -> None:
        """Release the engine; the object is unusable afterwards."""
        ...
