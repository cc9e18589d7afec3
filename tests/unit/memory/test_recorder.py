"""PhaseMemory: nested phases get their own peaks (the outer one the max over everything inside), and PhaseTimer
reports them next to the timings; without CUDA the trainer's timer records no memory."""

import torch

from ttrl_megatron.memory.counter import StorageCounter
from ttrl_megatron.memory.recorder import CounterBackend, PhaseMemory, phase_memory
from ttrl_megatron.trainer.metrics import PhaseTimer

GIB = float(1 << 30)


def test_nested_phases_and_timer():
    counter = StorageCounter()
    memory = PhaseMemory(CounterBackend(counter), reduce_over_ranks=False)
    timer = PhaseTimer(memory=memory)
    with counter:
        keep = torch.empty(250)  # 1000 bytes alive before the step
        with timer("step"):
            with timer("gen"):
                tmp = torch.empty(500)  # +2000, freed inside
                del tmp
            with timer("update"):
                big = torch.empty(2000)  # +8000 and kept
            after = torch.empty(100)  # +400 after the inner phases, inside the step
        first_gen = round(memory.peaks["gen"][0])
        with timer("gen"):  # a second visit keeps the max (peaks are absolute, as max_memory_allocated)
            small = torch.empty(10)
    peaks = {k: round(v * GIB) for k, v in timer.metrics().items() if k.startswith("memory/peak_gib/")}
    assert first_gen == 3000
    assert peaks == {"memory/peak_gib/gen": 9440, "memory/peak_gib/update": 9000, "memory/peak_gib/step": 9400}
    assert {"timing_s/step", "timing_s/gen", "timing_s/update", "memory/peak_reserved_gib/step",
            "memory/device_used_gib/update"} <= set(timer.metrics())
    del keep, big, after, small


def test_no_memory_metrics_without_cuda():
    if torch.cuda.is_available():
        return
    timer = PhaseTimer()
    with timer("gen"):
        torch.empty(10)
    assert set(timer.metrics()) == {"timing_s/gen"}
    assert phase_memory().metrics() == {}
