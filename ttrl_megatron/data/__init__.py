"""Data pipeline: verl-format prompt files -> tokenized, left-padded prompt batches; the demo's arithmetic task.

May import torch (dataset.py), never torch.distributed, megatron, vllm or hydra. Public API:
- records:   PromptRecord, DataError, read_rows, write_rows, parse_row, load_records
- templates: render_prompt, render_plain, has_chat_template
- tokenizer: load_tokenizer, build_char_tokenizer, char_vocab, SPECIAL_TOKENS, ARITHMETIC_ALPHABET
- dataset:   PromptDataset, collate_prompts, left_pad
- sampler:   ResumableBatchSampler;  loader: PromptLoader, build_train_loader, build_val_loader
- arithmetic (demo task) and math_rows (question/answer -> rows) are imported as submodules.
"""

from .dataset import PromptDataset, collate_prompts, left_pad
from .loader import PromptLoader, build_train_loader, build_val_loader
from .records import DataError, PromptRecord, load_records, parse_row, read_rows, write_rows
from .sampler import ResumableBatchSampler
from .templates import has_chat_template, render_plain, render_prompt
from .tokenizer import ARITHMETIC_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer, char_vocab, load_tokenizer

__all__ = [
    "PromptDataset", "collate_prompts", "left_pad", "PromptLoader", "build_train_loader", "build_val_loader",
    "DataError", "PromptRecord", "load_records", "parse_row", "read_rows", "write_rows", "ResumableBatchSampler",
    "has_chat_template", "render_plain", "render_prompt", "ARITHMETIC_ALPHABET", "SPECIAL_TOKENS",
    "build_char_tokenizer", "char_vocab", "load_tokenizer",
]
