"""Trainer checkpoints: ``<default_local_dir>/global_step_<N>/{actor,critic,extra}`` + the tracker file
``latest_checkpointed_iteration.txt``.

Layout of one checkpoint (every part is written by ALL ranks collectively unless noted):
    actor/   ttrl_checkpoint.json + weights/ (megatron dist-checkpoint, any-layout loadable) + hf/ (config/tokenizer):
             exactly what ``megatron/checkpoint.py`` writes, so ``python -m converters.megatron_to_hf --megatron-dir
             .../global_step_N/actor`` exports any saved step.
    actor/optim/ + actor/optimizer.json   optimizer (Adam moments, fp32 main params of the distributed optimizer,
             param-group hyper-parameters and step) + lr scheduler, as a megatron dist-checkpoint keyed by the model
             tensors (``megatron/engine_checkpoint.py``).
    critic/  same as actor (value model), when a critic exists.
    extra/   ``state.pt`` (rank 0: step, data sampler position, KL controller, layout) + ``rng_rank<r>.pt`` per rank.

Resuming at another parallel layout (TP / PP / DP, hence world size) works: model and optimizer state are resharded
by megatron; each rank takes the RNG state of saved rank ``rank % saved_world`` (a warning says the run will not
repeat bit for bit). Switching ``use_distributed_optimizer`` between save and resume is refused with a message
naming both settings and layouts.

Crash safety: everything is written under ``.global_step_<N>.tmp`` and renamed to ``global_step_<N>`` once complete
(rename = commit); only then is the tracker file replaced (write temp + ``os.replace``). A process killed at any
moment leaves the tracker pointing at a complete checkpoint (the previous or the new one). Older checkpoints are then
pruned to ``max_actor_ckpt_to_keep`` (whole step) / ``max_critic_ckpt_to_keep`` (critic part); the one the tracker
names is never removed. A write that fails (a full disk, a quota, an I/O error) on any rank fails the save on every
rank with one ``CheckpointSaveError`` naming the file that could not be written; the partial ``.tmp`` is removed and
the tracker keeps naming the previous checkpoint (megatron's dist-checkpoint writer reports a failed write on every
rank; our own per-rank files are agreed on with one all-gather before the commit). Debris of interrupted saves is
swept when the manager starts.

Uses ``ttrl_megatron.megatron.engine_checkpoint`` for actor/critic (our megatron package is the only megatron.core
user; imported where used, so the directory protocol below can be tested without megatron); torch.distributed here.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist


log = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed (missing or incomplete); the message says what to do."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (raised on every rank); the previous checkpoint stays the latest."""


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(root: str | os.PathLike) -> Optional[Path]:
    """The checkpoint the tracker names (None when there is none). Repairs the one interrupted case: a re-save of an
    existing step killed between moving the old copy aside and renaming the new one in."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise ResumeError(f"{tracker} holds {text!r}, not a step number; fix or delete it")
    path = step_dir(root, int(text))
    old = Path(root) / f".{path.name}.old"
    if not path.is_dir() and old.is_dir() and _rank() == 0:
        os.replace(old, path)
    _barrier()
    if not path.is_dir():
        raise ResumeError(f"{tracker} names step {text} but {path} does not exist; point it at an existing "
                          f"global_step_<N> or set trainer.resume_mode=disable")
    return path


def parse_step(path: str | os.PathLike) -> int:
    match = STEP_DIR.match(Path(path).name)
    if not match:
        raise ResumeError(f"trainer.resume_from_path={str(path)!r} is not a global_step_<N> directory")
    return int(match.group(1))


# ------------------------------------------------------------------ one role (actor or critic)
def _layout_record() -> dict:
    from ttrl_megatron.megatron.engine import Ranks

    r = Ranks.current()
    return {"tp": r.tp_size, "pp": r.pp_size, "dp": r.dp_size, "world": dist.get_world_size()}


def save_role(role, role_dir: Path, hf_source_dir: str | None) -> None:
    """Collectively save a MegatronActor / MegatronCritic: weights, optimizer and lr scheduler (dist-checkpoints)."""
    from ttrl_megatron.megatron.engine_checkpoint import save_engine_checkpoint

    save_engine_checkpoint(role.engine, str(role_dir), hf_source_dir)


def load_role(role, role_dir: Path) -> None:
    """Collectively restore what ``save_role`` wrote, at this run's parallel layout (TP/PP/DP may differ from the
    saved one; switching use_distributed_optimizer raises CheckpointMismatchError naming both settings)."""
    if not role_dir.is_dir():
        raise ResumeError(f"{role_dir} is missing: this checkpoint has no such role (was it pruned by "
                          f"max_critic_ckpt_to_keep, or saved without a critic?)")
    from ttrl_megatron.megatron.engine_checkpoint import load_engine_checkpoint

    load_engine_checkpoint(role.engine, str(role_dir))


# ------------------------------------------------------------------ failures agreed on by every rank
class _CollectiveWriteError(RuntimeError):
    """Some rank's local write failed; carries that rank's message."""


def _attempt(write) -> Optional[str]:
    """Run one rank-local write; its failure as one line naming the file (None when it worked)."""
    try:
        write()
    except OSError as exc:
        return f"rank {_rank()}: {_describe(exc)}"
    return None


def _agree(problem: Optional[str]) -> None:
    """Collective: raise the first rank's problem on every rank (so no rank waits in a barrier of a failed save)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if problem:
            raise _CollectiveWriteError(problem)
        return
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, problem)
    first = next((p for p in everyone if p), None)
    if first:
        raise _CollectiveWriteError(first)


def _describe(exc: OSError) -> str:
    text = f"[Errno {exc.errno}] {exc.strerror or exc}" if exc.errno else str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def _dcp_exception() -> type:
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def _root_cause(exc: BaseException) -> str:
    """One line: the failing rank and its OSError (with the file) when there is one, else its error's last line.
    dist-checkpoint wraps every rank's failure in one CheckpointException, so look inside."""
    if isinstance(exc, _CollectiveWriteError):
        return str(exc)
    failures = list(getattr(exc, "failures", {}).items()) or [(_rank(), exc)]
    for rank, failure in failures:
        found = _find_os_error(failure[0] if isinstance(failure, tuple) else failure)
        if found is not None:
            return f"rank {rank}: {_describe(found)}"
    rank, failure = failures[0]
    inner = failure[0] if isinstance(failure, tuple) else failure
    lines = str(inner).strip().splitlines()
    return f"rank {rank}: {type(inner).__name__}: {lines[-1] if lines else ''}"


def _disk_note(root: Path) -> str:
    """"; <root> has N MiB free of M MiB: the disk is full" when it (nearly) is: torch's writer may hide ENOSPC."""
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return ""
    if usage.free > max(64 << 20, usage.total // 100):  # more than 1% and 64 MiB free: not the cause
        return ""
    return f"; {root} has {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB: the disk is full"


def _find_os_error(exc: Optional[BaseException], depth: int = 0) -> Optional[OSError]:
    if exc is None or depth > 8:
        return None
    if isinstance(exc, OSError):
        return exc
    return _find_os_error(exc.__cause__ or exc.__context__, depth + 1)


# ------------------------------------------------------------------ RNG and extra state
def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointManager:
    """Save / find / load trainer checkpoints under ``root`` (trainer.default_local_dir)."""

    def __init__(self, root: str | os.PathLike, *, hf_source_dir: str | None, max_actor_keep: int | None,
                 max_critic_keep: int | None):
        self.root = Path(root)
        self.hf_source_dir = hf_source_dir
        self.max_actor_keep, self.max_critic_keep = max_actor_keep, max_critic_keep

    def sweep_debris(self) -> None:
        """Rank 0 removes ``.global_step_*.tmp`` folders left by saves that were interrupted (killed, disk full)."""
        if _rank() == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".global_step_") and p.name.endswith(".tmp") and p.is_dir():
                    log.warning("removing %s: an interrupted save's partial checkpoint", p)
                    shutil.rmtree(p, ignore_errors=True)
        _barrier()

    def save(self, step: int, roles: dict[str, Any], extra: dict) -> Path:
        """Collectively write checkpoint ``step``; returns its final directory. Raises CheckpointSaveError on every
        rank when a write fails anywhere (nothing is committed then)."""
        final = step_dir(self.root, step)
        tmp = self.root / f".{final.name}.tmp"
        writing = tmp
        try:
            _agree(_attempt(lambda: self._prepare(tmp)) if _rank() == 0 else None)
            for name, role in roles.items():
                writing = tmp / name
                save_role(role, writing, self.hf_source_dir)  # collective; dist-checkpoint raises on every rank
            writing = tmp / "extra"
            _agree(_attempt(lambda: self._write_extra(tmp, step, extra)))
            writing = final
            _agree(_attempt(lambda: self._commit(tmp, final, step)) if _rank() == 0 else None)
        except (_CollectiveWriteError, _dcp_exception()) as exc:  # raised on every rank: clean up together
            raise self._save_failed(step, tmp, writing, exc, collective=True) from None
        except OSError as exc:  # this rank alone (a rank-0-only write inside a role's save): peers may still be
            raise self._save_failed(step, tmp, writing, exc, collective=False) from None  # writing: keep debris
        if _rank() == 0:
            self._prune(step)
        _barrier()
        return final

    def _prepare(self, tmp: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an interrupted save of this step
        (tmp / "extra").mkdir(parents=True)

    @staticmethod
    def _write_extra(tmp: Path, step: int, extra: dict) -> None:
        torch.save(rng_state(), tmp / "extra" / f"rng_rank{_rank():05d}.pt")
        if _rank() == 0:
            torch.save({**extra, "step": step, "layout": _layout_record()}, tmp / "extra" / "state.pt")

    def _save_failed(self, step: int, tmp: Path, writing: Path, exc: BaseException,
                     collective: bool) -> CheckpointSaveError:
        """Why the save failed; after a collective failure (every rank stopped writing) the partial folder goes."""
        cause = _root_cause(exc)
        if "[Errno" not in cause:  # torch's zip writer reports a failed write as "unexpected pos": say where
            cause += f" (while writing {writing})"
        cause += _disk_note(self.root)
        if collective:
            _barrier()
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            _barrier()
        tracker = self.root / TRACKER
        previous = tracker.read_text(encoding="utf-8").strip() if tracker.is_file() else ""
        kept = (f"the latest checkpoint is still {step_dir(self.root, int(previous))}" if previous.isdigit()
                else "there is no earlier checkpoint")
        removed = f"the partial {tmp.name} {'was removed' if collective else 'is removed at restart'}"
        return CheckpointSaveError(f"checkpoint of step {step} was not saved: {cause}; {kept} ({removed}); free space "
                                   f"under {self.root} or point trainer.default_local_dir elsewhere, then resume")

    def _commit(self, tmp: Path, final: Path, step: int) -> None:
        old = self.root / f".{final.name}.old"
        if final.exists():  # re-saving a step that exists (e.g. after resume_path from an earlier step)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _write_atomic(self.root / TRACKER, f"{step}\n")
        shutil.rmtree(old, ignore_errors=True)

    def _prune(self, latest: int) -> None:
        steps = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
        older = [s for s in steps if s != latest]
        if self.max_actor_keep and self.max_actor_keep > 0:
            for s in older[: max(len(steps) - self.max_actor_keep, 0)]:
                shutil.rmtree(step_dir(self.root, s), ignore_errors=True)
        if self.max_critic_keep and self.max_critic_keep > 0:
            kept = [s for s in steps if step_dir(self.root, s).is_dir()]
            for s in [s for s in kept if s != latest][: max(len(kept) - self.max_critic_keep, 0)]:
                shutil.rmtree(step_dir(self.root, s) / "critic", ignore_errors=True)

    def load(self, path: Path, roles: dict[str, Any]) -> dict:
        """Collectively restore ``roles`` and this rank's RNG from checkpoint ``path``; returns the extra state."""
        state_file = path / "extra" / "state.pt"
        if not state_file.is_file():
            raise ResumeError(f"{path} is not a complete trainer checkpoint (no extra/state.pt)")
        extra = torch.load(state_file, map_location="cpu", weights_only=False)
        for name, role in roles.items():
            load_role(role, path / name)
        saved_world = extra["layout"]["world"]
        if extra["layout"] != _layout_record():
            log.warning("resuming %s (saved at %s) at layout %s: weights and optimizer state are resharded; RNG "
                        "streams come from saved rank (rank %% %d), so runs will not repeat bit for bit",
                        path, extra["layout"], _layout_record(), saved_world)
        set_rng_state(torch.load(path / "extra" / f"rng_rank{_rank() % saved_world:05d}.pt", map_location="cpu",
                                 weights_only=False))
        _barrier()
        return extra
