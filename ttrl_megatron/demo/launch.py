"""Run the real trainer (``torchrun -m ttrl_megatron.main``) as a child process group for the demo.

Two local processes (``--nproc-per-node 2``) on a free port, 1 thread each, vLLM in-process, no CUDA. The child's
output goes to ``<run_dir>/trainer.log`` and, filtered to the trainer's own progress lines, to our stdout.
Stdlib only (the launched processes import megatron and vLLM, this module does not).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ttrl_megatron.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
# The console logger's step lines ("step N: ..." behind tqdm's carriage returns): echoed every `echo_every` steps and
# whenever they carry validation results; vLLM's and megatron's chatter is only in the log file.
_STEP = re.compile(r"step (\d+): (.*)")


def trainer_env(run_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", CUDA_VISIBLE_DEVICES="", HYDRA_FULL_ERROR="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("VLLM_CACHE_ROOT", str(run_dir / "vllm_cache"))
    env.setdefault("VLLM_RPC_BASE_PATH", str(run_dir / "vllm_rpc"))
    return env


def torchrun_command(overrides: list[str], nproc: int, config_name: str, port: int) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "ttrl_megatron.main", "--config-name", config_name, *overrides]


def run_trainer(overrides: list[str], run_dir: Path, *, nproc: int = 2, config_name: str = "examples/demo_cpu",
                echo_every: int = 25, timeout_s: float | None = None) -> float:
    """Run the trainer to completion; returns its wall time in seconds. Raises RuntimeError (with the log's tail
    and the log path) when it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "trainer.log"
    cmd = torchrun_command(overrides, nproc, config_name, free_port())
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=trainer_env(run_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        try:
            for line in proc.stdout:
                log.write(line)
                match = _STEP.search(line.rsplit("\r", 1)[-1])
                if echo_every and match and (int(match[1]) % echo_every == 0 or "val-core" in line):
                    print(f"  step {match[1]}: {match[2].strip()[:220]}", flush=True)
            proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"the trainer failed (exit {proc.returncode}); full log: {log_path}\n{tail}")
    return time.perf_counter() - start
