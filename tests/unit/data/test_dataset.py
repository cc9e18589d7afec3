"""PromptDataset: rendering, tokenization, left padding, overlong prompts (filter / truncate / error), collation."""

import logging

import pytest
import torch

from ttrl_megatron.config import DataConfig
from ttrl_megatron.data import DataError, PromptDataset, collate_prompts, left_pad, write_rows
from ttrl_megatron.data.tokenizer import char_vocab


def _rows(questions):
    return [{"data_source": "t", "prompt": [{"role": "user", "content": q}], "reward_model": {"ground_truth": "1"},
             "extra_info": {"index": i}} for i, q in enumerate(questions)]


@pytest.fixture
def files(tmp_path):
    return [write_rows(_rows(["12+34=", "5+6=", "123+456="]), tmp_path / "d.parquet")]


def test_left_pad_positions():
    ids, mask, pos = left_pad([7, 8, 9], 5, 0)
    assert ids.tolist() == [0, 0, 7, 8, 9] and mask.tolist() == [0, 0, 1, 1, 1] and pos.tolist() == [0, 0, 0, 1, 2]


def test_items_are_left_padded_prompt_tensors(files, char_tokenizer):
    ds = PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=10))
    item = ds[1]
    vocab = char_vocab()
    expected = [1] + [vocab.index(c) for c in "5+6="]  # plain template (no chat template) + BOS
    assert item["raw_prompt_ids"] == expected
    assert item["input_ids"].tolist() == [0] * 5 + expected and item["input_ids"].shape == (10,)
    assert item["attention_mask"].tolist() == [0] * 5 + [1] * 5
    assert item["position_ids"].tolist() == [0] * 5 + [0, 1, 2, 3, 4]
    assert item["ground_truth"] == "1" and item["reward_model"] == {"ground_truth": "1", "style": "rule"}
    assert item["index"] == 1 and item["data_source"] == "t" and item["raw_prompt"][0]["content"] == "5+6="


def test_collate_stacks_tensors_and_lists_the_rest(files, char_tokenizer):
    ds = PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=10))
    batch = collate_prompts([ds[0], ds[2]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["position_ids"].shape == (2, 10)
    assert batch["input_ids"].dtype == torch.long and batch["index"] == [0, 2]
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # the last column is the last prompt token
    assert [len(x) for x in batch["raw_prompt_ids"]] == [7, 9]


def test_filter_overlong_drops_and_logs(files, char_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        ds = PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=8, filter_overlong_prompts=True))
    assert len(ds) == 2 and ds.num_filtered == 1 and "dropped 1 of 3" in caplog.text
    assert [ds[i]["index"] for i in range(len(ds))] == [0, 1]


def test_truncation_error_names_row_and_length(files, char_tokenizer):
    with pytest.raises(DataError) as err:
        PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=8))
    assert f"{files[0]}: row 2" in str(err.value) and "prompt is 9 tokens" in str(err.value)
    assert "data.max_prompt_length=8" in str(err.value)


@pytest.mark.parametrize("side, kept", [("left", "123+456="), ("right", "123+456")])
def test_truncation_left_and_right(files, char_tokenizer, side, kept):
    ds = PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=8, truncation=side))
    ids = ds[2]["raw_prompt_ids"]
    assert len(ids) == 8 and char_tokenizer.decode(ids, skip_special_tokens=True) == kept


def test_chat_template_used_when_the_tokenizer_has_one(tmp_path, char_tokenizer_dir):
    from ttrl_megatron.data import load_tokenizer

    tok = load_tokenizer(char_tokenizer_dir)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"  # visibly different from plain
    path = write_rows([{"data_source": "t", "prompt": "1+2", "reward_model": {"ground_truth": "3"}}], tmp_path / "c.jsonl")
    vocab = char_vocab()
    chat = PromptDataset([path], tok, DataConfig(max_prompt_length=8))
    assert chat[0]["raw_prompt_ids"] == [vocab.index(c) for c in "1+2="]  # template text, no BOS added on top
    plain = PromptDataset([path], tok, DataConfig(max_prompt_length=8, prompt_template="plain"))
    assert plain[0]["raw_prompt_ids"] == [1] + [vocab.index(c) for c in "1+2"]


def test_chat_template_required_when_asked(files, char_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        PromptDataset(files, char_tokenizer, DataConfig(max_prompt_length=10, prompt_template="chat"))
