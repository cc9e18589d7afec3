"""The one HF <-> Megatron-core weight mapping table for Qwen2 and Llama (GPTModel), as pure functions.

What it knows (PLATFORM.md "Weight layouts", reference/megatron-rl-anchors.md §3):
- names: HF `model.layers.N.*` <-> Megatron `decoder.layers.N.*` (N global here; `to_local_name` applies the PP
  offset), norms under either the local layer spec (`input_layernorm`, `pre_mlp_layernorm`) or the TE spec
  (`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`);
- fused tensors: `linear_qkv` rows grouped per KV head `[q heads of g0, k0, v0, q heads of g1, ...]` (weight and
  bias); `linear_fc1` = `[gate; up]` at TP=1 and `[gate_r; up_r]` on TP rank r;
- TP sharding: column-parallel (dim 0) embeddings/output/qkv/fc1, row-parallel (dim 1) proj/fc2, replicated norms;
- vocab padding (zero rows added on import, stripped on export) and tied embeddings (export only `embed_tokens`).

A "full" Megatron tensor below is the TP=1 layout (what a TP gather produces and what dist-checkpoints store); the
tensor math itself lives in `layouts.py`. Architecture facts come in as `ArchFacts` plain values, never a Megatron model.
Must not import torch.distributed, megatron, vllm, hydra or omegaconf (the weight-sync bridge reuses it anywhere).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping

import torch

from . import layouts
from .layouts import COLUMN, FC1, QKV, REPLICATED, ROW, VOCAB

NORM_NAMINGS = ("local", "te")

# Megatron (global) names of the non-layer parameters.
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"


@dataclass(frozen=True)
class ArchFacts:
    """Shape facts of a Qwen2/Llama decoder, as plain values (built from an HF config or a Megatron config)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int          # the HF (unpadded) vocabulary
    padded_vocab_size: int   # rows of Megatron's embedding/output (>= vocab_size)
    tie_word_embeddings: bool
    qkv_bias: bool
    norm_naming: str         # "local" (input_layernorm / pre_mlp_layernorm) or "te" (fused layer_norm_weight)

    def __post_init__(self):
        if self.norm_naming not in NORM_NAMINGS:
            raise ValueError(f"ArchFacts.norm_naming={self.norm_naming!r}: use one of {NORM_NAMINGS}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"ArchFacts: num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_query_groups={self.num_query_groups}")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"ArchFacts: padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}")

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParamSpec:
    """One Megatron parameter: its global name, the HF tensors it is made of (in fusion order), its TP kind."""

    megatron_name: str
    hf_names: tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class ShardPiece:
    """Rows of one TP rank's local Megatron tensor that a single HF tensor fills.

    `rows` indexes dim 0 of the local shard (None: `data` is the whole local shard). `tied_copy` marks the
    output-layer copy of a tied embedding: it exists only where Megatron keeps a separate copy (last PP stage, PP>1).
    """

    megatron_name: str
    data: torch.Tensor
    rows: torch.Tensor | None = None
    tied_copy: bool = False


# --- names -----------------------------------------------------------------------------------------------------

_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_MG_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_NORM1 = {"local": "input_layernorm.weight", "te": "self_attention.linear_qkv.layer_norm_weight"}
_NORM2 = {"local": "pre_mlp_layernorm.weight", "te": "mlp.linear_fc1.layer_norm_weight"}
# HF layer suffix -> (Megatron layer suffix or a norm slot, kind, part inside the fused tensor)
_LAYER_TABLE = {
    "input_layernorm.weight": ("norm1", REPLICATED, None),
    "self_attn.q_proj.weight": ("self_attention.linear_qkv.weight", QKV, "q"),
    "self_attn.k_proj.weight": ("self_attention.linear_qkv.weight", QKV, "k"),
    "self_attn.v_proj.weight": ("self_attention.linear_qkv.weight", QKV, "v"),
    "self_attn.q_proj.bias": ("self_attention.linear_qkv.bias", QKV, "q"),
    "self_attn.k_proj.bias": ("self_attention.linear_qkv.bias", QKV, "k"),
    "self_attn.v_proj.bias": ("self_attention.linear_qkv.bias", QKV, "v"),
    "self_attn.o_proj.weight": ("self_attention.linear_proj.weight", ROW, None),
    "post_attention_layernorm.weight": ("norm2", REPLICATED, None),
    "mlp.gate_proj.weight": ("mlp.linear_fc1.weight", FC1, "gate"),
    "mlp.up_proj.weight": ("mlp.linear_fc1.weight", FC1, "up"),
    "mlp.down_proj.weight": ("mlp.linear_fc2.weight", ROW, None),
}
_GLOBAL_TABLE = {
    "model.embed_tokens.weight": (EMBEDDING, VOCAB),
    "model.norm.weight": (FINAL_NORM, REPLICATED),
    "lm_head.weight": (OUTPUT_LAYER, VOCAB),
}


def _layer_suffix(slot: str, arch: ArchFacts) -> str:
    return {"norm1": _NORM1, "norm2": _NORM2}[slot][arch.norm_naming] if slot in ("norm1", "norm2") else slot


def _check_layer(layer: int, arch: ArchFacts, name: str) -> None:
    if not 0 <= layer < arch.num_layers:
        raise KeyError(f"{name}: layer {layer} is outside the model's {arch.num_layers} layers")


def param_specs(arch: ArchFacts) -> list[ParamSpec]:
    """Every Megatron parameter of the model (global layer indices) in a fixed order: embedding, layers, norm, output.

    Tied models list no output layer (Megatron's copy on the last PP stage is a replica, not a separate weight).
    """
    specs = [ParamSpec(EMBEDDING, ("model.embed_tokens.weight",), VOCAB)]
    for n in range(arch.num_layers):
        specs += layer_param_specs(n, arch)
    specs.append(ParamSpec(FINAL_NORM, ("model.norm.weight",), REPLICATED))
    if not arch.tie_word_embeddings:
        specs.append(ParamSpec(OUTPUT_LAYER, ("lm_head.weight",), VOCAB))
    return specs


def layer_param_specs(layer: int, arch: ArchFacts) -> list[ParamSpec]:
    """The Megatron parameters of one decoder layer (global index `layer`)."""
    _check_layer(layer, arch, f"layer_param_specs({layer})")
    grouped: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for hf_suffix, (slot, kind, _) in _LAYER_TABLE.items():
        if hf_suffix.endswith(".bias") and not arch.qkv_bias:
            continue
        mg = f"decoder.layers.{layer}.{_layer_suffix(slot, arch)}"
        grouped.setdefault(mg, []).append(f"model.layers.{layer}.{hf_suffix}")
        kinds[mg] = kind
    return [ParamSpec(mg, tuple(hf), kinds[mg]) for mg, hf in grouped.items()]


def hf_to_megatron_name(hf_name: str, arch: ArchFacts) -> tuple[str, str, str | None]:
    """HF name -> (global Megatron name, TP kind, part of the fused tensor: q/k/v/gate/up or None)."""
    if hf_name in _GLOBAL_TABLE:
        mg, kind = _GLOBAL_TABLE[hf_name]
        if mg == OUTPUT_LAYER and arch.tie_word_embeddings:
            raise KeyError(f"{hf_name}: the model ties embeddings, so it has no separate output layer")
        return mg, kind, None
    m = _HF_LAYER.match(hf_name)
    if m and m.group(2) in _LAYER_TABLE:
        layer = int(m.group(1))
        _check_layer(layer, arch, hf_name)
        slot, kind, part = _LAYER_TABLE[m.group(2)]
        if m.group(2).endswith(".bias") and not arch.qkv_bias:
            raise KeyError(f"{hf_name}: the config has no qkv bias (attention_bias/qkv_bias is off)")
        return f"decoder.layers.{layer}.{_layer_suffix(slot, arch)}", kind, part
    raise KeyError(f"{hf_name}: not a Qwen2/Llama weight this mapping knows")


def megatron_to_hf_names(megatron_name: str, arch: ArchFacts) -> tuple[str, ...]:
    """Global Megatron name -> the HF names it holds, in fusion order (q, k, v / gate, up). Accepts both norm
    namings. A tied model's `output_layer.weight` maps to no HF tensor (export only `embed_tokens`)."""
    if megatron_name == OUTPUT_LAYER and arch.tie_word_embeddings:
        return ()
    m = _MG_LAYER.match(megatron_name)
    if m:
        layer, suffix = int(m.group(1)), m.group(2)
        _check_layer(layer, arch, megatron_name)
        for norm in (_NORM1, _NORM2):  # either spec's norm name -> this arch's
            suffix = norm[arch.norm_naming] if suffix in norm.values() else suffix
        megatron_name = f"decoder.layers.{layer}.{suffix}"
        for spec in layer_param_specs(layer, arch):
            if spec.megatron_name == megatron_name:
                return spec.hf_names
    for hf, (mg, _) in _GLOBAL_TABLE.items():
        if mg == megatron_name:
            return (hf,)
    raise KeyError(f"{megatron_name}: not a Megatron GPTModel weight this mapping knows")


def tp_kind(megatron_name: str) -> str:
    """TP kind of a Megatron name (global or local): vocab/qkv/fc1 split dim 0, row splits dim 1, norms replicated."""
    if megatron_name in (EMBEDDING, OUTPUT_LAYER):
        return VOCAB
    if megatron_name.endswith("linear_qkv.weight") or megatron_name.endswith("linear_qkv.bias"):
        return QKV
    if megatron_name.endswith("linear_fc1.weight"):
        return FC1
    if megatron_name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return ROW
    if megatron_name.endswith(("layernorm.weight", "layer_norm_weight")):
        return REPLICATED
    raise KeyError(f"{megatron_name}: no TP sharding rule for this Megatron name")


def tp_split_dim(megatron_name: str) -> int | None:
    """Dimension TP splits (0 column-parallel, 1 row-parallel) or None for replicated tensors."""
    return layouts.SPLIT_DIM[tp_kind(megatron_name)]


# --- pipeline parallel ----------------------------------------------------------------------------------------

def layer_offset(pp_rank: int, pp_size: int, num_layers: int) -> int:
    """First global layer of PP stage `pp_rank`: stage s holds global layer s*L/pp + i as local layer i."""
    if num_layers % pp_size:
        raise ValueError(f"num_layers={num_layers} is not divisible by pipeline size {pp_size}")
    return pp_rank * (num_layers // pp_size)


def owning_stage(megatron_name: str, arch: ArchFacts, pp_size: int) -> int:
    """PP stage holding a global Megatron name (embedding: first, final norm/output: last)."""
    if megatron_name == EMBEDDING:
        return 0
    if megatron_name in (FINAL_NORM, OUTPUT_LAYER):
        return pp_size - 1
    m = _MG_LAYER.match(megatron_name)
    if not m:
        raise KeyError(f"{megatron_name}: not a Megatron GPTModel weight this mapping knows")
    layer_offset(0, pp_size, arch.num_layers)  # divisibility check
    return int(m.group(1)) // (arch.num_layers // pp_size)


def to_local_name(megatron_name: str, arch: ArchFacts, pp_rank: int, pp_size: int) -> str | None:
    """Global Megatron name -> the name inside PP stage `pp_rank`'s model, or None when another stage holds it."""
    if megatron_name == OUTPUT_LAYER and arch.tie_word_embeddings:
        return megatron_name if pp_size > 1 and pp_rank == pp_size - 1 else None
    if owning_stage(megatron_name, arch, pp_size) != pp_rank:
        return None
    m = _MG_LAYER.match(megatron_name)
    if not m:
        return megatron_name
    local = int(m.group(1)) - layer_offset(pp_rank, pp_size, arch.num_layers)
    return f"decoder.layers.{local}.{m.group(2)}"


def to_global_name(local_name: str, arch: ArchFacts, pp_rank: int, pp_size: int) -> str:
    """Name inside PP stage `pp_rank`'s model -> global Megatron name."""
    m = _MG_LAYER.match(local_name)
    if not m:
        return local_name
    glob = int(m.group(1)) + layer_offset(pp_rank, pp_size, arch.num_layers)
    return f"decoder.layers.{glob}.{m.group(2)}"


# --- TP sharding of full Megatron tensors ---------------------------------------------------------------------

def _tp_groups(megatron_name: str, arch: ArchFacts, tp_size: int) -> int:
    """KV groups per TP rank (each rank must own whole groups)."""
    if arch.num_query_groups % tp_size:
        raise ValueError(f"{megatron_name}: num_query_groups={arch.num_query_groups} is not divisible by "
                         f"tensor parallel size {tp_size} (each TP rank must own whole KV groups)")
    return arch.num_query_groups // tp_size


def shard_full(megatron_name: str, full: torch.Tensor, arch: ArchFacts, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Full Megatron tensor (TP=1 layout) -> TP rank `tp_rank`'s local shard (see `layouts.tp_shard`)."""
    kind = tp_kind(megatron_name)
    if kind == QKV:
        _tp_groups(megatron_name, arch, tp_size)
    return layouts.tp_shard(megatron_name, kind, full, tp_rank, tp_size)


def gather_shards(megatron_name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """TP ranks' local shards (rank order) -> the full TP=1-layout tensor (see `layouts.tp_gather`)."""
    return layouts.tp_gather(tp_kind(megatron_name), shards)


# --- HF tensors <-> Megatron tensors ----------------------------------------------------------------------------

def hf_to_megatron_full(spec: ParamSpec, hf_tensors: Mapping[str, torch.Tensor], arch: ArchFacts) -> torch.Tensor:
    """The HF tensors named by `spec.hf_names` -> the full Megatron tensor (fused, vocab-padded)."""
    ts = [hf_tensors[n] for n in spec.hf_names]
    if spec.kind == QKV:
        return layouts.merge_qkv(*ts, arch.num_query_groups)
    if spec.kind == FC1:
        return layouts.merge_fc1(*ts)
    if spec.kind == VOCAB:
        return layouts.pad_vocab(ts[0], arch.padded_vocab_size)
    return ts[0]


def megatron_full_to_hf(megatron_name: str, full: torch.Tensor, arch: ArchFacts) -> list[tuple[str, torch.Tensor]]:
    """Full Megatron tensor -> [(hf_name, tensor)] in HF layout: qkv/fc1 split, vocab padding stripped.

    A tied model's output layer yields nothing (HF and vLLM take `embed_tokens` and tie it themselves)."""
    names = megatron_to_hf_names(megatron_name, arch)
    if not names:
        return []
    kind = tp_kind(megatron_name)
    if kind == QKV:
        return list(zip(names, layouts.split_qkv(full, arch.num_query_groups, arch.heads_per_group, arch.head_dim)))
    if kind == FC1:
        return list(zip(names, layouts.split_fc1(full)))
    if kind == VOCAB:
        return [(names[0], layouts.strip_vocab(full, arch.vocab_size))]
    return [(names[0], full)]


def hf_to_megatron_shard(hf_name: str, tensor: torch.Tensor, arch: ArchFacts, tp_rank: int,
                         tp_size: int) -> list[ShardPiece]:
    """One HF tensor -> the pieces of TP rank `tp_rank`'s local Megatron tensors it fills.

    Streaming-friendly: a loader reads one HF tensor at a time and writes `piece.data` into
    `local_param[piece.rows]`. q/k/v fill their rows of each local KV group, gate/up fill the two halves of
    `[gate_r; up_r]`, vocab tensors are padded then chunked. A tied `embed_tokens` also yields the output-layer copy
    (`tied_copy=True`). Shapes are checked against `expected_hf_shapes`."""
    check_hf_shape(hf_name, tuple(tensor.shape), arch)
    mg, kind, part = hf_to_megatron_name(hf_name, arch)
    if kind == REPLICATED:
        return [ShardPiece(mg, tensor)]
    if kind == ROW:
        return [ShardPiece(mg, shard_full(mg, tensor, arch, tp_rank, tp_size))]
    if kind == VOCAB:
        shard = shard_full(mg, layouts.pad_vocab(tensor, arch.padded_vocab_size), arch, tp_rank, tp_size)
        pieces = [ShardPiece(mg, shard)]
        if mg == EMBEDDING and arch.tie_word_embeddings:
            pieces.append(ShardPiece(OUTPUT_LAYER, shard, tied_copy=True))
        return pieces
    if kind == QKV:
        # this rank's KV groups of q (or k, v) go to their rows inside each local group block
        local_groups = _tp_groups(mg, arch, tp_size)
        per_group = tensor.reshape(arch.num_query_groups, -1, *tensor.shape[1:])
        mine = per_group[tp_rank * local_groups:(tp_rank + 1) * local_groups].reshape(-1, *tensor.shape[1:])
        rows = layouts.qkv_local_rows(part, arch.heads_per_group, arch.head_dim, local_groups)
        return [ShardPiece(mg, mine, rows)]
    # FC1: gate fills the first half of the local [gate_r; up_r], up the second.
    if tensor.shape[0] % tp_size:
        raise ValueError(f"{hf_name}: ffn size {tensor.shape[0]} is not divisible by tensor parallel size {tp_size}")
    rows_per_rank = tensor.shape[0] // tp_size
    first = 0 if part == "gate" else rows_per_rank
    mine = tensor.chunk(tp_size, 0)[tp_rank]
    return [ShardPiece(mg, mine, torch.arange(first, first + rows_per_rank))]  # host: rows; _write moves them


# --- shapes and vLLM module groups --------------------------------------------------------------------------

def _layer_shapes(arch: ArchFacts) -> dict[str, tuple[int, ...]]:
    """HF layer suffix -> shape (the same for every layer)."""
    h, hd, ffn = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    q_rows, kv_rows = arch.num_attention_heads * hd, arch.num_query_groups * hd
    shapes = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q_rows, h), "self_attn.k_proj.weight": (kv_rows, h),
        "self_attn.v_proj.weight": (kv_rows, h), "self_attn.o_proj.weight": (h, q_rows),
        "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
    }
    if arch.qkv_bias:
        shapes.update({"self_attn.q_proj.bias": (q_rows,), "self_attn.k_proj.bias": (kv_rows,),
                       "self_attn.v_proj.bias": (kv_rows,)})
    return shapes


def expected_hf_shapes(arch: ArchFacts) -> dict[str, tuple[int, ...]]:
    """Every HF tensor the model needs, in a stable order, with its shape (tied models: no `lm_head.weight`)."""
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, arch.hidden_size)}
    per_layer = _layer_shapes(arch)
    for n in range(arch.num_layers):
        shapes.update({f"model.layers.{n}.{k}": v for k, v in per_layer.items()})
    shapes["model.norm.weight"] = (arch.hidden_size,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, arch.hidden_size)
    return shapes


def _hf_shape(hf_name: str, arch: ArchFacts) -> tuple[int, ...]:
    """Shape of one known HF tensor."""
    m = _HF_LAYER.match(hf_name)
    if m:
        return _layer_shapes(arch)[m.group(2)]
    return (arch.hidden_size,) if hf_name == "model.norm.weight" else (arch.vocab_size, arch.hidden_size)


def megatron_full_shape(spec: ParamSpec, arch: ArchFacts) -> tuple[int, ...]:
    """Shape of the full (TP=1 layout) Megatron tensor of `spec`: fused rows summed, vocab rows padded."""
    shapes = [_hf_shape(n, arch) for n in spec.hf_names]
    rows = arch.padded_vocab_size if spec.kind == VOCAB else sum(s[0] for s in shapes)
    return (rows, *shapes[0][1:])


def check_hf_shape(hf_name: str, shape: tuple[int, ...], arch: ArchFacts) -> None:
    """Raise one error naming the tensor when it is unknown or its shape differs from what the config implies."""
    hf_to_megatron_name(hf_name, arch)  # KeyError naming unknown / out-of-range tensors
    want = _hf_shape(hf_name, arch)
    if tuple(shape) != want:
        raise ValueError(f"{hf_name}: shape {tuple(shape)} does not match {want} expected from the config "
                         f"(hidden={arch.hidden_size}, heads={arch.num_attention_heads}, "
                         f"kv_groups={arch.num_query_groups}, head_dim={arch.head_dim}, "
                         f"ffn={arch.ffn_hidden_size}, vocab={arch.vocab_size})")


def vllm_module_groups(layer: int, arch: ArchFacts) -> list[tuple[str, ...]]:
    """HF tensors of one layer grouped by the vLLM module they load into, fused groups first.

    vLLM fuses q/k/v (+ biases) into `qkv_proj` and gate/up into `gate_up_proj`; an update must carry every tensor
    of a group together or it silently corrupts the module (PLATFORM.md). Every layer tensor appears exactly once."""
    _check_layer(layer, arch, f"vllm_module_groups({layer})")
    p = f"model.layers.{layer}."
    qkv = [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
    if arch.qkv_bias:
        qkv += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
    return [tuple(qkv), (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), (p + "self_attn.o_proj.weight",),
            (p + "mlp.down_proj.weight",), (p + "input_layernorm.weight",), (p + "post_attention_layernorm.weight",)]


def vllm_global_groups(arch: ArchFacts) -> list[tuple[str, ...]]:
    """The non-layer HF tensors as single-tensor groups (tied models send only `embed_tokens`)."""
    groups = [("model.embed_tokens.weight",), ("model.norm.weight",)]
    return groups if arch.tie_word_embeddings else groups + [("lm_head.weight",)]

