"""Failure at any moment of a save loses nothing committed: the trainer's CheckpointManager with a real megatron-core
actor (distributed optimizer, DP=2 over gloo) through kills, full disks and signals.

Spawn 1: checkpoint step 1 is committed; during the save of step 2 rank 1 is SIGKILLed right after the actor's
weights and optimizer were written (a rank killed mid-save). Spawn 2 (fresh processes, as a restarted job): the debris
is swept, the latest checkpoint is still step 1 and restores the exact step-1 parameters; then
- a disk that fills during a save: the dist-checkpoint writer of rank 0 gets ENOSPC after a chosen number of bytes
  (``FullDisk`` wraps torch's FileSystemWriter streams, the real writer under megatron's dist_checkpointing: only the
  error's moment is chosen, the failure path is the real one), and rank 1's own ``extra/rng_rank00001.pt`` fails
  the same way: every rank raises one CheckpointSaveError naming the rank and the file, the partial folder is
  removed, step 1 stays the latest;
- SIGTERM and SIGUSR1 arriving in the middle of a save (PreemptionHandler installed, as in a run): the save completes,
  the signals are only noted, and the checkpoint restores exactly.
Where unprivileged mount namespaces work (``unshare -rm``), a third run saves into a real tmpfs too small for two
checkpoints: the kernel's own ENOSPC, same outcome.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.dist.harness import DistributedTestError, run_distributed
from tests.dist.test_actor_critic_parity import make_hf_dir
from tests.dist.test_engine_checkpoint import _actor, _hf_params, _max_diff
from tests.dist.test_actor_single import _batch_with_old

ROOT = Path(__file__).resolve().parents[2]


def _setup(hf_dir: str):
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.protocol import DataProto

    init_distributed(ParallelLayout(1, 1, 2), seed=1)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = _batch_with_old(hf)
    return lambda: DataProto(dict(batch))


def _manager(root: str):
    from ttrl_megatron.trainer.checkpointing import CheckpointManager

    return CheckpointManager(root, hf_source_dir=None, max_actor_keep=None, max_critic_keep=None)


class FullDisk:
    """Patch torch's dist-checkpoint file streams on this rank: writes beyond ``budget`` bytes raise ENOSPC."""

    def __init__(self, budget: int):
        from torch.distributed.checkpoint.filesystem import FileSystem

        self.cls, self.budget, self.written = FileSystem, budget, 0
        self.original = FileSystem.create_stream

    def __enter__(self):
        import contextlib

        disk = self

        @contextlib.contextmanager
        def create_stream(fs, path, mode):
            with disk.original(fs, path, mode) as stream:
                yield _Stream(stream, disk, str(path))

        self.cls.create_stream = create_stream
        return self

    def __exit__(self, *exc):
        self.cls.create_stream = self.original


class _Stream:
    def __init__(self, stream, disk: FullDisk, path: str):
        self._stream, self._disk, self._path = stream, disk, path

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if self._disk.written + size > self._disk.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        self._disk.written += size
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _save_then_die(hf_dir: str, root: str) -> None:
    import torch.distributed as dist

    import ttrl_megatron.trainer.checkpointing as ckpt

    data = _setup(hf_dir)
    actor = _actor(hf_dir, True)
    actor.update_policy(data())
    manager = _manager(root)
    manager.save(1, {"actor": actor}, {"sampler": {"position": 1}})
    if dist.get_rank() == 0:
        torch.save(_hf_params(actor), os.path.join(root, "step1_params.pt"))
    actor.update_policy(data())
    real = ckpt.save_role

    def save_role_then_die(role, role_dir, hf_source_dir):
        real(role, role_dir, hf_source_dir)
        if dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-save: weights + optimizer written, nothing committed

    ckpt.save_role = save_role_then_die
    manager.save(2, {"actor": actor}, {"sampler": {"position": 2}})


def _resume_and_fail_saves(hf_dir: str, root: str) -> dict:
    import torch.distributed as dist

    import ttrl_megatron.trainer.checkpointing as ckpt
    from ttrl_megatron.trainer.preemption import PreemptionHandler

    rank, out = dist.get_rank(), {}
    data = _setup(hf_dir)
    manager = _manager(root)
    out["debris_before"] = sorted(p.name for p in Path(root).iterdir() if p.name.endswith(".tmp"))
    dist.barrier()
    manager.sweep_debris()
    out["debris_after"] = sorted(p.name for p in Path(root).iterdir() if p.name.endswith(".tmp"))
    latest = ckpt.latest_checkpoint(root)
    out["latest"] = latest.name
    actor = _actor(hf_dir, True)
    out["extra"] = manager.load(latest, {"actor": actor})["sampler"]
    out["resume_diff"] = _max_diff(torch.load(os.path.join(root, "step1_params.pt")), _hf_params(actor))
    actor.update_policy(data())

    def failed_save(step: int) -> str:
        try:
            manager.save(step, {"actor": actor}, {"sampler": {"position": step}})
        except ckpt.CheckpointSaveError as exc:
            return str(exc)
        return "saved"

    with FullDisk(budget=4096 if rank == 0 else 1 << 40):  # rank 0 (it writes the deduplicated shards) fills up
        out["enospc_dcp"] = failed_save(2)
    out["after_dcp"] = sorted(p.name for p in Path(root).iterdir())
    dist.barrier()  # every rank has looked before the next save starts writing again
    real_save = torch.save

    def full_for_rng(obj, f, *args, **kwargs):
        if rank == 1 and str(f).endswith("rng_rank00001.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    ckpt.torch.save = full_for_rng
    try:
        out["enospc_own"] = failed_save(2)
    finally:
        ckpt.torch.save = real_save
    out["after_own"] = sorted(p.name for p in Path(root).iterdir())
    dist.barrier()

    # signals in the middle of a save: noted, the save completes and restores exactly
    handler = PreemptionHandler(["SIGTERM", "SIGUSR1"]).install()
    real_role = ckpt.save_role

    def save_role_signalled(role, role_dir, hf_source_dir):
        os.kill(os.getpid(), signal.SIGTERM)
        real_role(role, role_dir, hf_source_dir)
        os.kill(os.getpid(), signal.SIGUSR1)

    ckpt.save_role = save_role_signalled
    try:
        out["signalled_save"] = failed_save(2)
    finally:
        ckpt.save_role = real_role
        handler.uninstall()
    out["signals"] = [handler.reason, handler.extra_signals]
    out["latest_after_signals"] = ckpt.latest_checkpoint(root).name
    fresh = _actor(hf_dir, True)
    manager.load(ckpt.latest_checkpoint(root), {"actor": fresh})
    out["signalled_diff"] = _max_diff(_hf_params(actor), _hf_params(fresh))
    return out


def _real_disk_full(hf_dir: str, root: str) -> dict:
    """In a tmpfs that holds one checkpoint and a half: step 1 fits, step 2 meets the kernel's ENOSPC."""
    import ttrl_megatron.trainer.checkpointing as ckpt

    data = _setup(hf_dir)
    actor = _actor(hf_dir, True)
    manager = _manager(root)
    actor.update_policy(data())
    manager.save(1, {"actor": actor}, {"sampler": None})
    actor.update_policy(data())
    try:
        manager.save(2, {"actor": actor}, {"sampler": None})
        error = "saved"
    except ckpt.CheckpointSaveError as exc:
        error = str(exc)
    return {"error": error, "left": sorted(p.name for p in Path(root).iterdir()),
            "latest": ckpt.latest_checkpoint(root).name}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2_ckpt_failures"))


@pytest.fixture(scope="module")
def results(hf_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    with pytest.raises(DistributedTestError):
        run_distributed(_save_then_die, 2, hf_dir, str(root), timeout_s=240)
    on_disk = {"tracker": (root / "latest_checkpointed_iteration.txt").read_text().strip(),
               "entries": sorted(p.name for p in root.iterdir()),
               "partial": sorted(p.name for p in (root / ".global_step_2.tmp").iterdir())}
    return on_disk, run_distributed(_resume_and_fail_saves, 2, hf_dir, str(root), timeout_s=300), root


def test_rank_killed_mid_save_leaves_the_previous_checkpoint_latest(results):
    on_disk, resumed, _ = results
    assert on_disk["tracker"] == "1"
    assert "global_step_1" in on_disk["entries"] and "global_step_2" not in on_disk["entries"]
    assert "actor" in on_disk["partial"]  # the kill came after the weights were written: nothing was committed
    for r in resumed:
        assert r["debris_before"] == [".global_step_2.tmp"] and r["debris_after"] == []
        assert r["latest"] == "global_step_1" and r["extra"] == {"position": 1}
        assert r["resume_diff"] == 0.0


def test_disk_full_during_the_dist_checkpoint_write_fails_every_rank_naming_the_file(results):
    for r in results[1]:
        msg = r["enospc_dcp"]
        assert msg.startswith("checkpoint of step 2 was not saved: rank 0: [Errno 28] No space left on device: "), msg
        assert ".global_step_2.tmp/actor/" in msg and "the latest checkpoint is still" in msg, msg
        assert msg.split("the latest checkpoint is still ")[1].split(" ")[0].endswith("global_step_1")
        assert r["after_dcp"] == ["global_step_1", "latest_checkpointed_iteration.txt", "step1_params.pt"], msg


def test_disk_full_on_one_ranks_own_file_fails_every_rank(results):
    for r in results[1]:
        msg = r["enospc_own"]
        assert msg.startswith("checkpoint of step 2 was not saved: rank 1: [Errno 28] No space left on device: "), msg
        assert ".global_step_2.tmp/extra/rng_rank00001.pt;" in msg, msg
        assert r["after_own"] == ["global_step_1", "latest_checkpointed_iteration.txt", "step1_params.pt"]


def test_signals_during_a_save_do_not_interrupt_or_corrupt_it(results):
    for r in results[1]:
        assert r["signalled_save"] == "saved"
        assert r["signals"] == ["SIGTERM", 1]
        assert r["latest_after_signals"] == "global_step_2"
        assert r["signalled_diff"] == 0.0


def _unshare_works() -> bool:
    """Whether this machine lets us mount a tmpfs in a private user + mount namespace (root not needed)."""
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="ttrl-unshare-")
    try:
        return subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                              capture_output=True).returncode == 0
    finally:
        os.rmdir(probe)


@pytest.mark.skipif(not _unshare_works(), reason="no unprivileged mount namespace (unshare -rm) for a small tmpfs")
def test_a_real_full_tmpfs_fails_the_save_and_keeps_step_1(hf_dir, results, tmp_path):
    step1 = results[2] / "global_step_1"
    size = sum(f.stat().st_size for f in step1.rglob("*") if f.is_file())
    mount = tmp_path / "disk"
    mount.mkdir()
    code = ("import json; from tests.dist.harness import run_distributed; "
            "from tests.dist.test_checkpoint_failures import _real_disk_full; "
            f"print('RESULT ' + json.dumps(run_distributed(_real_disk_full, 2, {hf_dir!r}, {str(mount)!r}, "
            "timeout_s=240)))")
    pages = int(size * 1.5) // 4096 + 1  # one checkpoint and a half: step 1 fits, step 2 does not
    script = f"mount -t tmpfs -o size={pages * 4096} tmpfs {mount} && exec {sys.executable} -c \"{code}\""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0]):
        # torch's zip writer turns the kernel's ENOSPC into "unexpected pos": the note about the disk says it
        assert "the disk is full" in r["error"] and "the latest checkpoint is still" in r["error"], r
        assert "No space left on device" in r["error"] or ".global_step_2.tmp/actor" in r["error"], r
        assert r["latest"] == "global_step_1" and "global_step_2" not in r["left"], r
