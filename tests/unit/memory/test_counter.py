"""StorageCounter books each new storage once, views/in-place results never, and follows frees; under
FakeTensorMode it books fake storages (real shapes, no memory) when entered innermost."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ttrl_megatron.memory.counter import StorageCounter


def test_hand_made_sequence():
    weight = torch.ones(10, 10)  # exists before the counter: not booked, and neither are its views
    with StorageCounter() as c:
        a = torch.empty(1000)
        assert (c.current, c.peak) == (4000, 4000)
        v = a.view(10, 100)
        a.mul_(2)
        t = weight.t()
        assert c.current == 4000
        b = a.clone()
        assert (c.current, c.peak) == (8000, 8000)
        del b
        assert c.current == 4000
        c.reset_peak()
        assert c.peak == 4000
        d = a.double()  # a new 8000-byte storage
        assert (c.current, c.peak) == (12000, 12000)
        del d
        assert c.track(weight) == 400 and c.track([weight, a]) == 0  # already booked storages count once
        del a, v, t
        assert c.current == 400  # the weight is still alive (booked by track)
        assert c.largest(1) == [400]


def test_fake_tensors_at_real_size():
    with FakeTensorMode(), StorageCounter() as c:
        x = torch.empty(1 << 30, dtype=torch.bfloat16)  # 2 GiB, never allocated
        y = x.float()
        assert c.current == 6 << 30
        del y
        assert (c.current, c.peak) == (2 << 30, 6 << 30)


def test_nested_counter_books_inside_fake_mode():
    """``nested()`` keeps the counter innermost inside a fake mode entered around a model forward (measure.py), and
    fake tensors carry their mode into later ops outside it (a backward), which the outer counter books."""
    c = StorageCounter()
    with c:
        with FakeTensorMode(), c.nested():
            x = torch.empty(256)
            y = x * 2
        assert c.current == 2048
        z = y + 1  # outside the fake mode: y is fake, so is z
        assert c.current == 3072 and type(z).__name__ == "FakeTensor"
    del x, y, z
