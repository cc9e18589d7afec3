"""HF <-> Megatron checkpoint converters (plain single-process commands; see each module's docstring):

    python -m converters.hf_to_megatron --hf-dir DIR --out DIR [--tp N --pp M]
    python -m converters.megatron_to_hf --megatron-dir DIR --out DIR

Also usable as functions: `convert_hf_to_megatron(hf_dir, out_dir)`, `convert_megatron_to_hf(megatron_dir, out_dir)`.
"""

from converters.hf_to_megatron import convert_hf_to_megatron
from converters.megatron_to_hf import convert_megatron_to_hf

__all__ = ["convert_hf_to_megatron", "convert_megatron_to_hf"]
