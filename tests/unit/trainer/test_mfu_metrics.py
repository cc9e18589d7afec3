"""perf/mfu/actor (trainer/metrics.py): absent on the CPU, verl's fraction given a peak and the update's seconds,
and the same for a batch whatever its padding."""

import pytest
import torch

from ttrl_megatron.distributed.devices import use_compute_device
from ttrl_megatron.megatron.arch import ModelArchConfig
from ttrl_megatron.perf.flops import training_flops
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.metrics import ActorUpdateCost, actor_mfu_metrics, device_peak_flops

ARCH = ModelArchConfig.from_hf({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 4, "intermediate_size": 6,
                                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1})


def _batch(lengths, width: int, left: bool = True) -> DataProto:
    """``attention_mask`` ``[B, width]`` with ``lengths`` ones per row, padded on the left (prompts) or right."""
    rows = [[0] * (width - n) + [1] * n if left else [1] * n + [0] * (width - n) for n in lengths]
    return DataProto.from_dict({"attention_mask": torch.tensor(rows)})


def test_no_mfu_on_the_cpu():
    with use_compute_device("cpu"):
        assert device_peak_flops() is None
        assert ActorUpdateCost.on_this_device(ARCH, ppo_epochs=1) is None
    with use_compute_device("meta"):
        assert device_peak_flops() is None
    assert actor_mfu_metrics(_batch([3, 5], 6), 1.0, 1, None) == {}


def test_mfu_from_a_fake_peak_and_seconds():
    cost = ActorUpdateCost(ARCH, ppo_epochs=2, peak_flops=1e4)
    # tests/unit/perf/test_flops.py works out 18624 FLOPs for sequences of 3 and 5 tokens of this arch;
    # 2 epochs -> 37248 FLOPs; 4 devices at 1e4 FLOP/s for 2 s could do 8e4 -> 0.4656
    m = actor_mfu_metrics(_batch([3, 5], 6), 2.0, 4, cost)
    assert m == {"perf/mfu/actor": pytest.approx(2 * 18624 / (2.0 * 1e4 * 4))}
    assert actor_mfu_metrics(_batch([3, 5], 6), None, 4, cost) == {}  # no update this step: nothing to report


def test_padding_does_not_change_the_flops():
    cost = ActorUpdateCost(ARCH, ppo_epochs=1, peak_flops=1e4)
    lengths = [3, 5, 1]
    expected = training_flops(ARCH, lengths) / (1.0 * 1e4 * 1)
    for width, left in ((5, True), (16, True), (16, False)):
        assert actor_mfu_metrics(_batch(lengths, width, left), 1.0, 1, cost)["perf/mfu/actor"] == \
            pytest.approx(expected)


def test_peak_of_a_cuda_device_is_looked_up_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops(torch.device("cuda", 0)) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert device_peak_flops(torch.device("cuda", 0)) is None
