"""Fixtures for norm-mapping tests (#13 item 13): non-trivial copies of the NeMo-made fixture, and a TE-named view.

Why: the NeMo-made fixture (../shared/fixtures/nemo2-qwen2-tied) stores 1 for every norm weight and 0 for every
q/k/v bias (HF's initialisation), so a load or export path that drops, swaps or misplaces a norm or a bias still
reproduces it exactly. ``perturbed_fixture`` writes a copy where every tensor is different (norms 1 + noise,
different per layer and per norm; biases non-zero; weights perturbed), as an HF folder AND as a NeMo-2 checkpoint.

The NeMo-2 copy is laid out by ``nemo_tensors_from_hf`` below, written here from megatron-core's conventions (NOT
with bridge/names.py, so a mapping bug there cannot cancel itself out), and checked against NeMo's own import: applied
to the original HF fixture it reproduces every tensor NeMo wrote, bit for bit (``check_layout_against_nemo``).

``TENamedView``: Transformer Engine cannot be installed here, so TE-spec models cannot be built; with TE the two
norms are parameters of the fused linears (``self_attention.linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``) instead of modules of their own (``input_layernorm``, ``pre_mlp_layernorm``).
The view registers the SAME parameter objects of a local-spec model under the TE spec's names (the names
megatron's TE layers use), so the HF load/export code sees exactly the names of a TE model, and the local model
underneath still computes logits with whatever landed in the parameters. (The real TE spec: tests/gpu.)
"""
from __future__ import annotations

import json
import os
import shutil

import torch

FIXTURE_LAYERS = 2
# local-spec parameter suffix -> TE-spec parameter suffix (megatron-core TE spec: TELayerNormColumnParallelLinear)
LOCAL_TO_TE = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
               "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def to_te_name(local_name: str) -> str:
    for local, te in LOCAL_TO_TE.items():
        if local_name.endswith("." + local):
            return local_name[: -len(local)] + te
    return local_name


class TENamedView(torch.nn.Module):
    """A local-spec GPTModel's parameters under TE spec names (module doc); carries the model's ttrl attributes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name, param in model.named_parameters():
            *path, leaf = to_te_name(name).split(".")
            module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, param)
        self.ttrl_arch = model.ttrl_arch
        self.vocab_size = model.vocab_size
        self.ttrl_value_head = getattr(model, "ttrl_value_head", False)


def expected_norms(hf: dict, num_layers: int, offset: int = 0, naming: str = "local") -> dict:
    """Model parameter name -> the HF norm tensor it must hold (local layer i = global layer offset + i), in the
    local or TE naming; written from the HF / megatron conventions, not from bridge/names.py."""
    names = {"local": ("input_layernorm.weight", "pre_mlp_layernorm.weight"),
             "te": (LOCAL_TO_TE["input_layernorm.weight"], LOCAL_TO_TE["pre_mlp_layernorm.weight"])}[naming]
    out = {"decoder.final_layernorm.weight": hf["model.norm.weight"]} if offset + num_layers == FIXTURE_LAYERS else {}
    for i in range(num_layers):
        g = offset + i
        out[f"decoder.layers.{i}.{names[0]}"] = hf[f"model.layers.{g}.input_layernorm.weight"]
        out[f"decoder.layers.{i}.{names[1]}"] = hf[f"model.layers.{g}.post_attention_layernorm.weight"]
    return out


# --- the NeMo-2 layout, from megatron-core conventions ---------------------------------------------------------

def nemo_tensors_from_hf(hf: dict, cfg: dict) -> dict:
    """HF tensors of the Qwen2 fixture -> NeMo-2 checkpoint tensors (keys ``module.*``, layers stacked on dim 0).

    Megatron conventions: fused qkv rows per KV group ``[q heads of the group, k, v]``; fc1 = ``[gate; up]``; the
    norms sit in the fused linears (``layer_norm_weight``); NeMo's importer unties, storing the embedding again as
    ``output_layer``."""
    layers, groups = cfg["num_hidden_layers"], cfg["num_key_value_heads"]

    def per_group(t):  # [rows, ...] -> [groups, rows / groups, ...]
        return t.reshape(groups, -1, *t.shape[1:])

    def qkv(layer, kind):
        q, k, v = (hf[f"model.layers.{layer}.self_attn.{x}_proj.{kind}"] for x in "qkv")
        return torch.cat([per_group(q), per_group(k), per_group(v)], dim=1).reshape(-1, *q.shape[1:])

    def stack(fn):
        return torch.stack([fn(i) for i in range(layers)])

    p = "module.decoder.layers."
    return {
        "module.embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "module.output_layer.weight": hf["model.embed_tokens.weight"].clone(),
        "module.decoder.final_layernorm.weight": hf["model.norm.weight"],
        p + "self_attention.linear_qkv.layer_norm_weight": stack(lambda i: hf[f"model.layers.{i}.input_layernorm.weight"]),
        p + "self_attention.linear_qkv.weight": stack(lambda i: qkv(i, "weight")),
        p + "self_attention.linear_qkv.bias": stack(lambda i: qkv(i, "bias")),
        p + "self_attention.linear_proj.weight": stack(lambda i: hf[f"model.layers.{i}.self_attn.o_proj.weight"]),
        p + "mlp.linear_fc1.layer_norm_weight": stack(
            lambda i: hf[f"model.layers.{i}.post_attention_layernorm.weight"]),
        p + "mlp.linear_fc1.weight": stack(lambda i: torch.cat([hf[f"model.layers.{i}.mlp.gate_proj.weight"],
                                                                hf[f"model.layers.{i}.mlp.up_proj.weight"]])),
        p + "mlp.linear_fc2.weight": stack(lambda i: hf[f"model.layers.{i}.mlp.down_proj.weight"]),
    }


def read_dist_checkpoint(weights_dir: str) -> dict:
    """Every tensor of a torch_dist checkpoint (no process group)."""
    from torch.distributed import checkpoint as dcp

    meta = dcp.FileSystemReader(weights_dir).read_metadata().state_dict_metadata
    sd = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in meta.items()
          if hasattr(m, "size") and hasattr(m, "properties")}
    dcp.load(sd, storage_reader=dcp.FileSystemReader(weights_dir), no_dist=True)
    return sd


def check_layout_against_nemo(fixture: str) -> list[str]:
    """Keys whose NeMo-written tensor differs from ``nemo_tensors_from_hf`` of the original HF fixture ([] = all
    equal), plus any key missing on either side."""
    from safetensors.torch import load_file

    cfg = json.load(open(os.path.join(fixture, "hf", "config.json")))
    ours = nemo_tensors_from_hf(load_file(os.path.join(fixture, "hf", "model.safetensors")), cfg)
    nemo = read_dist_checkpoint(os.path.join(fixture, "nemo2", "weights"))
    keys = set(ours) | set(nemo)
    return sorted(k for k in keys if k not in ours or k not in nemo or not torch.equal(ours[k], nemo[k]))


def perturbed_fixture(fixture: str, out_root: str, seed: int = 0) -> dict:
    """Write ``out_root/hf`` (every tensor of the HF fixture perturbed) and ``out_root/nemo2`` (its NeMo-2 form,
    the fixture's context/ copied); returns their paths and the perturbed HF tensors."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from safetensors.torch import load_file, save_file

    from converters._runtime import megatron_group
    from ttrl_megatron.megatron.checkpoint import InProcessTorchDistSave

    gen = torch.Generator().manual_seed(seed)
    hf_src = os.path.join(fixture, "hf")
    hf = {}
    for name, t in sorted(load_file(os.path.join(hf_src, "model.safetensors")).items()):
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if "norm" in name:
            hf[name] = 1.0 + 0.2 * noise  # far from 1, different per element, per norm and per layer
        elif name.endswith(".bias"):
            hf[name] = 0.1 * noise
        else:
            hf[name] = t + 0.02 * noise
    hf_dir, nemo_dir = os.path.join(out_root, "hf"), os.path.join(out_root, "nemo2")
    shutil.copytree(hf_src, hf_dir)
    save_file(hf, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    shutil.copytree(os.path.join(fixture, "nemo2", "context"), os.path.join(nemo_dir, "context"))
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    state = {k: ShardedTensor.from_rank_offsets(k, v.contiguous()) for k, v in nemo_tensors_from_hf(hf, cfg).items()}
    os.makedirs(os.path.join(nemo_dir, "weights"))
    with megatron_group(1, 1):
        dist_checkpointing.save(state, os.path.join(nemo_dir, "weights"), sharded_strategy=InProcessTorchDistSave())
    return {"hf": hf_dir, "nemo2": nemo_dir, "tensors": hf}
