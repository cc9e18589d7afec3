"""Batch container: every verb, and errors that name the offending key."""

import numpy as np
import pytest
import torch

from ttrl_megatron.protocol import BatchError, DataProto


def make(n=4):
    return DataProto.from_dict(
        tensors={"ids": torch.arange(n * 3).view(n, 3), "score": torch.arange(n, dtype=torch.float32)},
        non_tensors={"prompt": [f"p{i}" for i in range(n)], "rm": [{"ground_truth": str(i)} for i in range(n)]},
        meta_info={"temperature": 1.0},
    )


def test_len_keys_and_object_arrays():
    dp = make()
    assert len(dp) == 4
    assert dp.keys() == ["ids", "score", "prompt", "rm"]
    assert dp.non_tensor_batch["prompt"].dtype == object
    assert isinstance(dp.non_tensor_batch["rm"][0], dict)  # dicts are kept whole, not exploded by numpy
    assert DataProto().__len__() == 0


def test_mismatched_batch_sizes_name_the_key():
    with pytest.raises(BatchError, match=r"non_tensor_batch\['prompt'\] has 3 rows but batch\['ids'\] has 4"):
        DataProto.from_dict({"ids": torch.zeros(4, 2)}, {"prompt": ["a", "b", "c"]})
    with pytest.raises(BatchError, match=r"batch\['b'\] has 2 rows"):
        DataProto.from_dict({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(BatchError, match="scalar"):
        DataProto.from_dict({"a": torch.tensor(1.0)})


def test_missing_keys_are_named():
    dp = make()
    with pytest.raises(BatchError, match="missing key 'nope' in batch"):
        dp.select(batch_keys=["nope"])
    with pytest.raises(BatchError, match="missing key 'uid' in non_tensor_batch"):
        dp.obj("uid")
    with pytest.raises(BatchError, match="missing key 'x' in meta_info"):
        dp.select(meta_info_keys=["x"])


def test_repeat_interleave_and_tile():
    dp = make(2)
    r = dp.repeat(3, interleave=True)
    assert r.batch["score"].tolist() == [0, 0, 0, 1, 1, 1]
    assert list(r.non_tensor_batch["prompt"]) == ["p0"] * 3 + ["p1"] * 3
    t = dp.repeat(2, interleave=False)
    assert t.batch["score"].tolist() == [0, 1, 0, 1]
    # copies of a row's dict are independent: mutating one must not change its siblings
    r.non_tensor_batch["rm"][0]["ground_truth"] = "changed"
    assert r.non_tensor_batch["rm"][1]["ground_truth"] == "0"
    assert dp.non_tensor_batch["rm"][0]["ground_truth"] == "0"
    with pytest.raises(BatchError):
        dp.repeat(0)


def test_index_slice_list_mask():
    dp = make(5)
    assert dp[1].batch["score"].tolist() == [1.0]
    assert dp[-1].non_tensor_batch["prompt"].tolist() == ["p4"]
    assert dp[1:3].batch["ids"].tolist() == [[3, 4, 5], [6, 7, 8]]
    assert dp[[4, 0]].non_tensor_batch["prompt"].tolist() == ["p4", "p0"]
    assert dp[np.array([2])].batch["score"].tolist() == [2.0]
    mask = torch.tensor([True, False, True, False, False])
    assert dp[mask].non_tensor_batch["prompt"].tolist() == ["p0", "p2"]
    assert len(dp[[]]) == 0
    with pytest.raises(BatchError, match="out of range"):
        dp[7]
    with pytest.raises(BatchError, match="boolean mask"):
        dp[torch.tensor([True, False])]


def test_split_chunk_concat_roundtrip():
    dp = make(5)
    parts = dp.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    back = DataProto.concat(parts)
    assert torch.equal(back.batch["ids"], dp.batch["ids"])
    assert back.non_tensor_batch["prompt"].tolist() == dp.non_tensor_batch["prompt"].tolist()
    assert back.meta_info == {"temperature": 1.0}
    with pytest.raises(BatchError, match="5 % 2"):
        dp.chunk(2)
    assert [len(c) for c in make(6).chunk(3)] == [2, 2, 2]
    with pytest.raises(BatchError, match="differing"):
        DataProto.concat([make(2), make(2).select(batch_keys=["ids"])])


def test_union_and_conflicts():
    a = make(3).select(batch_keys=["ids"], non_tensor_batch_keys=["prompt"])
    b = make(3).select(batch_keys=["score", "ids"], non_tensor_batch_keys=["rm"])
    u = a.union(b)
    assert set(u.keys()) == {"ids", "score", "prompt", "rm"}
    c = make(3)
    c.batch["ids"] = c.batch["ids"] + 1
    with pytest.raises(BatchError, match="key 'ids'"):
        a.union(c)
    with pytest.raises(BatchError, match="batch sizes differ"):
        a.union(make(2))


def test_reorder_in_place_and_pop():
    dp = make(4)
    assert dp.reorder([3, 2, 1, 0]) is dp
    assert dp.batch["score"].tolist() == [3, 2, 1, 0]
    assert dp.non_tensor_batch["prompt"].tolist() == ["p3", "p2", "p1", "p0"]
    with pytest.raises(BatchError, match="permutation"):
        dp.reorder([0, 0, 1, 2])
    popped = dp.pop(batch_keys=["score"], non_tensor_batch_keys=["rm"])
    assert "score" not in dp and "rm" not in dp
    assert popped.keys() == ["score", "rm"]


def test_operations_do_not_modify_inputs():
    dp = make(4)
    ids = dp.batch["ids"].clone()
    dp.repeat(2)
    dp[[1, 2]]
    dp.split(3)
    DataProto.concat([dp, dp])
    assert torch.equal(dp.batch["ids"], ids)
    assert len(dp) == 4
