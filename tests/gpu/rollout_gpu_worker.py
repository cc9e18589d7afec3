"""Per-rank program of tests/gpu/test_rollout_gpu.py, launched with torchrun (NCCL, one GPU per rank).

    torchrun --nproc-per-node N tests/gpu/rollout_gpu_worker.py <scenario> <hf_dir> <out_dir>

scenario "colocated" (rollout TP=1, an engine per rank): the engine's worker sits on cuda:LOCAL_RANK; CUDA-graph
generation (enforce_eager resolved as the trainer does on GPU) reproducible per seed; sleep(level 2) frees device
memory and the wakes take it back (torch.cuda.mem_get_info); a bf16 megatron actor pushes into the engine through
the colocated refit and the default parity check passes; the refit's GB/s and its peak extra device memory
(torch's allocator: the export's bucket + vLLM's per-layer re-materialization, never a second model copy).
scenario "tp2" (>= 2 GPUs): one engine over ranks 0-1 (rollout TP=2): identical outputs on both ranks, a push from
the actor, parity. Each rank writes <out_dir>/<scenario>_rank<r>.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

BUCKET_MIB = 64
PROMPTS = [[17, 42, 99, 5, 230, 11, 64, 8], [8, 8, 150, 77, 3, 19], [201, 33, 64, 12, 9, 48, 100]]


def _free_gib() -> float:
    """Free memory of this rank's device, after handing the caching allocator's unused blocks back."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0] / 2**30


def _actor(hf_dir: str):
    from ttrl_megatron.megatron.actor import LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    arch = ModelArchConfig.from_hf(hf_dir)
    model = build_gpt_model(arch, params_dtype=torch.bfloat16)
    load_hf_weights(model, hf_dir)
    return MegatronActor([model], LogProbConfig(micro_batch_size_per_gpu=4, temperature=1.0)), arch


def main() -> None:
    scenario, hf_dir, out_dir = sys.argv[1:4]
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed

    world = int(os.environ["WORLD_SIZE"])
    init_distributed(ParallelLayout.from_world(world, 1, 1), backend="nccl", seed=0)
    rank, local_rank = dist.get_rank(), int(os.environ["LOCAL_RANK"])
    from ttrl_megatron.bridge.sync import SyncCheckConfig, WeightSync
    from ttrl_megatron.rollout import SamplingConfig, VLLMEngineConfig
    from ttrl_megatron.rollout.colocate import ColocatedRollout
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    tp = 2 if scenario == "tp2" else 1
    out: dict = {"rank": rank, "local_rank": local_rank, "current_device": torch.cuda.current_device()}
    free0 = _free_gib()
    engine = VLLMRolloutEngine(VLLMEngineConfig(
        model_path=hf_dir, dtype="bfloat16", max_model_len=256, gpu_memory_utilization=0.35,
        enforce_eager=False, seed=0, tensor_parallel_size=tp, enable_sleep_mode=True,
        run_dir=f"{out_dir}/vllm_{scenario}/rank{rank}"))
    try:
        out.update(backend=engine.backend, worker_device=engine.device(), startup_s=engine.startup_s,
                   engine_gib=free0 - _free_gib(), current_device_after=torch.cuda.current_device())
        compilation = engine._llm.llm_engine.vllm_config.compilation_config
        out["cudagraph_mode"] = str(compilation.cudagraph_mode)
        sampling = SamplingConfig(temperature=1.0, max_tokens=32, seed=123)
        start = time.perf_counter()
        first = engine.generate(PROMPTS, 8, sampling)
        out["generate_s"] = time.perf_counter() - start
        out["tokens"] = int(first.response_lengths().sum())
        out["reproducible"] = engine.generate(PROMPTS, 8, sampling).response_ids == first.response_ids
        out["seed_matters"] = engine.generate(PROMPTS, 8, SamplingConfig(temperature=1.0, max_tokens=32,
                                                                          seed=124)).response_ids != first.response_ids
        out["sampled"] = first.response_ids
        # memory: sleep frees weights + KV cache, the wakes take them back
        actor, arch = _actor(hf_dir)
        sync = WeightSync(actor.model, engine, arch, bucket_bytes=BUCKET_MIB << 20, check=SyncCheckConfig(),
                          actor=actor)  # the default bf16 check
        colocate = ColocatedRollout(engine, sync)
        awake = _free_gib()
        colocate.after_generate()
        asleep = _free_gib()
        engine.wake_up(["weights"])
        weights_back = _free_gib()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stats = sync.load()  # full push after the level-2 sleep
        out["refit_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        engine.wake_up(["kv_cache"])
        out.update(freed_by_sleep_gib=asleep - awake, weights_wake_gib=asleep - weights_back,
                   kv_wake_gib=weights_back - _free_gib(), refit_gbps=stats["weight_sync/gb_per_s"],
                   refit_s=stats["weight_sync/seconds"], refit_bytes=stats["weight_sync/bytes"])
        out["parity"] = sync.check_parity()
        # the whole colocated cycle once more, as the trainer runs it
        colocate.after_generate()
        out["refit"] = colocate.refit()
        out["after_refit"] = engine.generate(PROMPTS, 8, sampling).response_ids == first.response_ids
    finally:
        engine.shutdown()
    Path(out_dir, f"{scenario}_rank{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
