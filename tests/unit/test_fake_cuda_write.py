"""HF load writes into ``cuda:N`` parameters, on a CPU-only build: FakeTensorMode with a fake ``cuda:1`` (#13 item 1).

The meta dry run (tests/dist/test_weights_dry_run.py) shows the load never mixes host and device; it cannot show
WHICH device is asked for (meta has no index). Under ``FakeTensorMode`` a CPU-only torch accepts ``cuda:1``
factories and refuses mixing devices exactly as CUDA does, including ``cuda:0`` with ``cuda:1``
(reference/gpu-bringup-anchors.md §12). Here every piece of a real tiny checkpoint goes through
``hf_io._write`` into fake ``cuda:1`` parameters of the right shapes: the fused q/k/v and gate/up rows
(``index_copy_``) must land with their index and source on ``cuda:1``, the parameter's own device (not the current
device ``cuda:0`` and not the host). Only the row path runs there: fake CUDA cannot execute ``copy_`` (it aborts
with "PyTorch is not linked with support for cuda devices"), so the whole-tensor path is left to the meta dry run.
A subprocess, because fake CUDA kernels that do reach real code abort the process.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.integration.tiny_models import TinySpec, make_tiny_model

SCRIPT = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file
    from torch._subclasses.fake_tensor import FakeTensorMode
    from ttrl_megatron.bridge import names as N
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import _write, arch_facts

    hf_dir = sys.argv[1]
    arch = ModelArchConfig.from_hf(hf_dir)
    facts = arch_facts(arch, arch.padded_vocab_size(1))
    tensors = load_file(hf_dir + "/model.safetensors")
    written = 0
    with FakeTensorMode(allow_non_fake_inputs=True):
        params = {s.megatron_name: torch.empty(N.megatron_full_shape(s, facts), device="cuda:1")
                  for s in N.param_specs(facts)}
        for name, t in tensors.items():
            for piece in N.hf_to_megatron_shard(name, t, facts, 0, 1):
                if piece.rows is None or piece.megatron_name not in params:
                    continue
                _write(params[piece.megatron_name], piece, name)
                written, row_piece = written + 1, piece
        assert {str(p.device) for p in params.values()} == {"cuda:1"}
        print("WROTE", written)
        try:  # the proxy has teeth: what the code did before the fix (host index and source) is refused
            params[row_piece.megatron_name].data.index_copy_(0, row_piece.rows, row_piece.data)
            print("ACCEPTED host index")
        except RuntimeError as exc:
            print("REFUSED", str(exc).splitlines()[0])
""")


def test_row_writes_land_on_the_parameters_cuda_device(tmp_path):
    hf_dir = str(make_tiny_model(tmp_path / "m", TinySpec(arch="qwen2", tie_word_embeddings=True)))
    run = subprocess.run([sys.executable, "-c", SCRIPT, hf_dir], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WROTE 16" in run.stdout, run.stdout  # 2 layers x (q, k, v weights + q, k, v biases + gate, up)
    refused = [line for line in run.stdout.splitlines() if line.startswith("REFUSED")]
    assert refused and "cuda:1" in refused[0] and "cpu" in refused[0], run.stdout
