"""Format detection (megatron/foreign/detect.py): every layout recognised, every refusal one clear error.

Bad folders are built in tmp dirs from the real NeMo-2 fixture's files (metadata.json etc.), no torch needed.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

from ttrl_megatron.megatron.foreign import ForeignCheckpointError, detect_format, resolve_format

from tests.shared_paths import NEMO2_FIXTURE as FIXTURE  # ../shared beside the checkout
needs_fixture = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=f"NeMo-2 fixture {FIXTURE} is not present")


def _touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def _dist_dir(path, backend="torch_dist"):
    """A folder with the files detection looks at in a dist-checkpoint (metadata.json + common.pt)."""
    _touch(os.path.join(path, "metadata.json"), json.dumps({"sharded_backend": backend, "sharded_backend_version": 1}))
    _touch(os.path.join(path, "common.pt"))
    return path


@needs_fixture
def test_real_nemo2_fixture_and_its_hf_folder():
    fmt = detect_format(os.path.join(FIXTURE, "nemo2"))
    assert (fmt.kind, fmt.key_prefix) == ("nemo2", "module.")
    assert fmt.weights_dir.endswith("nemo2/weights") and fmt.config_file.endswith("context/model.yaml")
    assert fmt.tokenizer_dir.endswith("context/nemo_tokenizer")
    assert detect_format(os.path.join(FIXTURE, "hf")).kind == "hf"
    assert resolve_format(os.path.join(FIXTURE, "nemo2"), "nemo2").kind == "nemo2"


def test_mbridge_root_iteration_and_megatron_lm(tmp_path):
    it = _dist_dir(str(tmp_path / "mb" / "iter_0000042"))
    _touch(os.path.join(it, "run_config.yaml"), "model: {}\n")
    _touch(str(tmp_path / "mb" / "latest_checkpointed_iteration.txt"), "42\n")
    for path in (str(tmp_path / "mb"), it):
        fmt = detect_format(path)
        assert (fmt.kind, fmt.key_prefix, fmt.weights_dir) == ("mbridge", "", it)
    mlm = _dist_dir(str(tmp_path / "mlm" / "release"))
    _touch(str(tmp_path / "mlm" / "latest_checkpointed_iteration.txt"), "release")
    assert detect_format(str(tmp_path / "mlm")).kind == "megatron_lm" and detect_format(mlm).key_prefix == ""
    _touch(str(tmp_path / "ours" / "ttrl_checkpoint.json"), "{}")
    assert detect_format(str(tmp_path / "ours")).kind == "ttrl"


def test_nemo1_folder_and_tar(tmp_path):
    folder = tmp_path / "n1"
    _touch(str(folder / "model_config.yaml"), "num_layers: 2\n")
    _dist_dir(str(folder / "model_weights"))
    fmt = detect_format(str(folder))
    assert (fmt.kind, fmt.key_prefix) == ("nemo1", "model.")
    tar = str(tmp_path / "model.nemo")
    with tarfile.open(tar, "w") as t:
        t.add(str(folder / "model_config.yaml"), arcname="./model_config.yaml")
    assert detect_format(tar).kind == "nemo1"


def test_unknown_path_lists_what_was_looked_for(tmp_path):
    (tmp_path / "iter_0000005").mkdir()
    with pytest.raises(ForeignCheckpointError, match=r"unknown checkpoint format\. Looked for nemo2: "
                                                     r"context/model\.yaml.*megatron_lm.*hf: config\.json.*"
                                                     r"iter_0000005/ but no latest_checkpointed_iteration\.txt"):
        detect_format(str(tmp_path))
    with pytest.raises(ForeignCheckpointError, match="does not exist"):
        detect_format(str(tmp_path / "nope"))
    plain = _touch(str(tmp_path / "weights.bin"), "x")
    with pytest.raises(ForeignCheckpointError, match="is a file; expected a checkpoint folder"):
        detect_format(plain)


@pytest.mark.parametrize("case, message", [
    ("missing_weights", r"weights folder .*/weights is missing"),
    ("zarr", r"sharded_backend='zarr'\. megatron-core 0\.16 has no zarr strategy.*megatron-core<=0\.15\.3 can"),
    ("adapter_only", r"adapter_metadata\.json: this is a PEFT adapter-only checkpoint.*merge"),
    ("adapter_only_in_weights", r"adapter_metadata\.json: this is a PEFT adapter-only checkpoint"),
    ("not_dist", r"no metadata\.json, so this is not a megatron dist-checkpoint"),
    ("io_json_only", r"context/model\.yaml is missing"),
    ("bad_tracker", r"holds 'latest'; expected an iteration number or 'release'"),
    ("tracker_to_nowhere", r"points at iter_0000009/, which does not exist"),
    ("nemo1_pickle", r"NeMo-1 checkpoint with pickled weights \(model_weights\.ckpt\)"),
    ("other_backend", r"sharded_backend='zarr2'; only 'torch_dist' is supported"),
])
def test_refusals(tmp_path, case, message):
    root = str(tmp_path / case)
    if case in ("missing_weights", "zarr", "adapter_only", "adapter_only_in_weights", "not_dist", "other_backend"):
        _touch(os.path.join(root, "context", "model.yaml"), "config: {}\n")
    if case in ("zarr", "adapter_only", "other_backend"):
        _dist_dir(os.path.join(root, "weights"), {"zarr": "zarr", "other_backend": "zarr2"}.get(case, "torch_dist"))
    if case == "adapter_only":
        _touch(os.path.join(root, "adapter_metadata.json"), "{}")
    if case == "adapter_only_in_weights":
        _touch(os.path.join(root, "weights", "adapter_metadata.json"), "{}")
    if case == "not_dist":
        _touch(os.path.join(root, "weights", "__0_0.distcp"))
    if case == "io_json_only":
        _touch(os.path.join(root, "context", "io.json"), "{}")
    if case == "bad_tracker":
        _touch(os.path.join(root, "latest_checkpointed_iteration.txt"), "latest")
    if case == "tracker_to_nowhere":
        _touch(os.path.join(root, "latest_checkpointed_iteration.txt"), "9")
    if case == "nemo1_pickle":
        _touch(os.path.join(root, "model_config.yaml"), "num_layers: 2\n")
        _touch(os.path.join(root, "model_weights.ckpt"))
    with pytest.raises(ForeignCheckpointError, match=message):
        detect_format(root)


@needs_fixture
def test_load_format_must_match(tmp_path):
    with pytest.raises(ForeignCheckpointError, match=r"load_format='mbridge' but .* holds a 'nemo2' checkpoint "
                                                     r"\(found context/model\.yaml\)"):
        resolve_format(os.path.join(FIXTURE, "nemo2"), "mbridge")
    with pytest.raises(ForeignCheckpointError, match=r"load_format='nemo3' is not one of"):
        resolve_format(os.path.join(FIXTURE, "nemo2"), "nemo3")


@needs_fixture
def test_nemo1_is_detected_but_not_loadable(tmp_path):
    from ttrl_megatron.megatron.foreign.api import read_foreign

    folder = tmp_path / "n1"
    _touch(str(folder / "model_config.yaml"), "num_layers: 2\n")
    shutil.copytree(os.path.join(FIXTURE, "nemo2", "weights"), str(folder / "model_weights"))
    with pytest.raises(ForeignCheckpointError, match=r"'nemo1' checkpoints cannot be loaded by this reader"):
        read_foreign(str(folder))
