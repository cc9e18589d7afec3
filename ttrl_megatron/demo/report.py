"""The demo's results: ``summary.json``, the table printed at the end, and ``demo_metrics.png``.

Everything is read back from the trainer's ``metrics.jsonl`` (tracking.py): the step-0 validation is "before", the
last step's validation is "after" (val-core/<source>/acc/mean@16 = pass@1, i.e. mean accuracy over 16 samples at
T=1.0; maj@16 = equivalence-aware majority of the 16). Label accuracy is TTRL's ``train/label_accuracy`` (share of
the step's questions whose majority-vote pseudo label equals the held-out label: reported, never trained on).
Timings are the per-phase ``timing_s/*`` means over the steps (step 1, with its warm-up, excluded).
Time to target (issue #16's measure, plain vs --dynamic-sampling): the first validated step whose pass@1 reaches
maj@16 before training, and the training seconds until then = the sum of ``timing_s/step`` over steps 1..that step
(validation time excluded, so test_freq sets only the resolution: the step is exact to within test_freq steps).
No torch/megatron/vllm at import (evaluate.greedy_accuracy imports transformers when called).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ttrl_megatron.trainer.tracking import read_metrics

from .evaluate import greedy_accuracy

SOURCE = "arith_add2"
PHASES = ("gen", "reward", "old_log_prob", "adv", "update_actor", "update_weights", "step", "testing")


def _val(row: dict, metric: str, source: str) -> float | None:
    return row.get(f"val-core/{source}/acc/{metric}")


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def phase_timings(rows: list[dict]) -> dict[str, float]:
    """Mean seconds per phase over the training steps after the first (which carries one-time warm-ups)."""
    steps = [r for r in rows if r.get("step", 0) >= 2] or [r for r in rows if r.get("step", 0) >= 1]
    return {p: _mean([r[f"timing_s/{p}"] for r in steps if f"timing_s/{p}" in r]) for p in PHASES
            if any(f"timing_s/{p}" in r for r in steps)}


def time_to_target(rows: list[dict], target: float | None, source: str = SOURCE,
                   n_votes: int = 16) -> tuple[int | None, float | None]:
    """(first validated training step with pass@1 >= target, training seconds up to and including it), or
    (None, None) when no validation reaches it."""
    if target is None:
        return None, None
    seconds = 0.0
    for row in sorted((r for r in rows if r.get("step", 0) >= 1), key=lambda r: r["step"]):
        seconds += row.get("timing_s/step", 0.0)
        value = _val(row, f"mean@{n_votes}", source)
        if value is not None and value >= target:
            return int(row["step"]), round(seconds, 2)
    return None, None


def summarize(ttrl_dir: Path, data_dir: Path, hf_final: Path | None, opts, source: str = SOURCE,
              n_votes: int = 16) -> dict:
    rows = read_metrics(ttrl_dir)
    before = next(r for r in rows if r["step"] == 0)
    train = [r for r in rows if r["step"] >= 1]
    last = train[-1]
    labels = [r["train/label_accuracy"] for r in train if "train/label_accuracy" in r]
    n = opts.n_test
    summary = {
        "run_dir": str(ttrl_dir),
        "steps": int(last["step"]),
        "layout": opts.layout,
        "seed": opts.seed,
        "n_test": n,
        "pass@1_before": _val(before, f"mean@{n_votes}", source),
        f"maj@{n_votes}_before": _val(before, f"maj@{n_votes}", source),
        "pass@1_after": _val(last, f"mean@{n_votes}", source),
        f"maj@{n_votes}_after": _val(last, f"maj@{n_votes}", source),
        "label_accuracy_first": labels[0] if labels else None,
        "label_accuracy_last": labels[-1] if labels else None,
        "label_accuracy_first10_mean": _mean(labels[:10]),
        "label_accuracy_last10_mean": _mean(labels[-10:]),
        "timing_s_mean": phase_timings(rows),
        "train_s_total": round(sum(r.get("timing_s/step", 0.0) for r in train), 2),
    }
    step, seconds = time_to_target(rows, summary[f"maj@{n_votes}_before"], source, n_votes)
    summary["steps_to_maj_before"], summary["train_s_to_maj_before"] = step, seconds
    gen_batches = [r["filter/num_gen_batches"] for r in train if "filter/num_gen_batches" in r]
    if gen_batches:  # dynamic sampling
        summary["gen_batches_per_step_mean"] = _mean(gen_batches)
        summary["prompts_trained_mean"] = _mean([r["filter/prompts_trained"] for r in train])
        summary["zero_adv_share_unfiltered_mean"] = _mean([r["filter/zero_adv_share_unfiltered"] for r in train])
    if hf_final is not None:
        summary["greedy_before_hf"] = greedy_accuracy(ttrl_dir.parent / "sft_model", data_dir / "test.parquet")
        summary["greedy_after_exported_hf"] = greedy_accuracy(hf_final, data_dir / "test.parquet")
        summary["exported_hf_dir"] = str(hf_final)
    b, a = summary[f"maj@{n_votes}_before"], summary["pass@1_after"]
    if a is not None and b is not None:
        summary["target_pass@1_after_ge_maj_before"] = a >= b
        summary["margin_points"] = round(100 * (a - b), 2)
        summary["maj_before_std_error_points"] = round(100 * math.sqrt(b * (1 - b) / n), 2)
    return summary


def table(summary: dict, n_votes: int = 16) -> str:
    def fmt(v):
        return "  -  " if v is None else f"{v:.3f}"

    lines = [f"TTRL demo: {summary['steps']} steps, layout {summary['layout']}, seed {summary['seed']}, "
             f"{summary['n_test']} held-out questions",
             f"{'':22}{'before':>8}{'after':>8}",
             f"{f'pass@1 ({n_votes} @ T=1)':22}{fmt(summary['pass@1_before']):>8}{fmt(summary['pass@1_after']):>8}",
             f"{f'maj@{n_votes}':22}{fmt(summary[f'maj@{n_votes}_before']):>8}{fmt(summary[f'maj@{n_votes}_after']):>8}"]
    if "greedy_before_hf" in summary:
        lines.append(f"{'greedy (HF export)':22}{fmt(summary['greedy_before_hf']):>8}"
                     f"{fmt(summary['greedy_after_exported_hf']):>8}")
    lines.append(f"{'label accuracy':22}{fmt(summary['label_accuracy_first']):>8}{fmt(summary['label_accuracy_last']):>8}"
                 "   (majority-vote pseudo labels, first/last step)")
    if summary.get("steps_to_maj_before") is not None:
        lines.append(f"pass@1 reached maj@{n_votes}_before at step {summary['steps_to_maj_before']} after "
                     f"{summary['train_s_to_maj_before']:.0f} s of training (validation excluded)")
    elif "steps_to_maj_before" in summary:
        lines.append(f"pass@1 did not reach maj@{n_votes}_before in {summary['steps']} steps")
    if "gen_batches_per_step_mean" in summary:
        lines.append(f"dynamic sampling: {summary['gen_batches_per_step_mean']:.2f} prompt batches/step, "
                     f"{summary['prompts_trained_mean']:.1f} prompts trained/step, zero-advantage share without "
                     f"the filter {summary['zero_adv_share_unfiltered_mean']:.2f}")
    if "margin_points" in summary:
        verdict = "reached" if summary["target_pass@1_after_ge_maj_before"] else "not reached"
        lines.append(f"pass@1_after >= maj@{n_votes}_before: {verdict} ({summary['margin_points']:+.1f} points; "
                     f"maj@{n_votes} std. error ~{summary['maj_before_std_error_points']:.1f})")
    timing = summary.get("timing_s_mean", {})
    if timing:
        lines.append("mean s/step: " + " ".join(f"{k}={v:.3f}" for k, v in timing.items()))
    lines.append(f"wall {summary.get('wall_s', 0):.0f} s; results in {summary['run_dir']}")
    return "\n".join(lines)


def plot(ttrl_dir: Path, summary: dict, source: str = SOURCE, n_votes: int = 16) -> Path:
    """demo_metrics.png: held-out pass@1 / maj@16 over steps (with maj@16_before as a line), TTRL label accuracy
    and majority ratio per step (and a 10-step moving mean), per-phase seconds per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(ttrl_dir)
    fig, axes = plt.subplots(3, 1, figsize=(8, 9))
    val = [r for r in rows if _val(r, f"mean@{n_votes}", source) is not None]
    steps = [r["step"] for r in val]
    axes[0].plot(steps, [_val(r, f"mean@{n_votes}", source) for r in val], "o-", label=f"pass@1 (mean@{n_votes})")
    axes[0].plot(steps, [_val(r, f"maj@{n_votes}", source) for r in val], "s-", label=f"maj@{n_votes}")
    if summary.get(f"maj@{n_votes}_before") is not None:
        axes[0].axhline(summary[f"maj@{n_votes}_before"], ls="--", c="gray", label=f"maj@{n_votes} before")
    axes[0].set_title("held-out accuracy (labels used only here)")
    train = [r for r in rows if "train/label_accuracy" in r]
    xs = [r["step"] for r in train]
    for key in ("train/label_accuracy", "train/majority_ratio"):
        ys = [r.get(key, math.nan) for r in train]
        axes[1].plot(xs, ys, alpha=0.3)
        axes[1].plot(xs, [statistics.fmean(ys[max(0, i - 9):i + 1]) for i in range(len(ys))], label=key)
    axes[1].set_title("TTRL pseudo labels (10-step moving mean)")
    for phase in ("gen", "old_log_prob", "update_actor", "update_weights", "reward", "step"):
        pts = [(r["step"], r[f"timing_s/{phase}"]) for r in train if f"timing_s/{phase}" in r]
        if pts:
            axes[2].plot(*zip(*pts), label=phase, lw=0.8)
    axes[2].set_title("seconds per step, by phase")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = ttrl_dir / "demo_metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_outputs(summary: dict, ttrl_dir: Path, source: str = SOURCE, n_votes: int = 16) -> None:
    summary["plot"] = str(plot(ttrl_dir, summary, source, n_votes))
    (ttrl_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary, n_votes), flush=True)
    print(f"summary: {ttrl_dir / 'summary.json'}  plot: {summary['plot']}", flush=True)
