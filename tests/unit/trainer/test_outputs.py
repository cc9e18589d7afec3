"""Run outputs: metrics of a batch, jsonl tracker (truncation on resume), console line, dumps, the PNG plot, and
the checkpoint directory protocol (atomic commit, tracker, pruning, repair) without processes."""

import json

import pytest
import torch

from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer import checkpointing as C
from ttrl_megatron.trainer.dumps import generation_rows, write_jsonl
from ttrl_megatron.trainer.metrics import PhaseTimer, compute_data_metrics, throughput_metrics
from ttrl_megatron.trainer.tracking import Tracker, TrackerError, read_metrics


def _batch(with_values: bool) -> DataProto:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    scores = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    t = {"response_mask": mask, "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]),
         "token_level_scores": scores, "token_level_rewards": scores - 0.1 * mask,
         "advantages": torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]]),
         "returns": torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])}
    if with_values:
        t["values"] = torch.tensor([[1.0, 1.5, 0.0], [0.5, 0.0, 0.0]])
    return DataProto.from_dict(t)


def test_data_metrics_use_row_sums_and_valid_tokens():
    m = compute_data_metrics(_batch(True), response_length=3)
    assert m["critic/score/mean"] == 0.5 and m["critic/score/max"] == 1.0
    assert m["critic/rewards/min"] == pytest.approx(-0.3)
    assert m["critic/advantages/min"] == -1.0 and m["critic/advantages/mean"] == pytest.approx(-0.2)
    assert m["response_length/mean"] == 2.5 and m["response_length/clip_ratio"] == 0.5
    assert m["prompt_length/mean"] == 1.5
    assert "critic/values/mean" in m and "critic/vf_explained_var" in m
    assert "critic/values/mean" not in compute_data_metrics(_batch(False), response_length=3)
    tp = throughput_metrics(_batch(False), 2.0, world_size=2)
    assert tp["perf/total_num_tokens"] == 8.0 and tp["perf/throughput"] == 2.0


def test_phase_timer_accumulates():
    timer = PhaseTimer()
    with timer("gen"):
        pass
    with timer("gen"):
        pass
    assert list(timer.metrics()) == ["timing_s/gen"] and timer.metrics()["timing_s/gen"] >= 0


def test_tracker_jsonl_console_and_resume_truncation(tmp_path, capsys):
    tracker = Tracker(["console", "jsonl"], tmp_path, project="p", experiment="e", total_steps=3)
    for step in (1, 2, 3):
        tracker.log({"critic/score/mean": step / 10, "training/global_step": step}, step)
    tracker.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert "step 2: critic/score/mean=0.2" in capsys.readouterr().out
    resumed = Tracker(["jsonl"], tmp_path, project="p", experiment="e", total_steps=3, start_step=1)
    resumed.log({"x": 1.0}, 2)
    resumed.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_unknown_or_missing_logger_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(TrackerError, match="unknown logger 'mlflow'"):
        Tracker(["mlflow"], tmp_path, project="p", experiment="e", total_steps=1)
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(TrackerError, match="wandb is not installed"):
        Tracker(["wandb"], tmp_path, project="p", experiment="e", total_steps=1)


def test_dumps_write_one_object_per_row(tmp_path):
    rows = generation_rows(4, ["p1", "p2"], ["r1", "r2"], ["3", None], ["3", "3"], ["3", "4"], [1.0, 0.0])
    path = write_jsonl(tmp_path / "d", 4, rows)
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert got[1] == {"step": 4, "prompt": "p2", "response": "r2", "answer": None, "pseudo_label": "3",
                      "ground_truth": "4", "score": 0.0}
    with pytest.raises(ValueError, match="column lengths"):
        generation_rows(1, ["p"], ["r1", "r2"], [None, None], [None, None], [None, None], [0.0, 0.0])


def test_plot_writes_png(tmp_path):
    from ttrl_megatron.plot import main as plot_main

    tracker = Tracker(["jsonl"], tmp_path, project="p", experiment="e", total_steps=2)
    tracker.log({"val-core/d/acc/mean@2": 0.5}, 0)
    for step in (1, 2):
        tracker.log({"critic/score/mean": 0.1 * step, "actor/pg_loss": 0.3, "train/label_accuracy": 0.5}, step)
    tracker.close()
    assert plot_main([str(tmp_path)]) == 0
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert plot_main([str(tmp_path / "nothing")]) == 1


def _fake_checkpoint(root, step):
    d = C.step_dir(root, step)
    (d / "actor").mkdir(parents=True)
    (d / "critic").mkdir()
    return d


def test_commit_is_rename_then_tracker_and_prune_keeps_latest(tmp_path):
    mgr = C.CheckpointManager(tmp_path, hf_source_dir=None, max_actor_keep=2, max_critic_keep=1)
    for step in (1, 2, 3):
        tmp = tmp_path / f".global_step_{step}.tmp"
        (tmp / "actor").mkdir(parents=True)
        (tmp / "critic").mkdir()
        mgr._commit(tmp, C.step_dir(tmp_path, step), step)
        mgr._prune(step)
        assert C.latest_checkpoint(tmp_path) == C.step_dir(tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_2", "global_step_3", C.TRACKER]
    assert not (C.step_dir(tmp_path, 2) / "critic").exists() and (C.step_dir(tmp_path, 3) / "critic").exists()


def test_latest_checkpoint_absent_broken_and_repaired(tmp_path):
    assert C.latest_checkpoint(tmp_path) is None
    (tmp_path / C.TRACKER).write_text("7\n")
    with pytest.raises(C.ResumeError, match="step 7"):
        C.latest_checkpoint(tmp_path)
    # a re-save of step 7 killed between moving the old copy aside and renaming the new one in
    (tmp_path / ".global_step_7.old").mkdir()
    assert C.latest_checkpoint(tmp_path) == C.step_dir(tmp_path, 7)
    (tmp_path / C.TRACKER).write_text("latest")
    with pytest.raises(C.ResumeError, match="not a step number"):
        C.latest_checkpoint(tmp_path)
    assert C.parse_step(tmp_path / "global_step_12") == 12
    with pytest.raises(C.ResumeError, match="global_step_<N>"):
        C.parse_step(tmp_path / "step12")


def test_check_loggers_fails_early_for_missing_packages(monkeypatch):
    import builtins

    from ttrl_megatron.trainer.tracking import check_loggers

    check_loggers(["console", "jsonl"])
    real_import = builtins.__import__

    def missing(name, *args, **kwargs):
        if name in ("tensorboard", "wandb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", missing)
    for name in ("tensorboard", "wandb"):
        with pytest.raises(TrackerError, match=f"'{name}'.*pip install {name}"):
            check_loggers([name])
    with pytest.raises(TrackerError, match="unknown logger"):
        check_loggers(["mlflow"])
