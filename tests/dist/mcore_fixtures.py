"""Tiny HF configs, batches and test-local weight plumbing for the megatron model tests (run inside ranks).

The HF -> Megatron copy here is deliberately minimal (TP=1 local-spec names, plus a TP shard helper) so the model
tests can check numerics without depending on the converters; the real mapping lives in bridge/names.py.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List

import torch

TINY = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def qwen2_config(tied: bool = True, **kw) -> dict:
    from transformers import Qwen2Config

    return Qwen2Config(**{**TINY, "tie_word_embeddings": tied, "architectures": ["Qwen2ForCausalLM"], **kw}).to_dict()


def llama_config(tied: bool = False, llama3_factor=None, **kw) -> dict:
    from transformers import LlamaConfig

    extra = {}
    if llama3_factor is not None:
        # original_max_position_embeddings=8192 is what megatron-core hard-codes; short wavelengths of a tiny
        # head_dim then still fall in all three llama3 bands (high, medium, low frequency).
        extra = dict(max_position_embeddings=16384, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=llama3_factor, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8192))
    cfg = {**TINY, "tie_word_embeddings": tied, "architectures": ["LlamaForCausalLM"], **extra, **kw}
    return LlamaConfig(**cfg).to_dict()


def hf_model(cfg: dict):
    """A seeded random transformers CausalLM for ``cfg`` with every tensor perturbed (HF zero-inits biases and
    sets norms to 1, which would hide mapping mistakes)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(vocab: int = 300, b: int = 4, t: int = 8, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Left-padded batch: input_ids/attention_mask/labels/loss_mask, all [b, t]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for row, pad in enumerate([0, 2, 3, 1][:b]):
        mask[row, :pad] = 0
    ids = ids * mask
    labels = torch.zeros_like(ids)
    labels[:, :-1] = ids[:, 1:]
    loss_mask = torch.zeros(b, t)
    loss_mask[:, :-1] = (mask[:, 1:] * mask[:, :-1]).float()
    return dict(input_ids=ids, attention_mask=mask, labels=labels, loss_mask=loss_mask)


def microbatches(data: Dict[str, torch.Tensor], n: int) -> List[Dict[str, torch.Tensor]]:
    size = data["input_ids"].shape[0] // n
    return [{k: v[i * size:(i + 1) * size] for k, v in data.items()} for i in range(n)]


def _loss(loss_mask, output_tensor):
    """Masked mean of megatron's per-token CE [b, s]."""
    loss = (output_tensor.float() * loss_mask).sum() / loss_mask.sum()
    return loss, {"loss": loss.clone().detach()}


def forward_step(data_iterator, model):
    """megatron schedule forward step: per-token CE via ``labels=`` (vocab-parallel)."""
    from ttrl_megatron.megatron.model import left_padded_inputs

    mb = next(data_iterator)
    position_ids, mask = left_padded_inputs(mb["attention_mask"])
    out = model(mb["input_ids"], position_ids, mask, labels=mb["labels"])
    return out, partial(_loss, mb["loss_mask"])


def train_step(model, data, num_microbatches: int = 2, forward_only: bool = False) -> float:
    """One forward(+backward) through megatron's schedule; returns the mean loss on the last stage (else nan)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for p in model.parameters():
        p.grad = None
    mbs = microbatches(data, num_microbatches)
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(mbs), model=[model], num_microbatches=num_microbatches,
        seq_length=data["input_ids"].shape[1], micro_batch_size=mbs[0]["input_ids"].shape[0],
        forward_only=forward_only,
    )
    if not parallel_state.is_pipeline_last_stage():
        return float("nan")
    return float(sum(d["loss"] for d in losses) / len(losses))


def hf_to_mcore_tp1(hf_sd: Dict[str, torch.Tensor], arch) -> Dict[str, torch.Tensor]:
    """HF Qwen2/Llama state dict -> full (TP=1, PP=1) megatron local-spec state dict (vocab padded with zeros)."""
    nq, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    padded = arch.padded_vocab_size(1)

    def pad(w):
        return torch.cat([w, w.new_zeros(padded - w.shape[0], *w.shape[1:])])

    def qkv(prefix, kind):  # per-group interleave [q heads of group g, k_g, v_g]; works for weight and bias
        q, k, v = (hf_sd[f"{prefix}.{p}_proj.{kind}"] for p in "qkv")
        tail = q.shape[1:]
        parts = [q.reshape(ng, nq // ng * hd, *tail), k.reshape(ng, hd, *tail), v.reshape(ng, hd, *tail)]
        return torch.cat(parts, dim=1).reshape(-1, *tail)

    out = {"embedding.word_embeddings.weight": pad(hf_sd["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": hf_sd["model.norm.weight"]}
    if not arch.tie_word_embeddings:
        out["output_layer.weight"] = pad(hf_sd["lm_head.weight"])
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}", f"decoder.layers.{i}"
        for kind in (["weight", "bias"] if arch.add_qkv_bias else ["weight"]):
            out[f"{dst}.self_attention.linear_qkv.{kind}"] = qkv(f"{src}.self_attn", kind)
        out.update({
            f"{dst}.input_layernorm.weight": hf_sd[f"{src}.input_layernorm.weight"],
            f"{dst}.self_attention.linear_proj.weight": hf_sd[f"{src}.self_attn.o_proj.weight"],
            f"{dst}.pre_mlp_layernorm.weight": hf_sd[f"{src}.post_attention_layernorm.weight"],
            f"{dst}.mlp.linear_fc1.weight": torch.cat([hf_sd[f"{src}.mlp.gate_proj.weight"],
                                                       hf_sd[f"{src}.mlp.up_proj.weight"]]),
            f"{dst}.mlp.linear_fc2.weight": hf_sd[f"{src}.mlp.down_proj.weight"],
        })
    return out


def shard_tp(full: Dict[str, torch.Tensor], tp_rank: int, tp: int, vocab_rows: int, replicated=()):
    """Full megatron state dict -> this TP rank's shard (column: dim 0; row: dim 1; fc1: [gate_r; up_r]).

    Vocab tensors are re-padded with zero rows to ``vocab_rows`` (the padded vocab at this TP) before splitting.
    """
    out = {}
    for name, w in full.items():
        if any(k in name for k in ("word_embeddings", "output_layer")) and name not in replicated:
            w = torch.cat([w, w.new_zeros(max(0, vocab_rows - w.shape[0]), *w.shape[1:])])[:vocab_rows]
        if name in replicated:
            out[name] = w
        elif name.endswith("linear_fc1.weight"):
            gate, up = w.chunk(2)
            out[name] = torch.cat([gate.chunk(tp)[tp_rank], up.chunk(tp)[tp_rank]])
        elif any(k in name for k in ("word_embeddings", "output_layer", "linear_qkv")):
            out[name] = w.chunk(tp)[tp_rank]
        elif any(k in name for k in ("linear_proj.weight", "linear_fc2.weight")):
            out[name] = w.chunk(tp, dim=1)[tp_rank]
        else:
            out[name] = w
    return out


def load_into(model, state: Dict[str, torch.Tensor], layer_offset: int = 0) -> None:
    """Copy tensors into ``model`` by name; ``layer_offset`` maps local PP layer i to global i + offset."""
    import re

    params = dict(model.named_parameters())
    for name, p in params.items():
        src = re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", name)
        if src == "output_layer.weight" and src not in state:  # tied: last stage's copy of the embedding
            src = "embedding.word_embeddings.weight"
        if src not in state:
            raise KeyError(f"no source tensor for {name} (looked up {src})")
        if tuple(p.shape) != tuple(state[src].shape):
            raise ValueError(f"{name}: model shape {tuple(p.shape)} != source {tuple(state[src].shape)}")
        with torch.no_grad():
            p.copy_(state[src])
