"""The train-inference mismatch metrics when each row's rollout log-probs stayed on the rank that sampled them
(trainer/corrections.py ``rollout_mismatch_metrics``): per-rank sums, all-gathered, give the metrics of the whole
batch measured in one place (algorithms/mismatch.py ``rollout_probs_diff``, checked against its definition in
tests/integration/test_bridge_sync.py)."""

import pytest
import torch

from ttrl_megatron.algorithms.mismatch import probs_diff_sums, rollout_probs_diff
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.corrections import LOGPROB_RANK, RolloutCorrection, rollout_mismatch_metrics


def _batch(seed: int = 0, rows: int = 7, width: int = 9) -> DataProto:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=g) * 3
    rollout = old + 0.05 * torch.randn(rows, width, generator=g)
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    return DataProto.from_dict({"old_log_probs": old, "rollout_log_probs": rollout, "response_mask": mask}, {})


def test_rows_held_on_two_ranks_give_the_whole_batch_metrics():
    full = _batch()
    want = rollout_probs_diff(full.batch["rollout_log_probs"], full.batch["old_log_probs"],
                              full.batch["response_mask"])
    owner = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    views = []
    for rank in (0, 1):  # what each rank holds: its own rows' rollout log-probs, zeros in the others'
        t = dict(full.batch)
        t["rollout_log_probs"] = torch.where((owner == rank)[:, None], t["rollout_log_probs"], 0.0)
        t[LOGPROB_RANK] = owner
        views.append(DataProto.from_dict(t, {}))
    sums = [None, None]
    for rank, view in enumerate(views):  # the sums each rank would put into the all-gather
        mine = (owner == rank).long()[:, None]
        sums[rank] = probs_diff_sums(view.batch["rollout_log_probs"], view.batch["old_log_probs"],
                                     view.batch["response_mask"] * mine)
    for rank, view in enumerate(views):
        got = rollout_mismatch_metrics(view, rank, lambda local, rank=rank: [
            local if r == rank else sums[r] for r in (0, 1)])
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    # a batch measured in one place needs no gather
    assert rollout_mismatch_metrics(full, 0, None) == want


def test_rollout_correction_refuses_a_batch_with_other_ranks_log_probs_missing():
    batch = _batch()
    batch.batch[LOGPROB_RANK] = torch.zeros(len(batch), dtype=torch.long)
    with pytest.raises(RuntimeError, match="only this rank's rollout log-probs"):
        RolloutCorrection(None)(batch)
