"""Stream a (TP/PP-sharded) Megatron GPTModel as HF-named full tensors, in buckets that never split a vLLM module.

Per parameter, in the mapping table's fixed order (embedding, layers 0..L-1, final norm, output layer when
untied): the owning PP stage all-gathers the TP shards, broadcasts the full tensor over the PP group, and the
mapping's inverse transforms turn it into HF tensors (qkv split per query group, fc1 split per shard, vocab
padding stripped, tied models: `embed_tokens` only). That per-tensor stream is `megatron/hf_io.iter_hf_weights`
(the same code the converters use); this module adds what a weight sync needs on top of it:

- a static plan (`plan_buckets`): the HF names and shapes in stream order, packed greedily into buckets of at most
  `bucket_bytes`, where every fused vLLM module (q/k/v weights + biases; gate/up) sits whole inside one bucket
  (vLLM silently corrupts a fused module loaded in parts, PLATFORM.md). A group larger than the limit gets a bucket
  of its own. The plan is known before any communication, so names/shapes can be checked against the engine first.
- `export_buckets`: the stream cut along the plan. Every rank runs it (the gathers/broadcasts are collectives) and
  every rank receives every tensor (one rollout engine per rank). A tensor arriving out of plan raises at once.
- accounting of the extra memory alive in the generator (`ExportStats`): bytes held by the current bucket that do
  not alias a model parameter (at TP=PP=1 most tensors are views of the live parameters: no copy). The transient
  of producing one tensor (its TP shards, the gathered tensor, the split pieces) comes on top: about the largest
  single parameter. Never a second copy of the model.

Devices: a bucket is a list of tensors, not a flat staging buffer. Every tensor lives on the model's device (the
compute device, e.g. `cuda:LOCAL_RANK`): the TP gather and PP broadcast run on the groups' collective device
(`megatron/hf_io.py`), and nothing is moved to the host here, so an in-process rollout engine on the same GPU loads
them without a host round trip. An engine that needs host tensors (another process) moves them itself, one bucket
at a time, so the host never holds more than a bucket either.
Tensors yielded may alias live parameters: consume a bucket (e.g. load it into the engine) before the model
changes, and do not modify them.
Imports torch, the mapping (names.py) and megatron/hf_io.py; no vllm, no trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from ttrl_megatron.bridge import names as N

Bucket = list[tuple[str, torch.Tensor]]


class ExportError(RuntimeError):
    """The export stream disagreed with its plan (a mapping bug, or ranks running different models)."""


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """Names (in stream order) and planned bytes of one bucket."""

    names: tuple[str, ...]
    nbytes: int


@dataclasses.dataclass
class ExportStats:
    """Filled while `export_buckets` runs.

    tensors / buckets / bytes: what was yielded. peak_bucket_bytes: largest bucket. peak_extra_bytes: largest sum of
    bytes held by one bucket that do NOT share storage with a model parameter (copies made by gather/split/
    broadcast), i.e. the extra memory the generator keeps alive, not counting the producer's transient.
    """

    tensors: int = 0
    buckets: int = 0
    bytes: int = 0
    peak_bucket_bytes: int = 0
    peak_extra_bytes: int = 0


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside megatron DDP / Float16Module wrappers (they expose it as `.module`)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def single_chunk(model_chunks: Sequence[torch.nn.Module] | torch.nn.Module) -> torch.nn.Module:
    """The one GPTModel stage of this rank (virtual pipeline stages, i.e. several chunks, are not supported)."""
    chunks = [model_chunks] if isinstance(model_chunks, torch.nn.Module) else list(model_chunks)
    if len(chunks) != 1:
        raise ValueError(f"weight export got {len(chunks)} model chunks; virtual pipeline parallelism "
                         "(virtual_pipeline_model_parallel_size > 1) is not supported, use one chunk per rank")
    return _unwrap(chunks[0])


def export_facts(model_chunks) -> N.ArchFacts:
    """The mapping's `ArchFacts` of the model (HF vocab, padded vocab, tying, norm naming)."""
    from ttrl_megatron.megatron.hf_io import model_arch_facts

    return model_arch_facts(single_chunk(model_chunks))


def stream_order(facts: N.ArchFacts) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every exported tensor, in the order the export yields them (deterministic)."""
    shapes = N.expected_hf_shapes(facts)
    return [(name, shapes[name]) for spec in N.param_specs(facts) for name in spec.hf_names]


def module_groups(facts: N.ArchFacts) -> dict[str, tuple[str, ...]]:
    """HF name -> every HF tensor of the vLLM module it loads into (itself alone for unfused modules)."""
    groups = list(N.vllm_global_groups(facts))
    for layer in range(facts.num_layers):
        groups += N.vllm_module_groups(layer, facts)
    return {name: group for group in groups for name in group}


def plan_buckets(facts: N.ArchFacts, bucket_bytes: int, itemsize: int) -> list[BucketPlan]:
    """Cut the stream into buckets of at most `bucket_bytes` without splitting a vLLM module.

    Greedy in stream order over "atoms" (a whole module group, or a single tensor): a new bucket starts when the
    next atom would overflow the current one. An atom larger than the limit (e.g. the embedding with small
    buckets) travels alone. `itemsize`: bytes per element of the exported dtype.
    """
    if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes={bucket_bytes!r}: must be a positive int (bytes per weight-sync bucket)")
    groups = module_groups(facts)
    order = stream_order(facts)
    sizes = {name: itemsize * _numel(shape) for name, shape in order}
    atoms: list[list[str]] = []
    pending: dict[tuple[str, ...], list[str]] = {}
    for name, _ in order:  # an atom is complete when its last member has streamed
        group = groups[name]
        members = pending.setdefault(group, [])
        members.append(name)
        if len(members) == len(group):
            atoms.append(pending.pop(group))
    if pending:
        raise ExportError(f"module groups never completed in the stream: {sorted(pending)[:3]}")
    plans: list[BucketPlan] = []
    names: list[str] = []
    size = 0
    for atom in atoms:
        atom_bytes = sum(sizes[n] for n in atom)
        if names and size + atom_bytes > bucket_bytes:
            plans.append(BucketPlan(tuple(names), size))
            names, size = [], 0
        names += atom
        size += atom_bytes
    if names:
        plans.append(BucketPlan(tuple(names), size))
    return plans


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def export_buckets(
    model_chunks,
    bucket_bytes: int,
    stats: ExportStats | None = None,
) -> Iterator[Bucket]:
    """Yield buckets (lists of `(hf_name, full tensor)`) of the whole model, following `plan_buckets`.

    Collective: every rank of the model-parallel group must iterate it to the end (or the others hang).
    `stats`, when given, is updated in place as buckets are yielded.
    """
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    model = single_chunk(model_chunks)
    facts = export_facts(model)
    dtype = next(model.parameters()).dtype
    plans = plan_buckets(facts, bucket_bytes, dtype.itemsize)
    stats = stats if stats is not None else ExportStats()
    param_storages = {p.data.untyped_storage().data_ptr() for p in model.parameters()}
    expected = stream_order(facts)
    stream = iter_hf_weights(model)
    position = 0
    for plan in plans:
        bucket: Bucket = []
        for want in plan.names:
            name, tensor = next(stream, (None, None))
            if name != want or tuple(tensor.shape) != expected[position][1]:
                got = "the end of the stream" if name is None else f"{name!r} {tuple(tensor.shape)}"
                raise ExportError(f"export stream out of plan at tensor {position}: expected {want!r} "
                                  f"{expected[position][1]}, got {got}")
            bucket.append((name, tensor))
            position += 1
        _account(stats, bucket, param_storages)
        yield bucket
        del bucket  # drop our reference before the next bucket is produced
    leftover = next(stream, None)
    if leftover is not None:
        raise ExportError(f"export stream has tensors beyond the plan, first {leftover[0]!r}")


def _account(stats: ExportStats, bucket: Bucket, param_storages: set[int]) -> None:
    nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
    extra = sum(t.numel() * t.element_size() for _, t in bucket
                if t.untyped_storage().data_ptr() not in param_storages)
    stats.tensors += len(bucket)
    stats.buckets += 1
    stats.bytes += nbytes
    stats.peak_bucket_bytes = max(stats.peak_bucket_bytes, nbytes)
    stats.peak_extra_bytes = max(stats.peak_extra_bytes, extra)


def export_tensors(model_chunks, bucket_bytes: int = 1 << 30) -> Iterator[tuple[str, torch.Tensor]]:
    """The same stream flattened to `(hf_name, tensor)` pairs (collective, like `export_buckets`)."""
    for bucket in export_buckets(model_chunks, bucket_bytes):
        yield from bucket
