"""The GPU acceptance checks as pytest tests (marker ``gpu``; skipped without CUDA): the same cases as
scripts/gpu_check.sh (tests/gpu/acceptance.py). One GPU: a tiny Qwen2 trained by torchrun + ttrl_megatron.main in
bf16 with colocated vLLM (sleep mode), the post-sync parity check after every push, a save and a resume, an HF
export, and the per-phase peak memory within memory/plan.py's prediction with vLLM asleep during the update;
>= 2 GPUs: the same run at TP=2 and at PP=2."""
import pytest

from tests.gpu.acceptance import Case, gpu_count, make_inputs, run_case

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("gpu_inputs"))


def _assert_all(checks):
    failed = [f"{c.name}: {c.detail}" for c in checks if c.ok is False]
    assert not failed, "\n".join(failed)
    assert any(c.ok for c in checks)


def test_one_gpu_train_sync_save_resume_export_memory(inputs, tmp_path):
    _assert_all(run_case(Case("1gpu", 1, resume_and_export=True), inputs, tmp_path, "cuda", 480))


@pytest.mark.parametrize("case", [Case("tp2", 2, tp=2), Case("pp2", 2, pp=2)], ids=lambda c: c.name)
def test_two_gpus(inputs, tmp_path, case):
    if gpu_count() < 2:
        pytest.skip("needs 2 GPUs")
    _assert_all(run_case(case, inputs, tmp_path, "cuda", 480))
