"""``RawConfig``: a checkpoint's model config as plain TransformerConfig-named fields, before mapping.

Pure python (dataclasses only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class RawConfig:
    """fields: TransformerConfig / GPT-provider field names -> plain values; source: the file they came from;
    target: dotted name of the config class the file names (never imported); params_dtype: 'float32' | 'bfloat16' |
    'float16' when stated; hf_vocab_size: the unpadded vocabulary when the file stores only the padded one; notes:
    facts worth reporting (e.g. args that were ignored)."""

    fields: dict[str, Any]
    source: str
    target: Optional[str] = None
    params_dtype: Optional[str] = None
    hf_vocab_size: Optional[int] = None
    notes: tuple[str, ...] = field(default=())
