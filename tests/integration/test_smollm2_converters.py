"""The real SmolLM2-135M-Instruct through the converters (marked slow; needs `scripts/fetch_smollm2.sh` first).

HF (bf16 files) -> Megatron fp32 dist-checkpoint -> loaded at TP=3 and at PP=3 in one spawned 3-rank group ->
logits on real chat prompts vs transformers fp32; and Megatron -> HF (bf16) is bit-exact with the fetched files.
SmolLM2 has 9 attention heads in 3 KV groups, so TP=2 cannot split it (Megatron needs heads and groups divisible by
TP); TP=3 is the smallest tensor-parallel layout it admits.
"""

import os

import pytest
import torch

from tests.dist.harness import run_distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOLLM2 = os.path.join(ROOT, "models", "smollm2-135m-instruct")
PROMPTS = ["What is the capital of France?", "Compute 12 + 35 and explain each step.",
           "Write one sentence about the ocean."]
LAYOUTS = [(3, 1), (1, 3)]
TOLERANCE = 1e-3  # fp32, 30 layers, logits up to ~30 in magnitude

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isfile(os.path.join(SMOLLM2, "model.safetensors")),
                       reason=f"SmolLM2 weights not fetched into {SMOLLM2}: run scripts/fetch_smollm2.sh"),
]


def _prompt_ids():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    out = []
    for p in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt")
        out.append(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return out


def _megatron_logits(ckpt, prompts):
    """In each rank: load the checkpoint at every layout; max |logit diff| per layout (last PP stage only)."""
    from megatron.core import parallel_state as ps

    from tests.dist.test_converters import _stage_logits
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.checkpoint import checkpoint_arch, load_model_checkpoint
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import init_distributed

    out = {}
    for tp, pp in LAYOUTS:
        init_distributed(ParallelLayout(tp=tp, pp=pp, dp=1), seed=0)
        model = build_gpt_model(checkpoint_arch(ckpt)).eval()
        load_model_checkpoint(model, ckpt)
        diffs = []
        for ids, ref in prompts:
            logits = _stage_logits(model, ids)
            if logits is not None:
                diffs.append((logits - ref).abs().max().item())
        out[(tp, pp)] = max(diffs) if diffs else None
        del model
        ps.destroy_model_parallel()
    return out


def test_smollm2_converts_loads_sharded_and_matches_transformers(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from converters import convert_hf_to_megatron, convert_megatron_to_hf

    ckpt = str(tmp_path / "mcore")
    convert_hf_to_megatron(SMOLLM2, ckpt, dtype=torch.float32, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    with torch.no_grad():
        prompts = [(ids, hf(input_ids=ids).logits) for ids in _prompt_ids()]
    del hf
    per_rank = run_distributed(_megatron_logits, 3, ckpt, prompts, timeout_s=600)
    worst = {layout: max(r[layout] for r in per_rank if r[layout] is not None) for layout in LAYOUTS}
    print(f"SmolLM2-135M max |logit diff| vs transformers (fp32): {worst}")
    assert all(d < TOLERANCE for d in worst.values()), worst

    back = str(tmp_path / "hf_back")
    convert_megatron_to_hf(ckpt, back, dtype=torch.bfloat16, progress=False)
    want, got = load_file(os.path.join(SMOLLM2, "model.safetensors")), load_file(os.path.join(back,
                                                                                            "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
