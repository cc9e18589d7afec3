"""Benchmark: vectorized grpo / grpo_nsr advantage estimators vs a straightforward per-row Python loop.

Workload (default): 65,536 rows x 1,024 tokens in 8,192 groups of 8, group ids as a numpy object array of uuid strings
(verl's ``uid``) in shuffled order (balance_batch reorders rows), right-padded float32 masks with random lengths, and
KL-shaped rewards (0/1 score on the last valid token minus 0.001 * a per-token KL) so that groups are not uniform.

The baseline is a plain implementation of the same formula that loops over rows in Python to gather group scores and
to write each row's advantage (the pattern of verl's original GRPO), then broadcasts over the mask. The library
functions run twice: writing into a preallocated, reused ``out`` buffer (how a trainer calls them step after step), and
allocating a fresh [N, T] output (pays ~0.1 s of page faults on first touch, see PLATFORM.md). Both sides use the
same inputs and one thread; runs are interleaved and the best of each is reported (medians are printed too).
What bounds the vectorized side is memory bandwidth: one read of the rewards (row sums; grpo_nsr also reads the scores),
one read of the mask and one write of the output, ~0.75 GiB per call. Prints a last line ``RESULT {json}``.
``--small`` runs a quick 4,096 x 256 version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ttrl_megatron.algorithms import (  # noqa: E402
    compute_grpo_nsr_outcome_advantage,
    compute_grpo_outcome_advantage,
)

EPS = 1e-6
POS_W, NEG_W, THRESHOLD = 0.1, 1.0, 0.5
# the algorithm config as the trainer passes it (verl's call: the weights are read from config.grpo_nsr)
NSR_CONFIG = {"grpo_nsr": {"positive_weight": POS_W, "negative_weight": NEG_W, "correctness_threshold": THRESHOLD}}


def make_batch(rows: int, tokens: int, groups: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    uids = np.array([str(uuid.UUID(int=int(rng.integers(0, 2**63)))) for _ in range(groups)], dtype=object)
    index = np.repeat(uids, rows // groups)
    index = index[rng.permutation(rows)]
    lengths = torch.randint(1, tokens + 1, (rows,), generator=gen)
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float32)
    correct = (torch.rand(rows, generator=gen) < 0.6).to(torch.float32)
    scores = torch.zeros(rows, tokens)
    scores[torch.arange(rows), lengths - 1] = correct
    kl = torch.rand(rows, tokens, generator=gen) * mask
    rewards = scores - 0.001 * kl
    return rewards, scores, mask, index


def loop_grpo(rewards, mask, index, scores=None, pos_w=1.0, neg_w=1.0):
    """Per-row Python loop: group lists -> mean/std per group -> one advantage per row -> broadcast."""
    row_scores = rewards.sum(dim=-1)
    by_group = defaultdict(list)
    for i in range(row_scores.shape[0]):
        by_group[index[i]].append(row_scores[i])
    mean, std = {}, {}
    for key, values in by_group.items():
        if len(values) == 1:
            mean[key], std[key] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            stacked = torch.stack(values)
            mean[key], std[key] = stacked.mean(), stacked.std()
    adv = row_scores.clone()
    correct = None if scores is None else scores.sum(dim=-1) >= THRESHOLD
    for i in range(adv.shape[0]):
        a = (row_scores[i] - mean[index[i]]) / (std[index[i]] + EPS)
        if correct is not None:
            a = a * (pos_w if correct[i] else neg_w)
        adv[i] = a
    return adv.unsqueeze(-1) * mask


def compare(name, loop_fn, vec_out_fn, vec_fresh_fn, rounds: int, vec_per_round: int = 3):
    """Interleave the implementations round by round (the machine is shared: load shifts affect all alike) and
    report each one's best time, the usual noise-robust statistic for a deterministic workload."""
    times = {"loop": [], "out": [], "fresh": []}
    loop_res = vec_res = None
    for _ in range(rounds):
        for key, fn, reps in (("loop", loop_fn, 1), ("out", vec_out_fn, vec_per_round),
                              ("fresh", vec_fresh_fn, vec_per_round)):
            for _ in range(reps):
                start = time.perf_counter()
                res = fn()
                times[key].append(time.perf_counter() - start)
                if key == "loop":
                    loop_res = res
                elif key == "out":
                    vec_res = res[0]
    loop_s, vec_s, fresh_s = (min(times[k]) for k in ("loop", "out", "fresh"))
    diff = (loop_res - vec_res).abs().max().item()
    print(f"{name:9s} loop {loop_s:.4f}s  vectorized(out=) {vec_s:.4f}s  vectorized(fresh) {fresh_s:.4f}s  "
          f"speed-up {loop_s / vec_s:.1f}x (fresh {loop_s / fresh_s:.1f}x)  max|diff| {diff:.2e}  "
          f"(medians {statistics.median(times['loop']):.4f} / {statistics.median(times['out']):.4f} / "
          f"{statistics.median(times['fresh']):.4f})", flush=True)
    return {"loop_s": round(loop_s, 4), "vectorized_out_s": round(vec_s, 4), "vectorized_fresh_s": round(fresh_s, 4),
            "speedup": round(loop_s / vec_s, 1), "speedup_fresh": round(loop_s / fresh_s, 1),
            "speedup_median": round(statistics.median(times["loop"]) / statistics.median(times["out"]), 1),
            "max_abs_diff": diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="4,096 rows x 256 tokens in 512 groups")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, tokens, groups = (4096, 256, 512) if args.small else (65536, 1024, 8192)
    rounds = 3
    rewards, scores, mask, index = make_batch(rows, tokens, groups)
    out = torch.empty_like(rewards)
    result = {"rows": rows, "tokens": tokens, "groups": groups, "threads": args.threads,
              "index": "numpy object array of uuid strings"}
    result["grpo"] = compare(
        "grpo",
        lambda: loop_grpo(rewards, mask, index),
        lambda: compute_grpo_outcome_advantage(rewards, mask, index, EPS, True, out=out),
        lambda: compute_grpo_outcome_advantage(rewards, mask, index, EPS, True),
        rounds)
    result["grpo_nsr"] = compare(
        "grpo_nsr",
        lambda: loop_grpo(rewards, mask, index, scores, POS_W, NEG_W),
        lambda: compute_grpo_nsr_outcome_advantage(rewards, mask, index, EPS, True, scores, NSR_CONFIG, out=out),
        lambda: compute_grpo_nsr_outcome_advantage(rewards, mask, index, EPS, True, scores, NSR_CONFIG),
        rounds)
    result["target_speedup"] = 20
    result["meets_target"] = min(result["grpo"]["speedup"], result["grpo_nsr"]["speedup"]) >= 20
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
