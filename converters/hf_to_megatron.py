"""Convert an HF Qwen2/Llama checkpoint (safetensors) into a Megatron distributed checkpoint.

    python -m converters.hf_to_megatron --hf-dir models/smollm2-135m-instruct --out checkpoints/smollm2-mcore

The output (megatron/checkpoint.py layout: `weights/` torch_dist dist-checkpoint + `ttrl_checkpoint.json` + `hf/`
config and tokenizer copy) loads at any TP/PP layout that divides the model, whatever `--tp/--pp` wrote it.
TP=PP=1 (default) runs in this process on a private 1-process gloo group; `--tp/--pp` > 1 spawns that many gloo
ranks (or uses the ranks of a running `torchrun`), each holding only its shard: useful when one copy of the model
does not fit one process. Tensors stream one at a time from the safetensors files (`safe_open`), so peak memory is
about one copy of the (sharded) model. Mismatches (unsupported config key, missing/extra/mis-shaped tensor) stop
before anything is written, with an error naming it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

DTYPE_CHOICES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_hf_to_megatron(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, dtype: torch.dtype | None = None,
                           progress: bool = True) -> None:
    """Write `out_dir` (must be absent or empty) from the HF model folder `hf_dir`.

    dtype: parameter dtype of the Megatron model (default: the dtype stored in the HF files)."""
    from converters import _runtime
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import arch_facts, hf_checkpoint_dtype, validate_hf_checkpoint

    arch = ModelArchConfig.from_hf(hf_dir)  # ArchConfigError naming any unsupported key
    validate_hf_checkpoint(hf_dir, arch_facts(arch, arch.padded_vocab_size(tp)))  # names/shapes, before any work
    _check_empty(out_dir)
    dtype = dtype or hf_checkpoint_dtype(hf_dir)
    if tp * pp > 1 and not _runtime.group_is_running():
        _runtime.spawn_ranks(_convert_collectively, tp * pp, hf_dir, out_dir, tp, pp, dtype, progress)
    else:
        _convert_collectively(hf_dir, out_dir, tp, pp, dtype, progress)


def _convert_collectively(hf_dir: str, out_dir: str, tp: int, pp: int, dtype: torch.dtype, progress: bool) -> None:
    """Runs on every rank: build this rank's model stage, stream the HF weights into it, save the dist-checkpoint."""
    import torch.distributed as dist

    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.checkpoint import save_model_checkpoint
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    arch = ModelArchConfig.from_hf(hf_dir)
    with megatron_group(tp, pp):
        model = build_gpt_model(arch, params_dtype=dtype)
        load_hf_weights(model, hf_dir, progress=progress and dist.get_rank() == 0)
        save_model_checkpoint(model, out_dir, hf_source_dir=hf_dir)


def _check_empty(out_dir: str) -> None:
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"--out {out_dir} exists and is not an empty directory; choose a new output directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-dir", required=True, help="HF model folder (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="new (or empty) output folder for the Megatron checkpoint")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel ranks used to write (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline parallel ranks used to write (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_CHOICES), default=None,
                        help="parameter dtype (default: the dtype of the HF files)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    convert_hf_to_megatron(args.hf_dir, args.out, tp=args.tp, pp=args.pp,
                           dtype=DTYPE_CHOICES[args.dtype] if args.dtype else None, progress=not args.no_progress)
    print(f"wrote Megatron checkpoint to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
