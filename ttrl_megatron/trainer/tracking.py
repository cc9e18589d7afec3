"""Run outputs selected by ``trainer.logger``: console, jsonl (always on), tensorboard, wandb.

- console: one compact line per step (a few key metrics) under a tqdm progress bar over the training steps.
- jsonl: every metric of every step as one JSON object per line in ``<run_dir>/metrics.jsonl`` (``step`` included);
  always written, whatever ``trainer.logger`` says, so plots and tests have one source.
- tensorboard: ``torch.utils.tensorboard`` under ``<run_dir>/tensorboard``; the ``tensorboard`` package must be
  installed (checked at start-up with a clear error).
- wandb: ``wandb.init(project, name, dir=run_dir)``; ``WANDB_MODE=offline`` works without network. Not installed
  -> a clear error at start-up.
Only rank 0 builds a Tracker; other ranks log nothing. No torch.distributed, megatron or vllm here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

CONSOLE_KEYS = ("critic/score/mean", "train/label_accuracy", "train/majority_ratio", "actor/pg_loss",
                "actor/grad_norm", "critic/vf_loss", "response_length/mean", "timing_s/step")
METRICS_FILE = "metrics.jsonl"


class TrackerError(RuntimeError):
    """A logger named in trainer.logger cannot be used (package missing)."""


class JsonlLogger:
    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / METRICS_FILE
        if resume_step > 0 and self.path.exists():
            _truncate_after(self.path, resume_step)  # a killed run may have logged steps past its checkpoint
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _truncate_after(path: Path, step: int) -> None:
    """Keep only rows with step <= ``step`` (rewritten atomically)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class ConsoleLogger:
    def __init__(self, total_steps: int, start_step: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="ttrl", unit="step", dynamic_ncols=True)

    def log(self, metrics: dict, step: int) -> None:
        shown = " ".join(f"{k}={metrics[k]:.4g}"
                         for k in CONSOLE_KEYS if k in metrics)
        val = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val-core/"))
        self.bar.write(f"step {step}: {shown}" + (f" | {val}" if val else ""))
        if "training/global_step" in metrics:  # a training step (not the pre-training validation)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class TensorboardLogger:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerError("trainer.logger contains 'tensorboard' but the tensorboard package is not installed: "
                               "pip install tensorboard, or remove it from trainer.logger") from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, project: str, name: str, config: dict):
        try:
            import wandb
        except ImportError as exc:
            raise TrackerError("trainer.logger contains 'wandb' but wandb is not installed: pip install wandb, or "
                               "remove it from trainer.logger (set WANDB_MODE=offline to log without network)") from exc
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def check_loggers(loggers: list[str]) -> None:
    """Fail at start-up (before models are built) when a selected logger cannot work."""
    for name in loggers:
        if name == "tensorboard":
            try:
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            except ImportError as exc:
                raise TrackerError("trainer.logger contains 'tensorboard' but the tensorboard package is not "
                                   "installed: pip install tensorboard, or remove it from trainer.logger") from exc
        elif name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError as exc:
                raise TrackerError("trainer.logger contains 'wandb' but wandb is not installed: pip install wandb, "
                                   "or remove it from trainer.logger") from exc
        elif name not in ("console", "jsonl"):
            raise TrackerError(f"trainer.logger: unknown logger {name!r}; use console, jsonl, tensorboard, wandb")


class Tracker:
    """Fans each step's metrics out to the selected loggers. ``close()`` at the end of the run."""

    def __init__(self, loggers: list[str], run_dir: str | os.PathLike, *, project: str, experiment: str,
                 total_steps: int, start_step: int = 0, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backends = [JsonlLogger(self.run_dir, start_step)]
        for name in dict.fromkeys(loggers):
            if name == "console":
                self.backends.append(ConsoleLogger(total_steps, start_step))
            elif name == "tensorboard":
                self.backends.append(TensorboardLogger(self.run_dir))
            elif name == "wandb":
                self.backends.append(WandbLogger(self.run_dir, project, experiment, config or {}))
            elif name != "jsonl":
                raise TrackerError(f"trainer.logger: unknown logger {name!r}; use console, jsonl, tensorboard, wandb")

    def log(self, metrics: dict, step: int) -> None:
        for backend in self.backends:
            backend.log(metrics, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All rows of ``<run_dir>/metrics.jsonl`` (in file order)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
