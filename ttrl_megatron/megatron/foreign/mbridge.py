"""Megatron-Bridge / NeMo-RL ``iter_N/`` checkpoints: read the model config, and write ours in that layout.

Layout (reference/nemo-formats.md §3): ``<root>/latest_checkpointed_iteration.txt`` (Megatron-LM tracker) and
``<root>/iter_{N:07d}/`` holding the torch_dist files (``__*_*.distcp``, ``.metadata``, ``metadata.json``,
``common.pt``), ``run_config.yaml`` (``ConfigContainer.to_yaml``: ``model:`` = a GPT provider dataclass of
TransformerConfig fields, with ``_target_`` / ``_call_`` markers) and ``tokenizer/``. Model keys have no prefix.

``export_mbridge(our_ckpt_dir, out_dir)`` turns a ttrl-megatron checkpoint (megatron/checkpoint.py: ``weights/``
with prefix-free, stacked-layer keys, which is already the Megatron-Bridge key layout) into that layout: weight
files are hard-linked (copied across file systems), ``run_config.yaml`` gets a ``model:`` section built from our
architecture, ``tokenizer/`` gets our ``hf/`` tokenizer files. Verified here: the result is detected as ``mbridge``
and loads back bit-exactly through our loader at any TP. NOT verified: loading it with Megatron-Bridge / NeMo-RL
themselves (they cannot be installed on this CPU machine); see docs/coming-from-nemo.md.

Pure python + PyYAML: no torch, no megatron.core.
"""
from __future__ import annotations

import json
import os
import shutil

import yaml

from ttrl_megatron.megatron.foreign.detect import RUN_CONFIG, TRACKER, CheckpointFormat, ForeignCheckpointError
from ttrl_megatron.megatron.foreign.raw import RawConfig
from ttrl_megatron.megatron.foreign.yaml_config import UnresolvedTarget, load_yaml, section

# Generic Megatron-Bridge GPT provider; its fields are TransformerConfig's plus the GPT extras written below.
PROVIDER_TARGET = "megatron.bridge.models.gpt_provider.GPTModelProvider"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def read_mbridge_config(fmt: CheckpointFormat) -> RawConfig:
    """The ``model:`` section of ``run_config.yaml`` (targets resolved through the allow-list)."""
    fields = section(load_yaml(fmt.config_file), "model", fmt.config_file)
    target = fields.pop("_target_", None)
    dtype = fields.get("params_dtype")
    return RawConfig(fields=fields, source=fmt.config_file,
                     target=target.target if isinstance(target, UnresolvedTarget) else None,
                     params_dtype=dtype if isinstance(dtype, str) else None)


def provider_section(arch: dict, params_dtype: str) -> dict:
    """Our stored architecture (``ttrl_checkpoint.json`` ``arch``) as a Megatron-Bridge ``model:`` section."""
    model = {
        "_target_": PROVIDER_TARGET,
        "num_layers": arch["num_layers"], "hidden_size": arch["hidden_size"],
        "ffn_hidden_size": arch["intermediate_size"], "num_attention_heads": arch["num_attention_heads"],
        "num_query_groups": arch["num_query_groups"], "kv_channels": arch["head_dim"],
        "layernorm_epsilon": arch["rms_norm_eps"], "normalization": "RMSNorm", "gated_linear_unit": True,
        "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
        "add_bias_linear": False, "add_qkv_bias": arch["add_qkv_bias"],
        "attention_dropout": arch.get("attention_dropout", 0.0), "hidden_dropout": 0.0,
        "init_method_std": arch.get("initializer_range", 0.02), "position_embedding_type": "rope",
        "rotary_base": arch["rope_theta"], "rotary_percent": 1.0, "vocab_size": arch["vocab_size"],
        "seq_length": arch["max_position_embeddings"],
        "make_vocab_size_divisible_by": arch.get("make_vocab_size_divisible_by", 128),
        "share_embeddings_and_output_weights": arch["tie_word_embeddings"],
        "params_dtype": {"_target_": f"torch.{params_dtype}", "_call_": False},
        "bf16": params_dtype == "bfloat16", "fp16": params_dtype == "float16",
    }
    if arch.get("rope_scaling_factor") is not None:
        model.update(rope_scaling=True, rope_scaling_factor=arch["rope_scaling_factor"])
    return model


def export_mbridge(our_ckpt_dir: str, out_dir: str, iteration: int = 0) -> str:
    """Write ``out_dir/iter_{iteration:07d}/`` + tracker from our checkpoint; returns the iteration folder."""
    meta_path = os.path.join(our_ckpt_dir, "ttrl_checkpoint.json")
    weights = os.path.join(our_ckpt_dir, "weights")
    if not os.path.isfile(meta_path) or not os.path.isdir(weights):
        raise ForeignCheckpointError(f"{our_ckpt_dir}: not a ttrl-megatron checkpoint (needs ttrl_checkpoint.json "
                                     "and weights/)")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("value_head"):
        raise ForeignCheckpointError(f"{our_ckpt_dir} holds a value model (critic); only policies can be exported")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output folder")
    it_dir = os.path.join(out_dir, f"iter_{iteration:07d}")
    os.makedirs(it_dir)
    for name in os.listdir(weights):
        _link_or_copy(os.path.join(weights, name), os.path.join(it_dir, name))
    run_config = {"model": provider_section(meta["arch"], meta["params_dtype"]),
                  "checkpoint": {"save": os.path.abspath(out_dir), "ckpt_format": "torch_dist"}}
    with open(os.path.join(it_dir, RUN_CONFIG), "w", encoding="utf-8") as f:
        yaml.safe_dump(run_config, f, sort_keys=False)
    hf = os.path.join(our_ckpt_dir, "hf")
    toks = [n for n in _TOKENIZER_FILES if os.path.isfile(os.path.join(hf, n))]
    if toks:
        os.makedirs(os.path.join(it_dir, "tokenizer"))
        for n in toks:
            shutil.copy2(os.path.join(hf, n), os.path.join(it_dir, "tokenizer", n))
    with open(os.path.join(out_dir, TRACKER), "w", encoding="utf-8") as f:
        f.write(str(iteration))
    return it_dir


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv=None) -> int:
    """``python -m ttrl_megatron.megatron.foreign.mbridge --ckpt .../global_step_N/actor --out DIR``."""
    import argparse
    import re

    p = argparse.ArgumentParser(description="Write a ttrl-megatron checkpoint as a Megatron-Bridge iter_N/ folder")
    p.add_argument("--ckpt", required=True, help="our checkpoint (converter output or trainer global_step_N/actor)")
    p.add_argument("--out", required=True, help="new Megatron-Bridge checkpoint root")
    p.add_argument("--iteration", type=int, default=None, help="N of iter_N (default: the global_step of --ckpt)")
    args = p.parse_args(argv)
    step = re.search(r"global_step_(\d+)", os.path.abspath(args.ckpt))
    iteration = args.iteration if args.iteration is not None else int(step.group(1)) if step else 0
    print(f"wrote {export_mbridge(args.ckpt, args.out, iteration)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
