"""Plot the main metrics of a run over steps into ``<run_dir>/metrics.png`` (matplotlib, Agg backend).

    python -m ttrl_megatron.plot RUN_DIR

Reads ``<run_dir>/metrics.jsonl`` (tracking.py). Panels: scores/rewards, TTRL label/reward accuracy, policy loss and
grad norm, response length, validation (val-core/*). Panels without data are skipped. No torch/megatron/vllm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = (
    ("reward", ("critic/score/mean", "train/ground_truth_reward", "train/majority_voting_reward")),
    ("TTRL labels", ("train/label_accuracy", "train/reward_accuracy", "train/majority_ratio")),
    ("actor", ("actor/pg_loss", "actor/grad_norm", "actor/entropy")),
    ("critic", ("critic/vf_loss", "critic/vf_explained_var")),
    ("response length", ("response_length/mean", "response_length/max")),
)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write the plot; returns its path, or None when the run has no metrics yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ttrl_megatron.trainer.tracking import METRICS_FILE, read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        return None
    rows = read_metrics(run_dir)
    val_keys = sorted({k for r in rows for k in r if k.startswith("val-core/")})
    panels = [(title, keys) for title, keys in PANELS if any(_series(rows, k)[0] for k in keys)]
    if val_keys:
        panels.append(("validation", tuple(val_keys)))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out else run_dir / "metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a run's metrics.jsonl into metrics.png")
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/metrics.png)")
    args = parser.parse_args(argv)
    path = plot_run(args.run_dir, args.out)
    if path is None:
        print(f"{args.run_dir}: no metrics.jsonl with plottable metrics", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
