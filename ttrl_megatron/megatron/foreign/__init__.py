"""Checkpoints written by other Megatron stacks (NeMo-2, Megatron-Bridge / NeMo-RL, Megatron-LM; NeMo-1 detected
only), read with megatron-core + PyYAML alone: no nemo-toolkit, no megatron.bridge, and no import of any class a
checkpoint config names. See docs/coming-from-nemo.md and reference/nemo-formats.md.

- ``detect``: which format a path holds (``detect_format``, ``resolve_format``) and the clear refusals.
- ``yaml_config`` / ``nemo2`` / ``mbridge`` / ``megatron_lm``: each format's config as plain fields.
- ``arch_map``: fields -> ``ModelArchConfig`` + ``ConfigReport``.
- ``loader``: dist_checkpointing load into a GPTModel at any TP/PP (key prefix, key style, vocab padding).
- ``api``: ``read_foreign``, ``build_foreign_model``, ``load_initial_model``; ``mbridge.export_mbridge`` writes ours
  as a Megatron-Bridge ``iter_N/``.

Importing this package is cheap (pure python); ``api`` and ``loader`` import megatron.core.
"""
from ttrl_megatron.megatron.foreign.detect import (FORMATS, LOAD_FORMATS, CheckpointFormat, ForeignCheckpointError,
                                                   detect_format, resolve_format)

__all__ = ["FORMATS", "LOAD_FORMATS", "CheckpointFormat", "ForeignCheckpointError", "detect_format", "resolve_format"]
