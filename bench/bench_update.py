"""Throughput of the megatron actor's ``update_policy`` (TP=PP=DP=1) against the same PPO update on a plain PyTorch
(transformers) model with the same weights, in the same run.

Both sides do the same work per optimizer step: forward + backward of the whole mini-batch in micro-batches,
log-probs at temperature T, the vanilla PPO loss with token-mean over the mini-batch (ttrl_megatron.algorithms),
the entropy metric (no gradient), grad clipping and an AdamW step. Two baselines run: ``trimmed`` cuts the
columns that are padding in every row of a micro-batch, as the engine does (same tokens processed: this is the
like-for-like comparison, ``ratio``), and ``padded`` runs every micro-batch at the full batch width, as a plain
verl-style loop without remove-padding does (``ratio_vs_padded``). Tokens/s counts real (unpadded) prompt +
response tokens per update call. The sides are timed alternately and the best of two rounds is kept, since the
machine may be shared; throughput is per CPU second of this process (``wall_*`` = per wall second).

    OMP_NUM_THREADS=1 python bench/bench_update.py [--hidden 256 --layers 2 --rows 16 --repeats 3]

``--lengths skewed`` measures packing instead: the same megatron actor update on a realistic TTRL length mix
(response lengths exponential with median R/4, clipped to [R/16, R], one row at R; prompts 25-100% of P), with
packed (THD, ``use_remove_padding=True``, the default) against padded (right-aligned rows, ``False``) micro-batches
of the same rows, both in the same run. ``packed_speedup`` = packed tokens/s over padded tokens/s (real tokens,
per CPU second); goal ``>= 0.7 x padded_over_real`` (the tokens the padded side processes over the real ones):

    OMP_NUM_THREADS=1 python bench/bench_update.py --lengths skewed --response 512 --rows 32 --mini-batch 16 \
        --micro-batch 8 --repeats 2

Last line: ``RESULT {json}`` with the throughputs and the ratios (megatron / baseline).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=16, help="responses per update (batch rows)")
    ap.add_argument("--prompt", type=int, default=64, help="max prompt length P")
    ap.add_argument("--response", type=int, default=128, help="max response length R")
    ap.add_argument("--mini-batch", type=int, default=8, help="rows per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per forward/backward")
    ap.add_argument("--repeats", type=int, default=3, help="timed update calls per side and round (after a warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is then a clean measure)")
    ap.add_argument("--lengths", choices=("uniform", "skewed"), default="uniform",
                    help="uniform: megatron vs PyTorch baselines; skewed: packed vs padded megatron updates")
    return ap.parse_args()


def make_model_dir(args, path: str) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, tie_word_embeddings=True,
                      max_position_embeddings=args.prompt + args.response)
    Qwen2ForCausalLM(cfg).float().save_pretrained(path, safe_serialization=True)
    return path


def make_batch(args) -> dict:
    """verl layout with realistic length spread: prompts 25-100% of P, responses 10-100% of R."""
    g = torch.Generator().manual_seed(0)
    b, p, r = args.rows, args.prompt, args.response
    mask = torch.zeros(b, p + r, dtype=torch.long)
    plens = torch.randint(p // 4, p + 1, (b,), generator=g)
    rlens = torch.randint(max(r // 10, 1), r + 1, (b,), generator=g)
    for i in range(b):
        mask[i, p - plens[i]: p + rlens[i]] = 1
    ids = torch.randint(3, args.vocab, (b, p + r), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "responses": ids[:, p:], "response_mask": mask[:, p:],
            "advantages": torch.randn(b, r, generator=g), "old_log_probs": -torch.rand(b, r, generator=g) * 5}


def make_skewed_batch(args) -> dict:
    """A TTRL-like length mix: response lengths at the quantiles of an exponential with median R/4, clipped to
    [R/16, R], the longest row at R, in a seeded random order; prompts 25-100% of P."""
    g = torch.Generator().manual_seed(0)
    b, p, r = args.rows, args.prompt, args.response
    mean = r / (4 * math.log(2))  # exponential: median = mean * ln 2
    quantiles = (torch.arange(b, dtype=torch.float64) + 0.5) / b
    rlens = (-mean * torch.log1p(-quantiles)).round().long().clamp(max(r // 16, 1), r)
    rlens[-1] = r
    rlens = rlens[torch.randperm(b, generator=g)]
    plens = torch.randint(p // 4, p + 1, (b,), generator=g)
    mask = torch.zeros(b, p + r, dtype=torch.long)
    for i in range(b):
        mask[i, p - plens[i]: p + rlens[i]] = 1
    ids = torch.randint(3, args.vocab, (b, p + r), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "responses": ids[:, p:], "response_mask": mask[:, p:],
            "advantages": torch.randn(b, r, generator=g), "old_log_probs": -torch.rand(b, r, generator=g) * 5}


def padded_tokens(batch, args) -> int:
    """Tokens the padded side processes: per micro-batch, rows x its longest real row (right-aligned layout)."""
    lengths = batch["attention_mask"].sum(-1)
    return sum(int(lengths[s:s + args.micro_batch].max()) * lengths[s:s + args.micro_batch].numel()
               for s in range(0, args.rows, args.micro_batch))


class Baseline:
    """The same update on the transformers model: padded micro-batches, token-mean over the mini-batch."""

    def __init__(self, model_dir, args, lr, temperature, trim: bool):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
        named = list(self.model.named_parameters())
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW([
            {"params": [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")], "weight_decay": 0.01},
            {"params": [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0}], lr=lr)
        self.args, self.temperature, self.trim = args, temperature, trim

    def update(self, batch):
        from ttrl_megatron.algorithms import compute_policy_loss, entropy_from_logits, masked_mean

        a = self.args
        for start in range(0, a.rows, a.mini_batch):
            mini = {k: v[start:start + a.mini_batch] for k, v in batch.items()}
            tokens = float(mini["response_mask"].sum())
            self.opt.zero_grad()
            for ms in range(0, a.mini_batch, a.micro_batch):
                mb, p, r = self._micro(mini, ms)
                logits = self.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                    position_ids=mb["position_ids"]).logits[:, p - 1: p + r - 1] / self.temperature
                logp = torch.log_softmax(logits.float(), -1).gather(-1, mb["responses"][..., None])[..., 0]
                loss, *_ = compute_policy_loss(mb["old_log_probs"], logp, mb["advantages"], mb["response_mask"],
                                               cliprange=0.2, batch_num_tokens=tokens)
                with torch.no_grad():
                    masked_mean(entropy_from_logits(logits.detach()), mb["response_mask"])
                loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()

    def _micro(self, mini, start):
        """Rows [start, start + micro) of the mini-batch; with ``trim``, all-padding columns cut off."""
        a = self.args
        mb = {k: v[start:start + a.micro_batch] for k, v in mini.items()}
        if not self.trim:
            return mb, a.prompt, a.response
        from ttrl_megatron.megatron.batching import trim_columns

        rows = torch.arange(mb["input_ids"].shape[0])
        cut = trim_columns(mb, rows, a.response, list(mb))
        return cut.tensors, cut.prompt_width, cut.response_width


def timed(fn, repeats):
    """(best wall seconds, best CPU seconds) of one call over ``repeats`` calls, after one warm-up call.

    The best call is the one least disturbed by other processes; CPU time (this process, all threads) is the
    steadier measure on a shared machine, wall time the one a user sees on a quiet one.
    """
    fn()  # warm-up (allocator, first-call overheads)
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.build import build_model_chunks
    from ttrl_megatron.megatron.optimizer import OptimConfig
    from ttrl_megatron.megatron.parallel import destroy_distributed, init_distributed
    from ttrl_megatron.protocol import DataProto

    lr, temperature = 1e-6, 1.0
    init_distributed(ParallelLayout(1, 1, 1), seed=1)
    batch = make_skewed_batch(args) if args.lengths == "skewed" else make_batch(args)
    tokens = float(batch["attention_mask"].sum())

    def actor(model_dir, packed):
        return MegatronActor(
            build_model_chunks(model_dir, "float32"),
            LogProbConfig(micro_batch_size_per_gpu=args.micro_batch, temperature=temperature),
            ActorEngineConfig(ppo_mini_batch_size=args.mini_batch, rows_per_prompt=1,
                              ppo_micro_batch_size_per_gpu=args.micro_batch),
            OptimConfig(lr=lr, weight_decay=0.01, clip_grad=1.0), packed=packed,
        )

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(args, tmp)
        if args.lengths == "skewed":
            sides = {name: (lambda a=actor(model_dir, packed), d=DataProto(dict(batch)): a.update_policy(d))
                     for name, packed in (("packed", True), ("padded", False))}
        else:
            sides = {"megatron": (lambda a=actor(model_dir, True), d=DataProto(dict(batch)): a.update_policy(d))}
            for trim in (True, False):
                base = Baseline(model_dir, args, lr, temperature, trim)
                sides["trimmed" if trim else "padded"] = (lambda b=base: b.update(batch))
        wall = {name: float("inf") for name in sides}
        cpu = dict(wall)
        for _ in range(2):  # alternate the sides so that load from other processes hits them alike
            for name, fn in sides.items():
                w, c = timed(fn, args.repeats)
                wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
    destroy_distributed()
    shape = {"tokens_per_update": int(tokens), "rows": args.rows, "prompt": args.prompt, "response": args.response,
             "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "micro_batch": args.micro_batch,
             "mini_batch": args.mini_batch, "threads": args.threads, "tp": 1, "pp": 1, "dp": 1, "device": "cpu",
             "dtype": "float32", "lengths": args.lengths}
    if args.lengths == "skewed":
        rlens = batch["response_mask"].sum(-1).float()
        over_real = padded_tokens(batch, args) / tokens
        speedup = cpu["padded"] / cpu["packed"]
        result = {
            "metric": "update_policy real tokens/s, packed (THD) over padded micro-batches (per CPU second)",
            "packed_speedup": round(speedup, 3),
            "padded_over_real": round(over_real, 3),
            "goal": round(0.7 * over_real, 3), "meets_goal": speedup >= 0.7 * over_real,
            "packed_tokens_per_s": round(tokens / cpu["packed"], 1),
            "padded_tokens_per_s": round(tokens / cpu["padded"], 1),
            "wall_packed_speedup": round(wall["padded"] / wall["packed"], 3),
            "response_len_median": float(rlens.median()), "response_len_max": float(rlens.max()), **shape,
        }
    else:
        result = {
            "metric": "update_policy_tokens_per_s (per CPU second of this process; wall-clock figures alongside)",
            "megatron_tokens_per_s": round(tokens / cpu["megatron"], 1),
            "pytorch_baseline_tokens_per_s": round(tokens / cpu["trimmed"], 1),
            "ratio": round(cpu["trimmed"] / cpu["megatron"], 3),
            "pytorch_padded_baseline_tokens_per_s": round(tokens / cpu["padded"], 1),
            "ratio_vs_padded": round(cpu["padded"] / cpu["megatron"], 3),
            "wall_megatron_tokens_per_s": round(tokens / wall["megatron"], 1),
            "wall_pytorch_baseline_tokens_per_s": round(tokens / wall["trimmed"], 1),
            "wall_ratio": round(wall["trimmed"] / wall["megatron"], 3), **shape,
        }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
