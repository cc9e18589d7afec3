"""Prompt rows in verl's format: reading/writing parquet and JSONL, and checking every row.

A row is a dict: `prompt` (list of chat messages {role, content}, or a plain string), `reward_model` {ground_truth,
style}, `data_source` (str), `extra_info` (dict, optional; `index` defaults to the row number). A malformed row raises
DataError naming the file, the 0-based row number and the field. Imports only stdlib + pyarrow (no torch, no hydra).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

Messages = list[dict[str, str]]
CHAT_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, row and field."""


@dataclass
class PromptRecord:
    """One checked prompt row."""

    prompt: Union[Messages, str]  # chat messages, or a plain string
    ground_truth: Optional[str]  # reward_model.ground_truth as a string; None = unlabeled
    data_source: str  # dataset name (metrics are grouped by it)
    index: Any  # extra_info.index, else the row number in its file
    style: str = "rule"  # reward_model.style
    extra_info: dict = field(default_factory=dict)  # the row's extra_info, as read
    where: str = ""  # "<file>: row <n>", for error messages downstream


def read_rows(path: Union[str, Path]) -> list[dict]:
    """All rows of one .parquet / .jsonl / .json(l) file as dicts (nested structs become dicts/lists)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file does not exist")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:  # truncated, empty or not parquet at all
            raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for i, raw in enumerate(path.read_bytes().splitlines()):  # bytes: exact line numbers for decode errors
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {i + 1} is not UTF-8 text ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
        return rows
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .jsonl")


def write_rows(rows: list[dict], path: Union[str, Path]) -> Path:
    """Write verl-format rows to .parquet or .jsonl (by suffix), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .parquet or .jsonl")
    return path


def _check_prompt(prompt, where: str, key: str) -> Union[Messages, str]:
    if isinstance(prompt, str):
        if not prompt:
            raise DataError(f"{where}: field '{key}' is an empty string")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of chat messages or a string, "
                        f"got {type(prompt).__name__}")
    for j, msg in enumerate(prompt):
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: field '{key}[{j}]' must be {{role: {'|'.join(CHAT_ROLES)}, content: str}}, "
                            f"got {msg!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def parse_row(row: dict, where: str, row_number: int, prompt_key: str = "prompt") -> PromptRecord:
    """Check one row and return its PromptRecord. `where` is the file name used in error messages."""
    where = f"{where}: row {row_number}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    if prompt_key not in row:
        raise DataError(f"{where}: missing field '{prompt_key}'")
    prompt = _check_prompt(row[prompt_key], where, prompt_key)
    reward = row.get("reward_model")
    if not isinstance(reward, dict) or "ground_truth" not in reward:
        raise DataError(f"{where}: missing field 'reward_model.ground_truth' (use null for unlabeled prompts)")
    gt = reward["ground_truth"]
    if gt is not None and not isinstance(gt, (str, int, float)):
        raise DataError(f"{where}: field 'reward_model.ground_truth' must be a string or number, "
                        f"got {type(gt).__name__}")
    source = row.get("data_source")
    if not isinstance(source, str) or not source:
        raise DataError(f"{where}: missing field 'data_source' (a non-empty string naming the dataset)")
    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise DataError(f"{where}: field 'extra_info' must be an object, got {type(extra).__name__}")
    index = extra.get("index")
    return PromptRecord(prompt=prompt, ground_truth=None if gt is None else str(gt), data_source=source,
                        index=row_number if index is None else index, style=str(reward.get("style") or "rule"),
                        extra_info=dict(extra), where=where)


def load_records(paths: list[Union[str, Path]], prompt_key: str = "prompt") -> list[PromptRecord]:
    """Read and check every row of every file, in order."""
    records = []
    for path in paths:
        rows = read_rows(path)
        if not rows:
            raise DataError(f"{path}: the file holds no rows (empty); fill it or leave it out of data.*_files")
        for i, row in enumerate(rows):
            records.append(parse_row(row, str(path), i, prompt_key))
    return records
