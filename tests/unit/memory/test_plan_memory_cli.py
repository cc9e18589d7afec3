"""python -m ttrl_megatron.plan_memory: the table for the reference run, JSON for scripts, exit status
0 (fits) / 1 (does not fit) / 2 (config error), composed like ttrl_megatron.main (unknown keys refused)."""

import json

from ttrl_megatron.plan_memory import main

REF = ["--config-name", "examples/qwen2.5-math-1.5b"]


def test_table_for_the_reference_run(qwen_dir, capsys):
    assert main(REF + [f"actor_rollout_ref.model.path={qwen_dir}", "trainer.gpu_memory_gib=79"]) == 0
    out = capsys.readouterr().out
    for phase in ("init", "gen", "old_log_prob", "ref", "update_actor", "update_weights"):
        assert f"\n{phase} " in out
    assert "TP=1 PP=1 DP=8" in out and out.strip().splitlines()[-1].startswith("largest phase: gen")


def test_json_and_not_fitting(qwen_dir, capsys):
    assert main(REF + ["--json", f"actor_rollout_ref.model.path={qwen_dir}", "trainer.gpu_memory_gib=12"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False and data["device_gib"] == 12 and "update_actor" in data["phases"]


def test_config_errors_exit_2(qwen_dir, tmp_path, capsys):
    assert main(REF + [f"actor_rollout_ref.model.path={qwen_dir}", "trainer.no_such_key=1"]) == 2
    assert "trainer.no_such_key" in capsys.readouterr().err
    assert main(REF + [f"actor_rollout_ref.model.path={tmp_path}"]) == 2
    assert "actor_rollout_ref.model.path" in capsys.readouterr().err
