"""Benchmark: the vLLM rollout engine (start-up, sampling throughput, scoring, in-place weight update) with baselines.

Workload (default): a tiny random Qwen2 made here (hidden 128, 4 heads, 2 KV groups, 2 layers, vocab 300, tied, fp32)
or any HF checkpoint given with --model-path; P prompts of 16 tokens, n samples each, max_tokens new tokens
(rows stop at EOS like a real rollout, so generated tokens are counted, not assumed).

Side by side in the same run, same model, one thread:
- generate: VLLMRolloutEngine.generate vs transformers `generate(do_sample=True, num_return_sequences=n)`
  (batched over prompts, KV cache on), both reported as generated tokens per second; and vs the engine's former
  sampling with a seed on every request (vLLM then keeps one torch.Generator per request and draws those rows one by
  one, and on GPU falls back to the native sampler) instead of seeding the sampler's generator once per call.
- update_weights: in-place update (direct tensors in one streaming reload call; and serialized 1 MiB safetensors
  buckets, the TP>1 / multiprocess transport) vs the no-reload alternative: save_pretrained the new weights and
  start a fresh engine from them. The update is checked: vLLM's log-probs after it vs transformers with the new
  weights (parity_vs_transformers_max_abs: fp32 kernel differences, grows with depth) and vs the fresh engine
  started from the saved new weights (updated_vs_fresh_engine_max_abs: 0.0 when the in-place update is exact).
Each figure is the best of --repeats runs (medians printed too). Prints a last line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from tests.integration.tiny_models import (  # noqa: E402
    hf_continuation_logprobs,
    load_hf_model,
    make_tiny_model,
    perturbed_state_dict,
)
from ttrl_megatron.rollout import SamplingConfig, VLLMEngineConfig  # noqa: E402


def _timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), value


def _hf_generate_tokens(model, prompts, n, max_tokens, eos_id):
    ids = torch.tensor(prompts)  # equal-length prompts: no padding needed
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
            top_k=0, num_return_sequences=n, max_new_tokens=max_tokens, eos_token_id=eos_id, pad_token_id=eos_id,
        )
    new = out[:, ids.shape[1]:]
    # count tokens up to and including the first EOS per row
    done = (new == eos_id).int().cumsum(1)
    return int(((done == 0) | ((done == 1) & (new == eos_id))).sum())


def _per_request_seeded_tokens(engine, prompts, n, max_tokens) -> int:
    """The same sampling with a seed on every request (the engine's former way), through its vLLM `LLM`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from ttrl_megatron.rollout.base import derive_seed

    params = [SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=derive_seed(0, i), logprobs=0,
                             stop_token_ids=list(engine.eos_token_ids), detokenize=False)
              for i in range(len(prompts))]
    outs = engine._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return sum(len(c.token_ids) for o in outs for c in o.outputs)


def _bench_generate(engine, hf, prompts, args) -> tuple[dict, list[list[int]]]:
    sampling = SamplingConfig(temperature=1.0, max_tokens=args.max_tokens)
    eos = engine.eos_token_ids[0] if engine.eos_token_ids else 0
    engine.generate(prompts[:2], 2, sampling)  # warm-up
    best, med, out = _timed(lambda: engine.generate(prompts, args.n, sampling), args.repeats)
    tokens = int(out.response_lengths().sum())
    hf_best, hf_med, hf_tokens = _timed(
        lambda: _hf_generate_tokens(hf, prompts, args.n, args.max_tokens, eos), args.repeats
    )
    seeded_best, _, seeded_tokens = _timed(
        lambda: _per_request_seeded_tokens(engine, prompts, args.n, args.max_tokens), args.repeats
    )
    result = {
        "vllm_tok_per_s": round(tokens / best, 1), "vllm_s": round(best, 3), "vllm_median_s": round(med, 3),
        "vllm_tokens": tokens, "baseline_transformers_tok_per_s": round(hf_tokens / hf_best, 1),
        "baseline_transformers_s": round(hf_best, 3), "baseline_median_s": round(hf_med, 3),
        "baseline_tokens": hf_tokens, "speedup": round((tokens / best) / (hf_tokens / hf_best), 2),
        "per_request_seeds_tok_per_s": round(seeded_tokens / seeded_best, 1),
        "speedup_vs_per_request_seeds": round((tokens / best) / (seeded_tokens / seeded_best), 2),
    }
    return result, out.response_ids[:: args.n]


def _bench_update(engine, hf, config, prompts, responses, args, work) -> dict:
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    new = perturbed_state_dict(hf, seed=1)
    best, med, stats = _timed(lambda: engine.update_weights(iter(new.items())), args.repeats)
    hf.load_state_dict(new, strict=False)
    parity = max(  # correctness of the timed update: vLLM after it vs transformers with the new weights
        (torch.tensor(v) - hf_continuation_logprobs(hf, p, r)).abs().max().item()
        for v, p, r in zip(engine.compute_logprobs(prompts, responses), prompts, responses)
    )
    updated = engine.compute_logprobs(prompts, responses)
    engine.shutdown()
    serialized = VLLMRolloutEngine(dataclasses.replace(config, weight_transport="bytes", update_bucket_mib=1))
    ser_best, _, ser_stats = _timed(lambda: serialized.update_weights(iter(new.items())), args.repeats)
    serialized.shutdown()

    restarts, fresh_diff = [], None
    for _ in range(args.repeats):  # baseline: save the new weights and start a fresh engine from them
        start = time.perf_counter()
        hf.save_pretrained(work / "restart", safe_serialization=True)
        fresh = VLLMRolloutEngine(dataclasses.replace(config, model_path=str(work / "restart")))
        restarts.append(time.perf_counter() - start)
        fresh_lp = fresh.compute_logprobs(prompts, responses)
        fresh_diff = max(abs(a - b) for x, y in zip(fresh_lp, updated) for a, b in zip(x, y))
        fresh.shutdown()
    restart_best, restart_med = min(restarts), statistics.median(restarts)
    return {
        "bytes": sum(t.numel() * t.element_size() for t in new.values()), "tensors": stats["tensors"],
        "direct_s": round(best, 4), "direct_median_s": round(med, 4), "parity_vs_transformers_max_abs": parity,
        "updated_vs_fresh_engine_max_abs": fresh_diff,
        "serialized_1mib_buckets_s": round(ser_best, 4), "serialized_calls": ser_stats["calls"],
        "baseline_save_and_restart_s": round(restart_best, 3), "baseline_median_s": round(restart_med, 3),
        "speedup_vs_restart": round(restart_best / best, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", default=None, help="HF checkpoint dir (default: a tiny random Qwen2)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    model_dir = Path(args.model_path) if args.model_path else make_tiny_model(work / "tiny_qwen2")
    start = time.perf_counter()
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine  # timed: vllm's import is part of start-up

    import_s = time.perf_counter() - start
    config = VLLMEngineConfig(model_path=str(model_dir), dtype="float32", max_model_len=512, seed=0,
                              run_dir=str(work / "run"))
    engine = VLLMRolloutEngine(config)
    hf = load_hf_model(model_dir)
    prompts = [[(7 * i + j) % 200 + 4 for j in range(16)] for i in range(args.prompts)]
    generate, responses = _bench_generate(engine, hf, prompts, args)
    score_best, _, _ = _timed(lambda: engine.compute_logprobs(prompts, responses), args.repeats)
    result = {
        "model": str(model_dir) if args.model_path else "tiny-qwen2(h128,L2,V300,fp32)",
        "workload": {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "threads": 1},
        "vllm_import_s": round(import_s, 2),
        "engine_start_s": round(engine.startup_s, 2),
        "generate": generate,
        "compute_logprobs_s": round(score_best, 4),
        "update_weights": _bench_update(engine, hf, config, prompts, responses, args, work),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
