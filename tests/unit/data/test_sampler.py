"""ResumableBatchSampler / PromptLoader: seeded epochs, drop_last, and resuming mid-run reproduces the same batches."""

import pytest

from ttrl_megatron.config import DataConfig
from ttrl_megatron.data import PromptDataset, ResumableBatchSampler, build_train_loader, build_val_loader, write_rows


def _take(sampler, k):
    return [sampler.next_batch() for _ in range(k)]


def test_epochs_are_seeded_permutations():
    s = ResumableBatchSampler(10, 3, seed=5, drop_last=False)
    assert s.batches_per_epoch == 4
    epoch0 = list(s)
    assert sorted(i for b in epoch0 for i in b) == list(range(10)) and [len(b) for b in epoch0] == [3, 3, 3, 1]
    assert s.epoch == 1 and s.position == 0
    epoch1 = list(s)
    assert epoch1 != epoch0  # a fresh order every epoch
    again = ResumableBatchSampler(10, 3, seed=5, drop_last=False)
    assert list(again) == epoch0 and list(again) == epoch1  # same seed -> same sequence
    assert list(ResumableBatchSampler(10, 3, seed=6, drop_last=False)) != epoch0


def test_drop_last_and_no_shuffle():
    s = ResumableBatchSampler(10, 3, shuffle=False, drop_last=True)
    assert list(s) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and len(s) == 3


def test_next_batch_rolls_over_epochs():
    s = ResumableBatchSampler(6, 3, seed=0)
    batches = _take(s, 5)
    ref = ResumableBatchSampler(6, 3, seed=0)
    assert batches == list(ref) + list(ref) + [ref.next_batch()]
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["position"] == 1


@pytest.mark.parametrize("stop", [0, 1, 3, 4, 7])
def test_resume_reproduces_the_uninterrupted_run(stop):
    full = _take(ResumableBatchSampler(13, 4, seed=3), 10)
    first = ResumableBatchSampler(13, 4, seed=3)
    head = _take(first, stop)
    resumed = ResumableBatchSampler(13, 4, seed=3)
    resumed.load_state_dict(dict(first.state_dict()))
    assert head + _take(resumed, 10 - stop) == full


def test_resume_after_a_finished_epoch_loop():
    s = ResumableBatchSampler(8, 4, seed=1)
    it = iter(s)
    next(it), next(it)  # both batches handed out, generator not yet exhausted: state (0, 2)
    state = s.state_dict()
    r = ResumableBatchSampler(8, 4, seed=1)
    r.load_state_dict(state)
    assert list(r) == [] and r.epoch == 1  # nothing left in epoch 0; now at the start of epoch 1
    assert list(s) == [] and list(r) == list(s)  # and both continue identically


def test_state_from_other_settings_is_refused():
    state = ResumableBatchSampler(10, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="num_items=10"):
        ResumableBatchSampler(12, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1"):
        ResumableBatchSampler(10, 2, seed=2).load_state_dict(state)


def test_too_few_prompts_for_one_batch():
    with pytest.raises(ValueError, match="data.train_batch_size"):
        ResumableBatchSampler(3, 4)


def test_loaders_from_data_config(tmp_path, char_tokenizer):
    rows = [{"data_source": "t", "prompt": f"{i}+1=", "reward_model": {"ground_truth": str(i + 1)},
             "extra_info": {"index": i}} for i in range(10)]
    ds = PromptDataset([write_rows(rows, tmp_path / "d.jsonl")], char_tokenizer, DataConfig(max_prompt_length=6))
    cfg = DataConfig(max_prompt_length=6, train_batch_size=4, seed=9)
    loader = build_train_loader(ds, cfg)
    first = loader.next_batch()
    assert first["input_ids"].shape == (4, 6) and len(loader) == 2
    state = loader.state_dict()
    second = next(iter(loader))
    resumed = build_train_loader(ds, cfg)
    resumed.load_state_dict(state)
    assert next(iter(resumed))["index"] == second["index"]
    val = list(build_val_loader(ds, cfg))
    assert len(val) == 1 and val[0]["index"] == list(range(10))  # whole set, in order
    val3 = list(build_val_loader(ds, DataConfig(max_prompt_length=6, val_batch_size=3)))
    assert [len(b["index"]) for b in val3] == [3, 3, 3, 1]
