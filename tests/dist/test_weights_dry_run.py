"""Dry run of the weight paths with the model on the ``meta`` device: the CPU proxy for host/device bugs (#13 items 1-2).

A GPU run keeps its parameters on ``cuda:LOCAL_RANK`` and runs the model-parallel collectives over NCCL. Here the
model is built on ``meta`` (``use_compute_device("meta")``), which refuses any mix with a host tensor just as CUDA
does, and the TP / PP / DP groups and the world act as NCCL groups for device checks (``device_checks``): every
tensor handed to a tensor collective on them must sit on ``collective_device(group)``.
For each layout of 2 gloo ranks (DP=2, TP=2, PP=2; one spawn) and two tiny checkpoints (Qwen2 tied with qkv bias,
Llama untied; vocab 300, padded to 384 / 512), the paths a GPU run takes:
- HF load (``load_hf_weights``): every fused q/k/v and gate/up tensor goes through ``index_copy_``;
- HF export (``iter_hf_weights``: TP all-gather + PP broadcast) and its bucketed form (``export_buckets``);
- the weight sync (``WeightSync`` plan check + ``push``) into an engine that records what it receives;
must run without a device error, and every tensor they yield must be on the compute device, in the planned order.
On the code before the fix, the HF load failed on ``index_copy_`` (host index/source into a meta parameter) and the
PP=2 export handed a host receive buffer to the (NCCL) pipeline broadcast.
"""
from __future__ import annotations

import pytest

from tests.dist.harness import run_distributed
from tests.integration.tiny_models import TinySpec, make_tiny_model

LAYOUTS = {"dp2": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
SPECS = {"qwen2_tied": TinySpec(arch="qwen2", tie_word_embeddings=True, seed=1),
         "llama_untied": TinySpec(arch="llama", tie_word_embeddings=False, seed=2)}
SMALL_BUCKET = 200_000


class _RecordingEngine:
    """Rollout-engine side of the sync for the dry run: validates names/shapes against the checkpoint (the real
    ``WeightSpec``) and records the device of every tensor it is handed (it cannot load meta tensors anywhere)."""

    def __init__(self, hf_dir: str):
        from ttrl_megatron.rollout.weights import WeightSpec

        self.weight_spec = WeightSpec.from_checkpoint(hf_dir)
        self.received: list[tuple[str, str]] = []

    def update_weights(self, buckets) -> dict:
        from ttrl_megatron.rollout.weights import iter_named_tensors

        for name, tensor in iter_named_tensors(buckets):
            self.weight_spec.check(name, tensor)
            self.received.append((name, str(tensor.device)))
        return {}


def _attempt(fn) -> dict:
    try:
        return {"ok": True, **(fn() or {})}
    except Exception as exc:  # noqa: BLE001 - the message is the result
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _dry_run(dirs: dict) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from tests.dist.device_checks import NcclDeviceChecker, meta_build, model_parallel_groups
    from ttrl_megatron.bridge import export as E
    from ttrl_megatron.bridge.sync import SyncCheckConfig, WeightSync
    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.distributed.devices import use_compute_device
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights, iter_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model
    from ttrl_megatron.megatron.parallel import init_distributed

    out = {}
    for layout_name, (tp, pp) in LAYOUTS.items():
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        init_distributed(ParallelLayout.from_world(dist.get_world_size(), tp, pp), seed=0)
        for key, hf_dir in dirs.items():
            with meta_build():
                model = build_gpt_model(ModelArchConfig.from_hf(hf_dir))
            facts = E.export_facts(model)
            expected = [(n, s) for n, s in E.stream_order(facts)]
            res = {"param_devices": sorted({str(p.device) for p in model.parameters()})}
            with use_compute_device("meta"), NcclDeviceChecker(model_parallel_groups()) as checker:
                res["load"] = _attempt(lambda: load_hf_weights(model, hf_dir))

                def export():
                    got = [(n, tuple(t.shape), str(t.device)) for n, t in iter_hf_weights(model)]
                    return {"order_ok": [(n, s) for n, s, _ in got] == expected,
                            "devices": sorted({d for _, _, d in got})}

                res["export"] = _attempt(export)

                def buckets():
                    stats = E.ExportStats()
                    got = [(n, str(t.device)) for b in E.export_buckets(model, SMALL_BUCKET, stats) for n, t in b]
                    plan = E.plan_buckets(facts, SMALL_BUCKET, 4)
                    return {"order_ok": [n for n, _ in got] == [n for n, _ in expected],
                            "devices": sorted({d for _, d in got}), "buckets": stats.buckets,
                            "planned": len(plan)}

                res["buckets"] = _attempt(buckets)

                def sync():
                    engine = _RecordingEngine(hf_dir)
                    stats = WeightSync(model, engine, bucket_bytes=SMALL_BUCKET,
                                       check=SyncCheckConfig(freq=0)).push()
                    return {"received": len(engine.received), "devices": sorted({d for _, d in engine.received}),
                            "tensors": stats["weight_sync/tensors"]}

                res["sync"] = _attempt(sync)
            res["collective_calls"] = sorted({name for name, _ in checker.calls})
            res["violations"] = checker.violations[:3]
            res["expected_tensors"] = len(expected)
            out[(layout_name, key)] = res
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry_run")
    dirs = {key: str(make_tiny_model(root / key, spec)) for key, spec in SPECS.items()}
    return run_distributed(_dry_run, 2, dirs, timeout_s=300)


CASES = [(layout, key) for layout in LAYOUTS for key in SPECS]


@pytest.mark.parametrize("layout,key", CASES)
def test_model_is_built_on_meta(results, layout, key):
    for rank in results:
        assert rank[(layout, key)]["param_devices"] == ["meta"]


@pytest.mark.parametrize("layout,key", CASES)
def test_hf_load_has_no_host_device_mix(results, layout, key):
    for rank in results:
        load = rank[(layout, key)]["load"]
        assert load["ok"], load.get("error")


@pytest.mark.parametrize("layout,key", CASES)
@pytest.mark.parametrize("path", ["export", "buckets", "sync"])
def test_export_paths_stay_on_the_compute_device(results, layout, key, path):
    for rank in results:
        res = rank[(layout, key)]
        got = res[path]
        assert got["ok"], got.get("error")
        assert got["devices"] == ["meta"], got
        if path == "sync":
            assert got["received"] == got["tensors"] == res["expected_tensors"]
        else:
            assert got["order_ok"]
        if path == "buckets":
            assert got["buckets"] == got["planned"] > 1


@pytest.mark.parametrize("layout,key", CASES)
def test_collectives_get_compute_device_buffers(results, layout, key):
    """TP=2 gathers and PP=2 broadcasts really went through the checked collectives, with no violation."""
    want = {"dp2": set(), "tp2": {"all_gather"}, "pp2": {"broadcast"}}[layout]
    for rank in results:
        res = rank[(layout, key)]
        assert res["violations"] == []
        assert want <= set(res["collective_calls"]), res["collective_calls"]
