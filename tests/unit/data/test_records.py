"""verl-format rows: parquet/jsonl round trips, both prompt shapes, and one clear error per malformed field."""

import json

import pytest

from ttrl_megatron.data import DataError, load_records, read_rows, write_rows

GOOD = {"data_source": "math", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}],
        "reward_model": {"ground_truth": "2", "style": "rule"}, "extra_info": {"index": 7, "split": "test"}}


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_round_trip_keeps_rows(tmp_path, suffix):
    path = write_rows([GOOD, {**GOOD, "extra_info": {"index": None, "split": "x"}}], tmp_path / f"d.{suffix}")
    records = load_records([path])
    assert records[0].prompt == GOOD["prompt"] and records[0].ground_truth == "2" and records[0].index == 7
    assert records[1].index == 1  # a null index falls back to the row number
    assert records[0].where == f"{path}: row 0" and records[0].extra_info["split"] == "test"
    assert read_rows(path)[0]["reward_model"]["ground_truth"] == "2"


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_plain_string_prompt_and_numeric_label(tmp_path, suffix):
    path = write_rows([{"data_source": "d", "prompt": "plain question", "reward_model": {"ground_truth": 3}}],
                      tmp_path / f"d.{suffix}")
    (record,) = load_records([path])
    assert record.prompt == "plain question" and record.ground_truth == "3"  # numbers become strings
    assert (record.index, record.style, record.extra_info) == (0, "rule", {})


def test_unlabeled_prompt_is_allowed(tmp_path):
    path = write_rows([{**GOOD, "reward_model": {"ground_truth": None}}], tmp_path / "d.jsonl")
    assert load_records([path])[0].ground_truth is None


BAD = {
    "missing_prompt": ({k: v for k, v in GOOD.items() if k != "prompt"}, "missing field 'prompt'"),
    "empty_prompt": ({**GOOD, "prompt": []}, "field 'prompt' must be a non-empty list"),
    "bad_role": ({**GOOD, "prompt": [{"role": "robot", "content": "x"}]}, "field 'prompt[0]'"),
    "content_not_str": ({**GOOD, "prompt": [{"role": "user", "content": 5}]}, "field 'prompt[0]'"),
    "missing_reward_model": ({k: v for k, v in GOOD.items() if k != "reward_model"}, "reward_model.ground_truth"),
    "missing_ground_truth": ({**GOOD, "reward_model": {"style": "rule"}}, "reward_model.ground_truth"),
    "ground_truth_list": ({**GOOD, "reward_model": {"ground_truth": [1, 2]}}, "'reward_model.ground_truth' must be"),
    "missing_data_source": ({k: v for k, v in GOOD.items() if k != "data_source"}, "missing field 'data_source'"),
    "extra_info_not_object": ({**GOOD, "extra_info": [1]}, "field 'extra_info' must be an object"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_row_names_file_row_and_field(tmp_path, case):
    row, expected = BAD[case]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        load_records([path])
    assert f"{path}: row 1" in str(err.value) and expected in str(err.value), str(err.value)


def test_bad_json_line_and_bad_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_rows(path)
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "missing.parquet")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_rows(tmp_path / "d.csv")


def test_custom_prompt_key(tmp_path):
    path = write_rows([{**{k: v for k, v in GOOD.items() if k != "prompt"}, "question": "q?"}], tmp_path / "d.jsonl")
    assert load_records([path], prompt_key="question")[0].prompt == "q?"


@pytest.mark.parametrize("content", [b"", b"\n\n"], ids=["zero_bytes", "blank_lines"])
def test_empty_jsonl_file_is_named(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: the file holds no rows"):
        load_records([path])


@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet"], ids=["zero_bytes", "garbage"])
def test_unreadable_parquet_is_named_not_an_arrow_traceback(tmp_path, content):
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: not a readable parquet file"):
        read_rows(path)


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=f"{path}: line 2 is not UTF-8 text"):
        read_rows(path)
