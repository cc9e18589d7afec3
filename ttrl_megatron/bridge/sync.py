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

Parity check (every `check.freq`-th push, and on demand via `check_parity`): a few fixed sequences are scored
teacher-forced by the engine (`compute_logprobs`, raw log-probs at temperature 1) and by the actor
(`compute_log_prob`, with its log-prob temperature set to 1 for the duration of the call). The sequences are the
model's OWN samples: seeded random prompts continued by the engine (temperature 1, a fixed seed, EOS ignored), drawn
when the sync is built and again after every check (so they are samples of the previously checked policy), rank 0's
broadcast to all. Scoring random token ids instead puts most tokens deep in the tail (log-probs tens of nats down
for a trained LM), where bf16 rounding of the logits moves log-probs by tenths of a nat: a correct bf16 sync then
false-alarms.
The verdict uses NeMo-RL's `token_mult_prob_error` = mean over all ranks' tokens of exp(|logp_rollout -
logp_actor|): for small differences its excess over 1 is the mean |dlogp| (a healthy dense bf16 pair sits at
~0.01-0.03 nats, reference/gpu-bringup-anchors.md §11; NeMo-RL's CI gates it at 1.05-1.1), while a few tokens that
moved by nats (what a wrong tensor does to the tokens it touches) raise it exponentially instead of averaging away.
It raises `SyncParityError` (default) or warns when the excess is above `check.max_mult_prob_error`; the mean and
max |dlogp| are reported too. tests/integration/test_bridge_sync.py shows, with bf16 on both sides, correct syncs
passing and a transposed, a stale and a scaled tensor failing.

The check's two halves can be split around a colocated refit (rollout/colocate.py): `begin_check` scores the
actor side BEFORE the push (its weights do not change during a push, and its parameters may be offloaded after it),
`load` streams the weights, `end_check` scores the engine side once its KV cache is awake again.

The train-inference mismatch on real rollouts (verl's `training/rollout_probs_diff_*`) is pure math:
algorithms/mismatch.py.

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
    num_sequences / prompt_len / response_len / seed: the scored sequences: seeded random prompts of prompt_len
      ids, each continued by response_len tokens the engine samples itself (see the module docstring).
    max_mult_prob_error: bound on token_mult_prob_error - 1 = mean exp(|logp_rollout - logp_actor|) - 1 over the
      response tokens of every rank (~ the mean |dlogp| when it is small). fp32 on both sides: ~1e-6; bf16 on both
      sides: ~1e-3 on CPU's tiny models (tests/integration/test_bridge_sync.py), 0.01-0.03 reported for real bf16
      models on GPU; wrong tensors: 0.08 (a stale embedding) to thousands (a transposed projection).
    on_failure: "raise" (SyncParityError) or "warn" (a RuntimeWarning; the metrics are returned either way).
    """

    freq: int = 1
    num_sequences: int = 4
    prompt_len: int = 8
    response_len: int = 16
    seed: int = 0
    max_mult_prob_error: float = 0.05
    on_failure: str = "raise"

    def __post_init__(self) -> None:
        for name in ("freq", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"SyncCheckConfig.{name}={getattr(self, name)!r}: must be an int >= 0")
        for name in ("num_sequences", "prompt_len", "response_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SyncCheckConfig.{name}={getattr(self, name)!r}: must be an int >= 1")
        if not self.max_mult_prob_error > 0:
            raise ValueError(f"SyncCheckConfig.max_mult_prob_error={self.max_mult_prob_error!r}: must be > 0")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"SyncCheckConfig.on_failure={self.on_failure!r}: use one of {ON_FAILURE}")


# --- fixed sequences and the actor's side of the parity check ------------------------------------------------

def fixed_sequences(vocab_size: int, check: SyncCheckConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Seeded random (prompts, responses) of the configured lengths; identical on every rank."""
    gen = torch.Generator().manual_seed(check.seed)  # host: draws host token ids (returned as lists)
    ids = torch.randint(0, vocab_size, (check.num_sequences, check.prompt_len + check.response_len), generator=gen)  # host: ids
    return ids[:, :check.prompt_len].tolist(), ids[:, check.prompt_len:].tolist()


def sampled_sequences(engine, vocab_size: int, check: SyncCheckConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Seeded random prompts continued by the engine's own samples (temperature 1, EOS ignored, seed check.seed).

    Every rank gets the same prompts and seed, so the ranks of a rollout TP group call their engine alike; rank 0's
    continuations are then broadcast, so every rank scores the same sequences. Collective."""
    from ttrl_megatron.rollout.base import SamplingConfig

    prompts, _ = fixed_sequences(vocab_size, check)
    sampling = SamplingConfig(temperature=1.0, max_tokens=check.response_len, seed=check.seed, ignore_eos=True,
                              logprobs=False)
    responses = engine.generate(prompts, 1, sampling).response_ids
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # the actor scores them DP-sharded: every rank must hold the very same sequences (rank 0's)
        box = [responses]
        dist.broadcast_object_list(box, src=0)
        responses = box[0]
    return prompts, responses


def verl_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
               pad_id: int = 0) -> dict[str, torch.Tensor]:
    """verl layout of (prompt, response) pairs: input_ids / attention_mask `[B, P+R]` (prompts left-padded to P,
    responses right-padded to R), responses / response_mask `[B, R]`."""
    width_p = max(len(p) for p in prompts)
    width_r = max(len(r) for r in responses)
    b = len(prompts)
    ids = torch.full((b, width_p + width_r), pad_id, dtype=torch.long)  # host: the driver batch
    mask = torch.zeros(b, width_p + width_r, dtype=torch.long)  # host: the driver batch
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, width_p - len(p):width_p + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)  # host: the driver batch
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
    """|logp_rollout - logp_actor| over all response tokens: `rollout/actor_logprob_diff_{max,mean}` and NeMo-RL's
    `rollout/token_mult_prob_error` = mean exp(|d|) (1.0 = identical)."""
    diffs = torch.tensor([abs(a - b) for ra, rb in zip(rollout, actor) for a, b in zip(ra, rb)],  # host: metrics
                         dtype=torch.float64)
    return {"rollout/actor_logprob_diff_max": float(diffs.max()),
            "rollout/actor_logprob_diff_mean": float(diffs.mean()),
            "rollout/token_mult_prob_error": float(diffs.exp().mean())}


def _over_all_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Max of the maxima and mean of the means over every rank's engine, so all ranks report and decide alike
    (one rank raising while the others go on would hang them at their next collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return metrics
    device = collective_device()
    worst = torch.tensor([metrics["rollout/actor_logprob_diff_max"]], dtype=torch.float64, device=device)
    means = torch.tensor([metrics["rollout/actor_logprob_diff_mean"], metrics["rollout/token_mult_prob_error"]],
                         dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    dist.all_reduce(means)
    means = means / dist.get_world_size()
    return {"rollout/actor_logprob_diff_max": float(worst),
            "rollout/actor_logprob_diff_mean": float(means[0]), "rollout/token_mult_prob_error": float(means[1])}


# --- the driver ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PendingCheck:
    """The actor's half of a parity check, scored before the push (see `WeightSync.begin_check`)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    actor: list[list[float]]


class WeightSync:
    """Pushes this rank's Megatron actor into this rank's rollout engine and checks parity.

    model_chunks: the actor's model chunk(s) on this rank (DDP-wrapped or not). engine: a `RolloutEngine`.
    arch: the run's `ModelArchConfig`, cross-checked against the one the model was built from (None: skip).
    bucket_bytes: bucket size of the export (whole vLLM modules per bucket; a module bigger than this travels
      alone). actor: an object with `compute_log_prob(DataProto)` and `log_prob_config` (`MegatronActor`) for the
      parity check; required when `check.freq > 0`. With a check, the scored sequences are sampled from the engine
      here (collective over a rollout TP group: build the sync on every rank at the same point, engine awake).
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
        self.sequences = sampled_sequences(engine, self.facts.vocab_size, check) if check.freq > 0 else None

    def push(self) -> dict[str, float]:
        """Stream the actor's weights into the engine; returns `weight_sync/*` stats (+ parity metrics when due).

        The whole thing in one call, for an engine that stays awake; a colocated step splits it (rollout/colocate.py).
        Collective over the model-parallel group: call it on every rank."""
        pending = self.begin_check()
        stats = self.load()
        stats.update(self.end_check(pending))
        return stats

    def load(self) -> dict[str, float]:
        """Stream the weights only (no parity check); returns the `weight_sync/*` stats. Collective."""
        start = time.perf_counter()
        export = E.ExportStats()
        export_s = self._load(E.export_buckets(self.model, self.bucket_bytes, export))
        seconds = time.perf_counter() - start
        self.pushes += 1
        return {
            "weight_sync/bytes": float(export.bytes), "weight_sync/seconds": seconds,
            "weight_sync/gb_per_s": export.bytes / seconds / 1e9, "weight_sync/buckets": float(export.buckets),
            "weight_sync/tensors": float(export.tensors), "weight_sync/export_seconds": export_s,
            "weight_sync/load_seconds": seconds - export_s,
            "weight_sync/peak_bucket_bytes": float(export.peak_bucket_bytes),
            "weight_sync/peak_extra_bytes": float(export.peak_extra_bytes),
        }

    def check_due(self) -> bool:
        """Whether the NEXT push is one the check runs after (every `check.freq`-th)."""
        return bool(self.check.freq) and (self.pushes + 1) % self.check.freq == 0

    def begin_check(self) -> PendingCheck | None:
        """The actor's half of the check when the next push is due for one: its log-probs of the scored sequences
        (collective over the actor's ranks; needs the actor's parameters on the device, not the engine)."""
        if not self.check_due():
            return None
        prompts, responses = self._scored()
        from ttrl_megatron.megatron.parallel import current_layout

        return PendingCheck(prompts, responses, actor_logprobs(self.actor, prompts, responses, current_layout().dp))

    def end_check(self, pending: PendingCheck | None) -> dict[str, float]:
        """The engine's half and the verdict ({} when no check was begun); needs the engine awake."""
        if pending is None:
            return {}
        rollout = self.engine.compute_logprobs(pending.prompts, pending.responses)
        metrics = self._verdict(rollout, pending.actor)
        # the next check scores samples of the policy just pushed, so they stay the model's likely tokens however
        # far training moves it (samples of an old policy drift into the tail, where bf16 noise grows)
        self.sequences = sampled_sequences(self.engine, self.facts.vocab_size, self.check)
        return metrics

    def check_parity(self, prompts: Sequence[Sequence[int]] | None = None,
                     responses: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
        """Score sequences (default: the sync's sampled ones) with engine and actor now; return the
        `rollout/actor_logprob_diff_{max,mean}` and `rollout/token_mult_prob_error` metrics and raise or warn
        (per `check.on_failure`) when token_mult_prob_error - 1 exceeds `check.max_mult_prob_error`. Collective."""
        if self.actor is None:
            raise ValueError("WeightSync.check_parity needs actor= at construction")
        if prompts is None or responses is None:
            prompts, responses = self._scored()
        from ttrl_megatron.megatron.parallel import current_layout

        prompts, responses = [list(p) for p in prompts], [list(r) for r in responses]
        rollout = self.engine.compute_logprobs(prompts, responses)
        return self._verdict(rollout, actor_logprobs(self.actor, prompts, responses, current_layout().dp))

    def _scored(self) -> tuple[list[list[int]], list[list[int]]]:
        if self.sequences is None:
            self.sequences = sampled_sequences(self.engine, self.facts.vocab_size, self.check)
        return self.sequences

    def _verdict(self, rollout: Sequence[Sequence[float]], actor: Sequence[Sequence[float]]) -> dict[str, float]:
        metrics = _over_all_ranks(logprob_diff(rollout, actor))
        excess = metrics["rollout/token_mult_prob_error"] - 1.0
        if not excess <= self.check.max_mult_prob_error:
            message = (f"weight sync parity: rollout vs actor token_mult_prob_error = {excess + 1:.4g} (mean |dlogp| "
                       f"{metrics['rollout/actor_logprob_diff_mean']:.3g}, max "
                       f"{metrics['rollout/actor_logprob_diff_max']:.3g} nats) after push {self.pushes}, above 1 + "
                       f"SyncCheckConfig.max_mult_prob_error={self.check.max_mult_prob_error:g} "
                       "(actor_rollout_ref.rollout.sync.logprob_diff_threshold); the rollout engine does not hold the "
                       "actor's weights (mapping/dtype problem?)")
            if self.check.on_failure == "raise":
                raise SyncParityError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
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
