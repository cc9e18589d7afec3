"""The watchdog's phase budgets (trainer/watchdog.py): every phase the trainer times maps to a budget field, and the
watched timer still measures like PhaseTimer. (Hangs, dumps and failure naming run on real ranks:
tests/dist/test_watchdog.py.)"""

import ast
import time
from pathlib import Path

from ttrl_megatron.config import WatchdogConfig
from ttrl_megatron.trainer import watchdog as W

TIMED = [Path(W.__file__).with_name(name) for name in ("trainer.py", "dynamic_sampling.py")]


def _timed_phases() -> set[str]:
    """Names passed to ``timer("...")`` in trainer.py (train_step's phases and fit's validation) and
    dynamic_sampling.py (the step's generation and reward, repeated per further prompt batch)."""
    names = set()
    for node in (n for path in TIMED for n in ast.walk(ast.parse(path.read_text()))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "timer"
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def test_every_timed_trainer_phase_has_a_budget_field():
    phases = _timed_phases()
    assert {"gen", "reward", "update_actor", "update_weights", "testing", "step"} <= phases
    unmapped = phases - set(W.PHASE_BUDGETS)
    assert not unmapped, f"map these trainer phases to a WatchdogConfig budget in watchdog.PHASE_BUDGETS: {unmapped}"
    for field in W.PHASE_BUDGETS.values():
        assert hasattr(WatchdogConfig, f"{field}_s") or f"{field}_s" in WatchdogConfig.__dataclass_fields__


def test_budgets_come_from_the_config():
    cfg = WatchdogConfig(generation_s=11.0, reward_s=12.0, update_s=13.0, sync_s=14.0, checkpoint_s=15.0,
                         validation_s=16.0, step_s=None)
    wd = W.Watchdog(cfg, "/nonexistent", rank=0, world=1)
    assert [wd.budget(p) for p in ("gen", "reward", "old_log_prob", "update_actor", "update_weights", "checkpoint",
                                   "testing", "step", "some_new_phase")] == [11.0, 12.0, 13.0, 13.0, 14.0, 15.0,
                                                                             16.0, None, None]


def test_watched_timer_times_phases_and_tracks_nesting():
    wd = W.Watchdog(WatchdogConfig(), "/nonexistent", rank=0, world=1)
    timer = wd.timer(step=7)
    try:
        with timer("step"):
            with timer("gen"):
                assert wd._where() == "step/gen" and wd.step == 7
                time.sleep(0.01)
        assert wd._where() == "-"
        assert set(timer.metrics()) == {"timing_s/step", "timing_s/gen"} and timer.seconds["gen"] >= 0.01
        try:
            with timer("step"), timer("update_actor"):
                raise ValueError("boom")
        except ValueError:
            pass
        assert wd.failed_in == "step/update_actor"  # where the failure happened, for its note
    finally:
        wd.stop()  # cancels the faulthandler backstop armed by the phases
