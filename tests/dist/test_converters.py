"""HF <-> Megatron converters on tiny random Qwen2 (tied, untied) and Llama models, on CPU with gloo.

- HF -> Megatron -> HF is bit-exact (functions, `python -m converters.hf_to_megatron` in a subprocess, the
  megatron_to_hf CLI entry with several output shards), and transformers loads the result with the same logits.
- One converted checkpoint loads at (TP, PP) = (1,1), (2,1), (1,2) without reconversion: Megatron logits equal
  transformers' within 1e-4 (fp32) and the weights streamed back out (TP gather + PP broadcast) are bit-exact. A
  checkpoint written with --tp 2 (vocab padded to 512 instead of 384) loads at every layout too.
All layouts run in ONE spawned 2-rank group (each spawn costs seconds).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.dist.harness import run_distributed
from tests.dist.mcore_fixtures import hf_model, llama_config, qwen2_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYOUTS = [(1, 1), (2, 1), (1, 2)]
TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, head_dim=32)


def _make_hf(path, cfg):
    model = hf_model(cfg)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> {hf, mg}: HF folders and their Megatron conversions (Llama through the CLI)."""
    from converters import convert_hf_to_megatron

    root = tmp_path_factory.mktemp("converters")
    cfgs = {"qwen2_tied": qwen2_config(tied=True, **TINY, vocab_size=300),
            "qwen2_untied": qwen2_config(tied=False, **TINY, vocab_size=256),
            "llama": llama_config(tied=False, **TINY, vocab_size=320)}
    out = {}
    for name, cfg in cfgs.items():
        hf, mg = str(root / f"{name}_hf"), str(root / f"{name}_mg")
        _make_hf(hf, cfg)
        if name == "llama":
            proc = subprocess.run([sys.executable, "-m", "converters.hf_to_megatron", "--hf-dir", hf, "--out", mg],
                                  cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "HF -> Megatron" in proc.stderr  # the tqdm bar
        else:
            convert_hf_to_megatron(hf, mg, progress=False)
        out[name] = {"hf": hf, "mg": mg}
    return out


def _hf_logits(hf_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip_is_bit_exact_and_loads_in_transformers(tiny, tmp_path):
    from converters import convert_megatron_to_hf, megatron_to_hf

    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    for name, d in tiny.items():
        back = str(tmp_path / name)
        if name == "qwen2_untied":  # the CLI entry point, with a shard limit small enough to force several files
            assert megatron_to_hf.main(["--megatron-dir", d["mg"], "--out", back, "--max-shard-mb", "1"]) == 0
            assert os.path.isfile(os.path.join(back, "model.safetensors.index.json"))
        else:
            convert_megatron_to_hf(d["mg"], back, progress=False)
        want, got = _read_all(d["hf"]), _read_all(back)
        assert sorted(got) == sorted(want), name
        for key, tensor in want.items():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), f"{name}: {key}"
        assert ("lm_head.weight" in got) == (name != "qwen2_tied")  # tied: only embed_tokens is exported
        assert json.load(open(os.path.join(back, "config.json")))["vocab_size"] == want[
            "model.embed_tokens.weight"].shape[0]
        assert torch.equal(_hf_logits(back, ids), _hf_logits(d["hf"], ids)), name


def _read_all(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def _stage_logits(model, ids):
    """Full-vocab logits [B, T, V] on the last PP stage (None elsewhere); PP hands hidden states over with p2p."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from ttrl_megatron.megatron.model import left_padded_inputs

    pos, mask = left_padded_inputs(torch.ones_like(ids))
    group, rank = ps.get_pipeline_model_parallel_group(), ps.get_pipeline_model_parallel_rank()
    if not ps.is_pipeline_first_stage():
        hidden = torch.empty(ids.shape[1], ids.shape[0], model.config.hidden_size)
        dist.recv(hidden, src=dist.get_global_rank(group, rank - 1))
        model.set_input_tensor(hidden)
    with torch.no_grad():
        out = model(ids, pos, mask)
    if not ps.is_pipeline_last_stage():
        dist.send(out.contiguous(), dst=dist.get_global_rank(group, rank + 1))
        return None
    return tensor_parallel.gather_from_tensor_model_parallel_region(out)[..., : model.ttrl_arch.vocab_size]


def _check_layouts(cases, ids, tp2_case):
    """In each rank: (optionally) write a checkpoint with --tp 2, then load every checkpoint at every layout.

    Returns {(case, layout): (max |logit diff| or None, list of weights that differ from the HF files)}."""
    from megatron.core import parallel_state as ps

    from converters import convert_hf_to_megatron
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.checkpoint import checkpoint_arch, load_model_checkpoint
    from ttrl_megatron.megatron.hf_io import iter_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import init_distributed

    hf_dir, out_dir = tp2_case
    convert_hf_to_megatron(hf_dir, out_dir, tp=2, pp=1, progress=False)  # collective on the 2 running ranks
    results = {}
    for name, (mg_dir, hf_dir, ref) in cases.items():
        hf = _read_all(hf_dir)
        for tp, pp in LAYOUTS:
            init_distributed(ParallelLayout(tp=tp, pp=pp, dp=2 // (tp * pp)), seed=123)
            model = build_gpt_model(checkpoint_arch(mg_dir))
            load_model_checkpoint(model, mg_dir)
            logits = _stage_logits(model, ids)
            diff = None if logits is None else (logits - ref).abs().max().item()
            streamed = dict(iter_hf_weights(model))
            wrong = sorted(set(streamed) ^ set(hf)) + [k for k in hf if k in streamed
                                                       and not torch.equal(streamed[k], hf[k])]
            results[(name, (tp, pp))] = (diff, wrong)
            ps.destroy_model_parallel()
    return results


def test_one_checkpoint_loads_at_every_layout_with_transformers_logits(tiny, tmp_path):
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    cases = {name: (d["mg"], d["hf"], _hf_logits(d["hf"], ids)) for name, d in tiny.items()}
    tp2_dir = str(tmp_path / "qwen2_tied_written_at_tp2")
    cases["qwen2_tied_from_tp2"] = (tp2_dir, tiny["qwen2_tied"]["hf"], cases["qwen2_tied"][2])
    per_rank = run_distributed(_check_layouts, 2, cases, ids, (tiny["qwen2_tied"]["hf"], tp2_dir), timeout_s=300)
    meta = json.load(open(os.path.join(tp2_dir, "ttrl_checkpoint.json")))
    assert meta["saved_layout"] == {"tp": 2, "pp": 1} and meta["padded_vocab_size"] == 512
    for key in per_rank[0]:
        diffs = [r[key][0] for r in per_rank if r[key][0] is not None]
        assert diffs and max(diffs) < 1e-4, (key, diffs)
        for r in per_rank:
            assert r[key][1] == [], (key, r[key][1])
