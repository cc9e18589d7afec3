"""The device policy (ttrl_megatron.distributed.devices): defaults on this machine and the dry-run pin."""
import torch

from ttrl_megatron.distributed.devices import collective_device, compute_device, host_device, use_compute_device


def test_defaults_without_cuda():
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert compute_device() == expected
    assert host_device() == torch.device("cpu")
    assert collective_device() == expected  # no process group: the compute device


def test_pin_nests_and_unwinds():
    with use_compute_device("meta") as dev:
        assert dev == torch.device("meta") and compute_device() == dev
        with use_compute_device(torch.device("cpu")):
            assert compute_device() == torch.device("cpu")
        assert compute_device() == torch.device("meta")
    assert compute_device() != torch.device("meta")


def test_meta_pin_catches_a_host_device_mix():
    """The point of the pin: a host tensor meeting a compute-device tensor fails as on CUDA."""
    with use_compute_device("meta"):
        param = torch.zeros(4, 3, device=compute_device())
        try:
            param.index_copy_(0, torch.tensor([0, 1]), torch.ones(2, 3))
        except (RuntimeError, NotImplementedError):
            pass
        else:  # pragma: no cover - torch behaviour changed
            raise AssertionError("meta parameter accepted a host index/source")
        param.index_copy_(0, torch.tensor([0, 1], device=param.device), torch.ones(2, 3, device=param.device))
