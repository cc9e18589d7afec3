"""scripts/preprocess_math.py and its logic: GSM8K-style question/answer JSONL -> verl parquet rows."""

import importlib.util
import json
from pathlib import Path

import pytest

from ttrl_megatron.data import DataError, load_records
from ttrl_megatron.data.math_rows import DEFAULT_INSTRUCTION, final_answer, qa_rows

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "preprocess_math.py"
GSM = [{"question": "Tom has 3 apples and buys 1,200 more. How many?", "answer": "3 + 1200 = 1203\n#### 1,203"},
       {"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}]


def test_final_answer():
    assert final_answer("work\n#### 1,203") == "1203" and final_answer("no marker") is None
    assert final_answer(" \\frac{1}{2} ", answer_regex=None) == "\\frac{1}{2}"


def test_qa_rows_format():
    rows = qa_rows(GSM)
    assert rows[0]["prompt"] == [{"role": "user", "content": GSM[0]["question"] + " " + DEFAULT_INSTRUCTION}]
    assert rows[0]["reward_model"] == {"ground_truth": "1203", "style": "rule"}
    assert rows[1]["extra_info"]["index"] == 1 and rows[1]["data_source"] == "gsm8k"
    assert qa_rows(GSM, instruction="")[1]["prompt"][0]["content"] == "What is 2+2?"


def test_qa_rows_errors_name_row_and_field():
    with pytest.raises(DataError, match="x.jsonl: row 1: missing field 'question'"):
        qa_rows([GSM[0], {"answer": "#### 1"}], where="x.jsonl")
    with pytest.raises(DataError, match="row 0: field 'answer' does not match"):
        qa_rows([{"question": "q", "answer": "4"}])


def test_script_end_to_end(tmp_path):
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in GSM))
    spec = importlib.util.spec_from_file_location("preprocess_math", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "out" / "test.parquet"
    assert mod.main(["--input", str(src), "--output", str(out), "--data-source", "gsm8k_small"]) == 0
    records = load_records([out])
    assert [r.ground_truth for r in records] == ["1203", "4"] and records[0].data_source == "gsm8k_small"
    aime = tmp_path / "aime.jsonl"
    aime.write_text(json.dumps({"problem": "Find x.", "solution": "\\frac{1}{2}"}) + "\n")
    out2 = tmp_path / "aime.jsonl.out.jsonl"
    mod.main(["--input", str(aime), "--output", str(out2), "--question-key", "problem", "--answer-key", "solution",
              "--answer-regex", "none", "--instruction", ""])
    assert load_records([out2])[0].ground_truth == "\\frac{1}{2}"
