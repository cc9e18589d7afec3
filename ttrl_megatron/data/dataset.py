"""Prompt dataset: verl-format rows -> rendered, tokenized, left-padded prompt tensors. Torch only (no distributed).

Every row is checked and tokenized once at construction. Prompts longer than `data.max_prompt_length` are dropped
(`filter_overlong_prompts`, count logged) or else handled by `data.truncation` (error | left | right). Items are
left-padded to exactly max_prompt_length, as verl does, so a prompt batch is one `[B, P]` tensor whose last column is
the last prompt token; `raw_prompt_ids` keeps the unpadded ids for the rollout engine.
"""

import logging
from pathlib import Path
from typing import Union

import torch

from ttrl_megatron.config import DataConfig

from .records import DataError, PromptRecord, load_records
from .templates import render_prompt

log = logging.getLogger(__name__)

TENSOR_KEYS = ("input_ids", "attention_mask", "position_ids")


def left_pad(ids: list[int], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each `[length]` long: pads in front, positions 0.. over real tokens."""
    pad = length - len(ids)
    input_ids = torch.tensor([pad_id] * pad + list(ids), dtype=torch.long)
    mask = torch.tensor([0] * pad + [1] * len(ids), dtype=torch.long)
    position_ids = torch.clamp(torch.cumsum(mask, dim=0) - 1, min=0)
    return input_ids, mask, position_ids


class PromptDataset(torch.utils.data.Dataset):
    """Tokenized prompts of one or more parquet/jsonl files. `tokenizer` is an HF tokenizer (see tokenizer.py)."""

    def __init__(self, files: list[Union[str, Path]], tokenizer, cfg: DataConfig):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; load it with ttrl_megatron.data.load_tokenizer")
        self.tokenizer, self.cfg = tokenizer, cfg
        self.records: list[PromptRecord] = []
        self.prompt_ids: list[list[int]] = []
        self.num_filtered = 0  # prompts dropped by filter_overlong_prompts
        for record in load_records(list(files), cfg.prompt_key):
            ids = self._tokenize(record)
            if ids is not None:
                self.records.append(record)
                self.prompt_ids.append(ids)
        if self.num_filtered:
            log.warning("filter_overlong_prompts: dropped %d of %d prompts longer than data.max_prompt_length=%d",
                        self.num_filtered, self.num_filtered + len(self.records), cfg.max_prompt_length)

    def _tokenize(self, record: PromptRecord) -> list[int] | None:
        text, add_special = render_prompt(record.prompt, self.tokenizer, self.cfg.prompt_template)
        ids = list(self.tokenizer.encode(text, add_special_tokens=add_special))
        limit = self.cfg.max_prompt_length
        if len(ids) <= limit:
            return ids
        if self.cfg.filter_overlong_prompts:
            self.num_filtered += 1
            return None
        if self.cfg.truncation == "left":
            return ids[-limit:]
        if self.cfg.truncation == "right":
            return ids[:limit]
        raise DataError(f"{record.where}: prompt is {len(ids)} tokens, longer than data.max_prompt_length={limit}; "
                        f"raise it, set data.filter_overlong_prompts=True, or data.truncation=left|right")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        """One prompt: `input_ids`/`attention_mask`/`position_ids` `[P]` (P = max_prompt_length, left-padded),
        `raw_prompt_ids` (unpadded list), `raw_prompt`, `ground_truth`, `data_source`, `index`, `extra_info`,
        `reward_model` ({ground_truth, style}, verl's row field)."""
        record, ids = self.records[i], self.prompt_ids[i]
        input_ids, mask, pos = left_pad(ids, self.cfg.max_prompt_length, self.tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": pos, "raw_prompt_ids": list(ids),
                "raw_prompt": record.prompt, "ground_truth": record.ground_truth, "data_source": record.data_source,
                "index": record.index, "extra_info": record.extra_info,
                "reward_model": {"ground_truth": record.ground_truth, "style": record.style}}


def collate_prompts(items: list[dict]) -> dict:
    """Stack items: tensors -> `[B, P]`; every other key -> a list of length B (per-row python objects)."""
    if not items:
        raise ValueError("collate_prompts needs at least one item")
    batch = {k: torch.stack([it[k] for it in items]) for k in TENSOR_KEYS}
    for key in items[0]:
        if key not in TENSOR_KEYS:
            batch[key] = [it[key] for it in items]
    return batch
