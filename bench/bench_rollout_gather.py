"""Benchmark: gathering the rollout batch as tensors (PackedRollout) vs as pickled Python lists (all_gather_object).

Workload: the reference batch shape, 2,048 rows (32 prompts x 64 votes) x 3,072 response tokens, vocab 151,936,
split over the ranks of a real gloo world (2 processes on this machine), each rank holding its engine's output as
Python lists (`RolloutOutput`, what vLLM hands back). Two length mixes: `full` (every row 3,072 tokens: the shape
itself) and `skewed` (TTRL's mix, median 1/4 of the maximum). Token ids are drawn log-uniformly (most ids of a BPE
vocabulary in real text are small: ~46% below 256, ~93% below 65,536), which keeps the pickled baseline small (2-3
bytes per id); log-probs are float32 values (9 bytes each once pickled as Python floats).

The paths end with the padded batch tensors (responses, response_mask, rollout_log_probs [R, 3072]) that
assemble_batch builds on every rank:
  lists:        all_gather_object(RolloutOutput) -> merge -> RolloutOutput.to_padded (the path before this work)
  tensors:      PackedRollout.from_output -> all_gather_packed (ids bit-packed at the batch's largest id width: 18
                bits here; log-probs as float32 bits) -> PackedRollout.to_padded: what the trainer runs when rollout
                correction (algorithm.rollout_correction) needs every row's log-probs on every rank
  tensors_here: the same with logprobs_everywhere=False, what the trainer runs otherwise (the default): the ids go
                to every rank, each row's log-probs stay on the rank that sampled them (nothing else reads them but
                the mismatch metrics, which are reduced from nine per-rank sums: trainer/corrections.py), so every
                rank ends with identical responses/response_mask and its own rows' log-probs (zeros elsewhere),
                checked here against the lists path.
Bytes moved = what the collectives carry to every rank (all_gather_object pads every rank's pickle to the longest,
as all_gather_packed pads word buffers to the longest), summed over receiving ranks. Seconds per step = the slowest
rank's wall time of the whole path, best of --repeats. Host bytes materialized = what the gathered batch occupies
on each rank before padding: Python list/int/float objects (CPython sizes: list 56 + 8 per item, int 28 unless
cached (-5..256), float 24) vs the gathered tensors. Prints a last line `RESULT {json}` with `bytes_ratio`
(tensors_here / lists on the wire, `full` mix: the trainer's default path; the issue's goal is <= 0.25),
`bytes_ratio_with_logprobs` (tensors / lists), the seconds ratios and `materialized_ratio`.
`--small` runs 256 rows x 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

VOCAB = 151_936


def make_output(rows: int, max_len: int, mix: str, seed: int):
    """One rank's engine output as lists (n = 64 votes, or fewer when rows are few)."""
    from ttrl_megatron.rollout.base import RolloutOutput

    gen = torch.Generator().manual_seed(seed)
    if mix == "full":
        lengths = torch.full((rows,), max_len)
    else:  # log-normal around max/4, clipped to [50, max]: TTRL's 50..3,000-token responses
        lengths = (torch.randn(rows, generator=gen) * 0.8 + math.log(max_len / 4)).exp().clamp(50, max_len).long()
    total = int(lengths.sum())
    ids = (torch.rand(total, generator=gen) * math.log(VOCAB)).exp().long().clamp(max=VOCAB - 1)
    logprobs = -(torch.rand(total, generator=gen) ** 3) * 8
    splits = lengths.tolist()
    n = min(64, rows)
    return RolloutOutput(n=n, response_ids=[c.tolist() for c in ids.split(splits)],
                         logprobs=[c.tolist() for c in logprobs.split(splits)],
                         finish_reasons=["length" if s == max_len else "stop" for s in splits])


def _lists_path(local, max_len: int):
    import torch.distributed as dist

    from ttrl_megatron.trainer.assemble import merge_rollouts
    from ttrl_megatron.trainer.generation import all_gather_objects

    sizes = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, len(pickle.dumps(local)))  # bytes accounting only (outside the timed path)
    start = time.perf_counter()
    merged = merge_rollouts(all_gather_objects(local))
    padded = merged.to_padded(0, max_len)
    seconds = time.perf_counter() - start
    world = dist.get_world_size()
    rows = len(merged.response_ids)
    tokens = sum(len(r) for r in merged.response_ids)
    big_ints = sum(1 for r in merged.response_ids for t in r if t > 256)
    heap = 2 * rows * 56 + 2 * 8 * tokens + 28 * big_ints + 24 * tokens  # two lists per row, ints, floats
    return seconds, world * world * max(sizes), padded, heap


def _tensor_path(local, max_len: int, everywhere: bool = True):
    import torch.distributed as dist

    from ttrl_megatron.rollout.packed import HEADER_WORDS, PackedRollout
    from ttrl_megatron.trainer.generation import all_gather_packed

    start = time.perf_counter()
    packed = PackedRollout.from_output(local)
    gathered = all_gather_packed(packed, logprobs_everywhere=everywhere)
    padded = gathered.to_padded(0, max_len)
    seconds = time.perf_counter() - start
    headers = [None] * dist.get_world_size()
    dist.all_gather_object(headers, packed.header(everywhere).tolist())  # bytes accounting, as all_gather_packed
    bits = max(h[3] for h in headers)
    words = [PackedRollout.words(h, bits) for h in headers]
    world = dist.get_world_size()
    header_bytes = world * world * 8 * HEADER_WORDS
    heap = sum(t.numel() * t.element_size() for t in (gathered.lengths, gathered.token_ids, gathered.logprobs,
                                                        gathered.finish))
    return seconds, world * world * 4 * max(words) + header_bytes, padded, heap


def _rank(rows: int, max_len: int, mixes: list[str], repeats: int) -> dict:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    for mix in mixes:
        local = make_output(rows // world, max_len, mix, seed=rank)
        paths = {"lists": _lists_path, "tensors": _tensor_path,
                 "tensors_here": lambda out, length: _tensor_path(out, length, everywhere=False)}
        best = {name: (math.inf, 0) for name in paths}
        heap = {}
        for _ in range(repeats):  # interleaved, best of each
            for name, fn in paths.items():
                dist.barrier()
                seconds, nbytes, padded, heap[name] = fn(local, max_len)
                slowest = torch.tensor([seconds], dtype=torch.float64)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                best[name] = min(best[name], (float(slowest), nbytes))
                if name == "lists":
                    reference = padded
                    continue
                want = dict(reference)
                if name == "tensors_here":  # this rank's rows' log-probs, zeros in the other ranks' rows
                    mine = (padded.pop("rollout_log_probs_rank") == rank).unsqueeze(1)
                    want["rollout_log_probs"] = torch.where(mine, want["rollout_log_probs"], 0.0)
                if set(want) != set(padded) or not all(torch.equal(want[k], padded[k]) for k in want):
                    raise AssertionError(f"{mix}: the {name} path built a different batch")
            del padded, reference, want
        tokens = int(sum(len(r) for r in local.response_ids)) * world
        out[mix] = {"tokens": tokens, **{f"{k}_seconds": v[0] for k, v in best.items()},
                    **{f"{k}_bytes": v[1] for k, v in best.items()}, **{f"{k}_heap": v for k, v in heap.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=3072)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="256 rows x 512 tokens")
    args = parser.parse_args()
    if args.small:
        args.rows, args.max_len = 256, 512
    from tests.dist.harness import run_distributed

    results = run_distributed(_rank, args.world, args.rows, args.max_len, ["full", "skewed"], args.repeats,
                              timeout_s=1800)[0]
    for mix, r in results.items():
        print(f"{mix:7s} {args.rows} x {args.max_len}, {r['tokens']:,} tokens over {args.world} ranks: "
              f"lists {r['lists_bytes'] / 2**20:8.1f} MiB {r['lists_seconds']:6.2f} s | "
              f"tensors {r['tensors_bytes'] / 2**20:8.1f} MiB {r['tensors_seconds']:6.2f} s | "
              f"tensors_here {r['tensors_here_bytes'] / 2**20:8.1f} MiB {r['tensors_here_seconds']:6.2f} s | "
              f"bytes ratio {r['tensors_here_bytes'] / r['lists_bytes']:.3f} "
              f"({r['tensors_bytes'] / r['lists_bytes']:.3f} with log-probs), seconds ratio "
              f"{r['tensors_here_seconds'] / r['lists_seconds']:.3f} ({r['tensors_seconds'] / r['lists_seconds']:.3f}); "
              f"host bytes materialized per rank {r['lists_heap'] / 2**20:.1f} vs {r['tensors_heap'] / 2**20:.1f} MiB")
    full, skewed = results["full"], results["skewed"]
    result = {
        "rows": args.rows, "max_len": args.max_len, "world": args.world,
        "bytes_ratio": round(full["tensors_here_bytes"] / full["lists_bytes"], 4),
        "seconds_ratio": round(full["tensors_here_seconds"] / full["lists_seconds"], 4),
        "bytes_ratio_with_logprobs": round(full["tensors_bytes"] / full["lists_bytes"], 4),
        "seconds_ratio_with_logprobs": round(full["tensors_seconds"] / full["lists_seconds"], 4),
        "bytes_ratio_skewed": round(skewed["tensors_here_bytes"] / skewed["lists_bytes"], 4),
        "bytes_ratio_skewed_with_logprobs": round(skewed["tensors_bytes"] / skewed["lists_bytes"], 4),
        "seconds_ratio_skewed": round(skewed["tensors_here_seconds"] / skewed["lists_seconds"], 4),
        "materialized_ratio": round(full["tensors_heap"] / full["lists_heap"], 4),
        "lists_bytes": full["lists_bytes"], "tensors_bytes": full["tensors_bytes"],
        "tensors_here_bytes": full["tensors_here_bytes"],
        "lists_seconds": round(full["lists_seconds"], 3), "tensors_seconds": round(full["tensors_seconds"], 3),
        "tensors_here_seconds": round(full["tensors_here_seconds"], 3),
        "goal_bytes_ratio": 0.25,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
