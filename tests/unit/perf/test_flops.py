"""perf/flops.py: training FLOPs worked out by hand for a tiny architecture (verl's convention, module doc), the GQA
and tied/untied cases, the peak table's lookups and the MFU fraction."""

import pytest

from ttrl_megatron.megatron.arch import ModelArchConfig
from ttrl_megatron.perf.flops import (PEAK_BF16_FLOPS, matmul_params, model_flops_utilization, peak_bf16_flops,
                                      training_flops)


def _arch(kv_heads: int = 1, tied: bool = True) -> ModelArchConfig:
    """V=10, H=4, F=6, 2 layers, 2 query heads of head_dim 2 (H / heads), ``kv_heads`` key/value heads."""
    return ModelArchConfig.from_hf({
        "model_type": "qwen2", "vocab_size": 10, "hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": kv_heads, "tie_word_embeddings": tied})


def test_tiny_arch_by_hand():
    arch = _arch(kv_heads=1)
    # attention projections per layer: H * (q + k + v + o) = 4 * (2*2 + 1*2 + 1*2 + 2*2) = 4 * 12 = 48
    # SwiGLU MLP per layer: 3 * H * F = 3 * 4 * 6 = 72            -> 120 per layer, 240 for 2 layers
    # embedding + output layer: 2 * V * H = 2 * 10 * 4 = 80       -> N = 320
    assert matmul_params(arch) == 320
    # sequences of 3 and 5 tokens: sum(s) = 8, sum(s^2) = 9 + 25 = 34
    # dense: 6 * N * sum(s) = 6 * 320 * 8 = 15360
    # attention core (not halved for causal): 12 * layers * heads * head_dim * sum(s^2) = 12 * 2 * 2 * 2 * 34 = 3264
    assert training_flops(arch, [3, 5]) == 15360 + 3264 == 18624


def test_gqa_changes_only_the_kv_projections():
    mha, gqa = _arch(kv_heads=2), _arch(kv_heads=1)
    # MHA: k = v = 2*2 = 4 -> 4 * (4 + 4 + 4 + 4) = 64 per layer instead of 48: N = 320 + 2 * 16 = 352
    assert matmul_params(mha) == 352
    # the scores use every query head: the attention core term (3264) is the same with GQA and MHA
    assert training_flops(mha, [3, 5]) - 6 * 352 * 8 == training_flops(gqa, [3, 5]) - 6 * 320 * 8 == 3264


def test_tied_and_untied_embeddings_cost_the_same():
    # verl's rule: the output projection runs either way and the embedding is counted like a matmul (module doc)
    assert training_flops(_arch(tied=True), [7, 2]) == training_flops(_arch(tied=False), [7, 2])


def test_lengths_not_shapes_decide():
    arch = _arch()
    # one sequence of 8 costs more than two of 4 (attention grows with s^2), and empty rows cost nothing
    assert training_flops(arch, [8]) - training_flops(arch, [4, 4]) == 12 * 2 * 2 * 2 * (64 - 32)
    assert training_flops(arch, [4, 0, 4]) == training_flops(arch, [4, 4])
    assert training_flops(arch, []) == 0
    with pytest.raises(ValueError, match=">= 0"):
        training_flops(arch, [3, -1])


def test_qwen25_math_15b_magnitude():
    from tests.unit.megatron.test_arch import QWEN25_MATH_15B

    arch = ModelArchConfig.from_hf(QWEN25_MATH_15B)
    # 28 layers * (1536 * (1536 + 256 + 256 + 1536) + 3 * 1536 * 8960) + 2 * 151936 * 1536
    assert matmul_params(arch) == 28 * (1536 * 3584 + 3 * 1536 * 8960) + 2 * 151936 * 1536 == 1_776_943_104


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA A10", 125e12), ("NVIDIA L4", 121e12), ("NVIDIA GH200 480GB", 989e12),
    # no guess: an unlisted part, a near-miss name ("A10G" is not an A10 or an A100), no device (CPU)
    ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 4090", None), ("cpu", None), ("", None), (None, None),
])
def test_peak_lookup(name, peak):
    assert peak_bf16_flops(name) == peak


def test_peak_table_is_positive():
    assert all(v > 0 and keys for keys, v in PEAK_BF16_FLOPS.items())


def test_mfu_fraction():
    # 2 devices of 1e12 FLOP/s for 3 s could do 6e12; 1.5e12 done -> 25%
    assert model_flops_utilization(1.5e12, 3.0, 1e12, 2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="seconds > 0"):
        model_flops_utilization(1.0, 0.0, 1e12, 1)
