"""Weight sync Megatron actor -> rollout engine, with a log-prob parity check after the sync.

`WeightSync.push()` streams `export.export_buckets` (PP broadcast + TP gather + HF layout, whole fused modules per
bucket) into ONE `engine.update_weights` call: the export produces the next bucket only when the engine has taken
the previous one, so memory stays at about a bucket. One call, not one per bucket: each call is a full in-place
reload pass of vLLM (~15 ms of fixed cost per call for a 135M model on CPU, bench/bench_bridge.py), and whole modules
per bucket is what vLLM needs, not one call per bucket. The engine validates every tensor before sending it; on a
refused tensor the modules received before it stay loaded, nothing after it is, and the engine stays usable.
Before the first push the whole export plan (names and shapes, known from the config) is compared with what the
engine's checkpoint expects, so a config/mapping mismatch is refused before any collective or send.
Every rank calls `push()` (the export is collective); after a refusal the rank still drains the export, so the
other ranks' collectives complete, then raises.

Parity check (every `check.freq`-th push, and on demand via `check_parity`): a few fixed sequences (seeded random
token ids, the same on every rank, or sequences the caller passes) are scored teacher-forced by the engine
(`compute_logprobs`, raw log-probs at temperature 1) and by the actor (`compute_log_prob`, with its log-prob
temperature set to 1 for the duration of the call); reported as `rollout/actor_logprob_diff_max` / `_mean`
(absolute log-prob difference over response tokens; max / mean over all ranks' engines). Above `check.max_logprob_diff` it raises `SyncParityError`
(default) or warns. NeMo-RL's `token_mult_prob_error` plays the same role (reference/megatron-rl-anchors.md §6).

`rollout_probs_diff` is the train-inference mismatch on real rollouts (verl's `training/rollout_probs_diff_*`):
pure torch, no communication.

Imports the export (which reaches megatron through megatron/hf_io.py), torch.distributed (the ranks agree on the
parity verdict) and, lazily, the actor's batch container and layout; the engine is duck-typed (`update_weights`,
`compute_logprobs`, optional `weight_spec`). Never vllm, never megatron.core directly.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from ttrl_megatron.bridge import export as E
from ttrl_megatron.bridge import names as N
from ttrl_megatron.distributed.devices import collective_device

DEFAULT_BUCKET_BYTES = 512 << 20
ON_FAILURE = ("raise", "warn")


class SyncParityError(RuntimeError):
    """After a sync, the rollout engine's log-probs differ from the actor's by more than the configured bound."""


class SyncPlanError(ValueError):
    """The exported names/shapes do not match what the rollout engine's checkpoint expects."""


@dataclasses.dataclass(frozen=True)
class SyncCheckConfig:
    """The post-sync parity check.

    freq: check after every `freq`-th push (1 = every push; 0 = never, `check_parity` still works on demand).
    num_sequences / prompt_len / response_len / seed: the fixed scored sequences (seeded random token ids).
    max_logprob_diff: bound on max |logp_rollout - logp_actor| over response tokens. fp32 on both sides agrees to
      ~1e-5 on CPU; a bf16 rollout against fp32 training differs by up to ~0.3 (PLATFORM.md), so raise the bound
      (or use on_failure="warn") for bf16 rollouts.
    on_failure: "raise" (SyncParityError) or "warn" (a RuntimeWarning; the metrics are returned either way).
    """

    freq: int = 1
    num_sequences: int = 4
    prompt_len: int = 8
    response_len: int = 8
    seed: int = 0
    max_logprob_diff: float = 1e-3
    on_failure: str = "raise"

    def __post_init__(self) -> None:
        for name in ("freq", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"SyncCheckConfig.{name}={getattr(self, name)!r}: must be an int >= 0")
        for name in ("num_sequences", "prompt_len", "response_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SyncCheckConfig.{name}={getattr(self, name)!r}: must be an int >= 1")
        if not self.max_logprob_diff > 0:
            raise ValueError(f"SyncCheckConfig.max_logprob_diff={self.max_logprob_diff!r}: must be > 0")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"SyncCheckConfig.on_failure={self.on_failure!r}: use one of {ON_FAILURE}")


# --- train-inference mismatch on real rollouts (pure) -----------------------------------------------------------

def rollout_probs_diff(rollout_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                       response_mask: torch.Tensor) -> dict[str, float]:
    """Token-probability mismatch between the rollout engine and the actor on the same sampled tokens.

    Args: rollout_log_probs `[B, R]` (vLLM's sampling log-probs), old_log_probs `[B, R]` (the actor's), response_mask
    `[B, R]` (1 on generated tokens). Returns verl's metric names: `training/rollout_probs_diff_{max,mean,std}` of
    |exp(a) - exp(b)| over masked tokens, and `training/rollout_actor_probs_pearson_corr` of the two probabilities
    (Pearson correlation, as in verl's debug metrics). No masked token: an empty dict.
    """
    if not rollout_log_probs.shape == old_log_probs.shape == response_mask.shape:
        raise ValueError(f"rollout_probs_diff: shapes differ: rollout_log_probs {tuple(rollout_log_probs.shape)}, "
                         f"old_log_probs {tuple(old_log_probs.shape)}, response_mask {tuple(response_mask.shape)}")
    keep = response_mask.bool()
    if not keep.any():
        return {}
    p_rollout = rollout_log_probs.double()[keep].exp()
    p_actor = old_log_probs.double()[keep].exp()
    diff = (p_rollout - p_actor).abs()
    out = {"training/rollout_probs_diff_max": float(diff.max()),
           "training/rollout_probs_diff_mean": float(diff.mean()),
           "training/rollout_probs_diff_std": float(diff.std()) if diff.numel() > 1 else 0.0}
    centered_r, centered_a = p_rollout - p_rollout.mean(), p_actor - p_actor.mean()
    denom = (centered_r.square().sum() * centered_a.square().sum()).sqrt()
    out["training/rollout_actor_probs_pearson_corr"] = float((centered_r * centered_a).sum() / denom) if denom > 0 \
        else float("nan")
    return out


# --- fixed sequences and the actor's side of the parity check ------------------------------------------------

def fixed_sequences(vocab_size: int, check: SyncCheckConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Seeded random (prompts, responses) of the configured lengths; identical on every rank."""
    gen = torch.Generator().manual_seed(check.seed)  # host: draws host token ids (returned as lists)
    ids = torch.randint(0, vocab_size, (check.num_sequences, check.prompt_len + check.response_len), generator=gen)  # host: ids
    return ids[:, :check.prompt_len].tolist(), ids[:, check.prompt_len:].tolist()


def verl_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               pad_id: int = 0) -> dict[str, torch.Tensor]:
    """verl layout of (prompt, response) pairs: input_ids / attention_mask `[B, P+R]` (prompts left-padded to P,
    responses right-padded to R), responses / response_mask `[B, R]`."""
    width_p = max(len(p) for p in prompts)
    width_r = max(len(r) for r in responses)
    b = len(prompts)
    ids = torch.full((b, width_p + width_r), pad_id, dtype=torch.long)  # host: the driver's batch
    mask = torch.zeros(b, width_p + width_r, dtype=torch.long)  # host: the driver's batch
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, width_p - len(p):width_p + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)  # host: batch
        mask[i, width_p - len(p):width_p + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "responses": ids[:, width_p:].clone(),
            "response_mask": mask[:, width_p:].clone()}


def actor_logprobs(actor, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                   dp_size: int = 1) -> list[list[float]]:
    """Raw (temperature 1) log-probs of each response token under the Megatron actor, via `compute_log_prob`.

    The actor's log-prob temperature is the rollout's sampling temperature; the engine scores at temperature 1, so
    it is set to 1 for this call and restored after. Rows are repeated up to a multiple of `dp_size` (the actor
    splits rows over DP) and only the originals are returned. Collective over the actor's ranks.
    """
    from ttrl_megatron.protocol import DataProto

    rows = len(prompts)
    extra = (-rows) % dp_size
    batch = verl_batch(list(prompts) + [prompts[0]] * extra, list(responses) + [responses[0]] * extra)
    saved = actor.log_prob_config
    actor.log_prob_config = dataclasses.replace(saved, temperature=1.0)
    try:
        log_probs, _ = actor.compute_log_prob(DataProto(batch))
    finally:
        actor.log_prob_config = saved
    return [log_probs[i, :len(responses[i])].tolist() for i in range(rows)]


def logprob_diff(rollout: Sequence[Sequence[float]], actor: Sequence[Sequence[float]]) -> dict[str, float]:
    """`rollout/actor_logprob_diff_{max,mean}`: |logp_rollout - logp_actor| over all response tokens."""
    diffs = torch.tensor([abs(a - b) for ra, rb in zip(rollout, actor) for a, b in zip(ra, rb)], dtype=torch.float64)  # host: metric
    return {"rollout/actor_logprob_diff_max": float(diffs.max()),
            "rollout/actor_logprob_diff_mean": float(diffs.mean())}


def _over_all_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Max of the maxima and mean of the means over every rank's engine, so all ranks report and decide alike
    (one rank raising while the others go on would hang them at their next collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    worst = torch.tensor([metrics["rollout/actor_logprob_diff_max"]], dtype=torch.float64, device=collective_device())
    mean = torch.tensor([metrics["rollout/actor_logprob_diff_mean"]], dtype=torch.float64, device=collective_device())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    dist.all_reduce(mean)
    return {"rollout/actor_logprob_diff_max": float(worst),
            "rollout/actor_logprob_diff_mean": float(mean) / dist.get_world_size()}


# --- the driver ---------------------------------------------------------------------------------------------

class WeightSync:
    """Pushes this rank's Megatron actor into this rank's rollout engine and checks parity.

    model_chunks: the actor's model chunk(s) on this rank (DDP-wrapped or not). engine: a `RolloutEngine`.
    arch: the run's `ModelArchConfig`, cross-checked against the one the model was built from (None: skip).
    bucket_bytes: bucket size of the export (whole vLLM modules per bucket; a module bigger than this travels
      alone). actor: an object with `compute_log_prob(DataProto)` and `log_prob_config` (`MegatronActor`) for the
      parity check; required when `check.freq > 0`.
    """

    def __init__(self, model_chunks, engine, arch=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 check: SyncCheckConfig = SyncCheckConfig(), actor=None):
        self.model = E.single_chunk(model_chunks)
        self.facts = E.export_facts(self.model)
        if arch is not None and getattr(self.model, "ttrl_arch", arch) != arch:
            raise ValueError(f"WeightSync: arch {arch} differs from the one the model was built from "
                             f"({self.model.ttrl_arch}); pass the actor's own config")
        if check.freq > 0 and actor is None:
            raise ValueError("WeightSync: the parity check (check.freq > 0) needs actor= (an object with "
                             "compute_log_prob, e.g. MegatronActor); pass it or set check.freq=0")
        self.engine, self.check, self.actor = engine, check, actor
        dtype = next(self.model.parameters()).dtype
        # the planned buckets (also checks bucket_bytes now rather than at the first push)
        self.plan = E.plan_buckets(self.facts, bucket_bytes, dtype.itemsize)
        self.bucket_bytes = bucket_bytes
        self.pushes = 0
        check_plan_against_engine(self.facts, engine)

    def push(self) -> dict[str, float]:
        """Stream the actor's weights into the engine; returns `weight_sync/*` stats (+ parity metrics when due).

        Collective over the model-parallel group: call it on every rank."""
        start = time.perf_counter()
        export = E.ExportStats()
        export_s = self._load(E.export_buckets(self.model, self.bucket_bytes, export))
        seconds = time.perf_counter() - start
        self.pushes += 1
        stats = {
            "weight_sync/bytes": float(export.bytes), "weight_sync/seconds": seconds,
            "weight_sync/gb_per_s": export.bytes / seconds / 1e9, "weight_sync/buckets": float(export.buckets),
            "weight_sync/tensors": float(export.tensors), "weight_sync/export_seconds": export_s,
            "weight_sync/load_seconds": seconds - export_s,
            "weight_sync/peak_bucket_bytes": float(export.peak_bucket_bytes),
            "weight_sync/peak_extra_bytes": float(export.peak_extra_bytes),
        }
        if self.check.freq and self.pushes % self.check.freq == 0:
            stats.update(self.check_parity())
        return stats

    def check_parity(self, prompts: Sequence[Sequence[int]] | None = None,
                     responses: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
        """Score fixed sequences with engine and actor; return `rollout/actor_logprob_diff_{max,mean}` and raise or
        warn (per `check.on_failure`) above `check.max_logprob_diff`. Collective (the actor's forward)."""
        if self.actor is None:
            raise ValueError("WeightSync.check_parity needs actor= at construction")
        if prompts is None or responses is None:
            prompts, responses = fixed_sequences(self.facts.vocab_size, self.check)
        from ttrl_megatron.megatron.parallel import current_layout

        rollout = self.engine.compute_logprobs([list(p) for p in prompts], [list(r) for r in responses])
        actor = actor_logprobs(self.actor, prompts, responses, current_layout().dp)
        metrics = _over_all_ranks(logprob_diff(rollout, actor))
        worst = metrics["rollout/actor_logprob_diff_max"]
        if not worst <= self.check.max_logprob_diff:
            message = (f"weight sync parity: rollout vs actor log-probs differ by up to {worst:.3g} (mean "
                       f"{metrics['rollout/actor_logprob_diff_mean']:.3g}) after push {self.pushes}, above "
                       f"SyncCheckConfig.max_logprob_diff={self.check.max_logprob_diff:g}; the rollout engine does not "
                       "hold the actor's weights (mapping/dtype problem?)")
            if self.check.on_failure == "raise":
                raise SyncParityError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return metrics

    def send(self, buckets: Iterable[E.Bucket]) -> int:
        """Load buckets of HF-named tensors made elsewhere exactly as `push` loads the export (one streamed
        `update_weights` call, the source drained after a refusal); returns the number of tensors sent."""
        count = [0]

        def counted():
            for bucket in buckets:
                count[0] += len(bucket)
                yield bucket

        self._load(counted())
        return count[0]

    def _load(self, buckets: Iterable[E.Bucket]) -> float:
        """Stream `buckets` into one `engine.update_weights` call; returns the seconds spent producing buckets.

        Whatever happens in the engine, the source is iterated to its end afterwards (the export's collectives must
        complete on every rank), then the engine's error, if any, is raised."""
        source = iter(buckets)
        produce_s = [0.0]

        def timed():
            while True:
                t0 = time.perf_counter()
                bucket = next(source, None)
                produce_s[0] += time.perf_counter() - t0
                if bucket is None:
                    return
                yield bucket
                del bucket  # the engine holds what it still needs

        try:
            self.engine.update_weights(timed())
        finally:
            for _ in source:  # normally already exhausted; after a refusal, finish the collectives
                pass
        return produce_s[0]

def check_plan_against_engine(facts: N.ArchFacts, engine) -> None:
    """Refuse, before anything is sent, an export whose names/shapes the engine's checkpoint does not expect.

    Uses the engine's `weight_spec` (names -> shapes read from its checkpoint) when it has one; engines without
    it rely on their per-bucket validation. Raises SyncPlanError naming the first mismatch.
    """
    spec = getattr(engine, "weight_spec", None)
    if spec is None:
        return
    exported = dict(E.stream_order(facts))
    for name, shape in exported.items():
        want = spec.shapes.get(name)
        if want is None or tuple(want) != tuple(shape):
            found = "is not in the engine's checkpoint" if want is None else f"has shape {tuple(want)} there"
            raise SyncPlanError(f"weight sync plan: the actor exports {name!r} with shape {shape}, which {found} "
                                f"({spec.source}); the rollout model_path must hold the same architecture as the "
                                "actor")
    skipped = {"lm_head.weight"} if getattr(spec, "tied", False) else set()
    missing = sorted(set(spec.shapes) - set(exported) - skipped)
    if missing:
        raise SyncPlanError(f"weight sync plan: the engine's checkpoint ({spec.source}) has {missing[0]!r} "
                            f"({len(missing)} in total) which the actor does not export; architectures differ")
