"""Inputs and launcher for the end-to-end trainer tests: a tiny random HF model (tiny_models.py), 4 prompts with
integer answers, a deterministic custom reward (so GRPO groups are mixed and every update really moves the
weights), Hydra overrides for a 2-process CPU run, and `launch()` = `torchrun -m ttrl_megatron.main` in a subprocess.

Must not import vllm or megatron (the runs happen in the launched processes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.proctree import signal_node
from tests.integration.tiny_models import TinySpec, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
TINY = TinySpec(arch="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
QUESTIONS = [("1+2", "3"), ("4+4", "8"), ("2+5", "7"), ("3+3", "6")]

# Pseudo-random but deterministic 0/1 score of the response text: groups get mixed rewards without a trained model.
# The gate (tests/integration/cluster_sim.py): with $TTRL_TEST_GATE/armed present, the first call (rank 0, step 1's
# reward phase) waits until $TTRL_TEST_GATE/released exists, so a test can signal or kill mid-step; scores unchanged.
REWARD_FN = '''
import os
import time


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    gate = os.environ.get("TTRL_TEST_GATE")
    if gate and os.path.exists(os.path.join(gate, "armed")) and not os.path.exists(os.path.join(gate, "released")):
        open(os.path.join(gate, "reached"), "w").close()
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(gate, "released")) and time.monotonic() < deadline:
            time.sleep(0.05)
    return float(sum(map(ord, solution_str)) % 2)
'''


def make_inputs(base: Path) -> dict[str, Path]:
    """Model dir, train/val jsonl and the reward file under ``base`` (created once per test module)."""
    base.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(base / "model", TINY)
    data = base / "data.jsonl"
    rows = [{"prompt": f"{q}=", "reward_model": {"ground_truth": a, "style": "rule"}, "data_source": "tiny_add",
             "extra_info": {"index": i}} for i, (q, a) in enumerate(QUESTIONS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = base / "reward.py"
    reward.write_text(REWARD_FN)
    return {"model": model, "data": data, "reward": reward}


def overrides(inputs: dict[str, Path], run_dir: Path, *, estimator: str = "grpo_nsr", steps: int = 3,
              save_freq: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """Hydra overrides of a 2-process TTRL run: 4 prompts/step, 4 votes -> 2 samples, 8-token responses."""
    return [
        f"data.train_files=[{inputs['data']}]", f"data.val_files=[{inputs['data']}]",
        "data.max_prompt_length=8", "data.max_response_length=8", "data.train_batch_size=4",
        f"actor_rollout_ref.model.path={inputs['model']}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.megatron.dtype=float32", "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.kv_cache_gib=1", "actor_rollout_ref.rollout.max_num_batched_tokens=512",
        "actor_rollout_ref.rollout.max_num_seqs=64",
        "actor_rollout_ref.rollout.val_kwargs.n=2", "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
        "ttrl.enable=true", "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2", "ttrl.grader_workers=1",
        "reward_model.reward_manager=custom", f"custom_reward_function.path={inputs['reward']}",
        f"algorithm.adv_estimator={estimator}",
        "trainer.device=cpu", "trainer.nnodes=1", "trainer.n_gpus_per_node=2",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={save_freq}", "trainer.test_freq=2",
        "trainer.val_before_train=true", "trainer.logger=[console,jsonl]", "trainer.seed=7",
        f"trainer.run_dir={run_dir}", f"trainer.default_local_dir={run_dir}/ckpt",
        f"trainer.rollout_data_dir={run_dir}/rollouts", f"trainer.validation_data_dir={run_dir}/val",
        *extra,
    ]


def _env(run_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", TOKENIZERS_PARALLELISM="false",
               VLLM_ENABLE_V1_MULTIPROCESSING="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
    env["VLLM_CACHE_ROOT"] = str(run_dir / "vllm_cache")
    return env


def _command(args: list[str]) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: the agent's store binds a port the OS picks (a port probed free and bound later can be taken in
    # between on a busy machine: EADDRINUSE)
    return [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ttrl_megatron.main", *args]


def launch(args: list[str], run_dir: Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer to completion; returns the completed process (stdout+stderr in .stdout)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(_command(args), cwd=ROOT, env=_env(run_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout_s)


def launch_and_kill_after_checkpoint(args: list[str], run_dir: Path, step: int,
                                     timeout_s: float = 300) -> str:
    """Start the trainer, SIGKILL it (agent, ranks and their children) as soon as checkpoint ``step`` is the latest."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "killed_run.log"
    tracker = run_dir / "ckpt" / "latest_checkpointed_iteration.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(_command(args), cwd=ROOT, env=_env(run_dir), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if tracker.is_file() and tracker.read_text().strip() == str(step):
                    break
                time.sleep(0.05)
        finally:  # the whole tree: torchrun puts each rank in a session of its own, so killpg would spare them
            signal_node(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_text()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
