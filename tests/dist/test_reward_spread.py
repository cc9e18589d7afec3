"""Grading spread over ranks (trainer/labels.py, #13 item 11): with 2 processes every rank votes and grades only its
contiguous share of the prompts, and every rank ends with exactly the rows, labels, scores and TTRL metrics of one
process grading the whole batch -- with random sample selection, uneven shares and a rank whose share is empty."""

import torch

from tests.dist.harness import run_distributed
from ttrl_megatron.config import TTRLConfig
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.trainer.labels import RewardStep
from ttrl_megatron.ttrl import MajorityRewardManager

N_VOTES, N_SAMPLES = 4, 2
VOTES = [["3", "3", "5", None], ["7", "8", "8", "8"], ["1", "1", "1", "1"], [None, None, "2", "4"],
         ["9", "10", "10", "9"]]
TRUTH = ["3", "7", "1", "4", "9"]


def _batch(num_prompts: int) -> DataProto:
    rows = [(p, a) for p in range(num_prompts) for a in VOTES[p]]
    objects = {"response_text": [f"x \\boxed{{{a}}}" if a else "none" for _, a in rows],
               "uid": [f"1:{p}" for p, _ in rows], "reward_model": [{"ground_truth": TRUTH[p]} for p, _ in rows],
               "finish_reason": ["stop"] * len(rows)}
    mask = torch.tensor([[1, 1, 1, 0]] * len(rows))
    return DataProto.from_dict({"response_mask": mask, "responses": torch.ones_like(mask)}, objects)


class RecordingManager(MajorityRewardManager):
    """The majority reward, remembering which prompts this process scored; like a custom reward whose dict results
    carry an extra field only on some rows, it reports ``note`` only for batches holding prompt 4."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, batch):
        uids = list(batch.obj("uid"))
        self.seen += sorted(set(uids))
        out = super().__call__(batch)
        if "1:4" in uids:
            out.extra["note"] = ["p4" if u == "1:4" else None for u in uids]
        return out


def _label(rank: int, world: int) -> dict:
    ttrl = TTRLConfig(enable=True, n_votes_per_prompt=N_VOTES, n_samples_per_prompt=N_SAMPLES,
                      sample_selection="random")
    out = {}
    for num_prompts in (5, 1):
        manager = RecordingManager()
        step = RewardStep(ttrl=ttrl, n_votes=N_VOTES, n_samples=N_SAMPLES, manager=manager, grader=None, seed=11,
                          rank=rank, world=world)
        kept, metrics = step(_batch(num_prompts), step=2)
        out[num_prompts] = {"objects": {k: list(v) for k, v in kept.non_tensor_batch.items()},
                            "scores": kept.batch["token_level_scores"].tolist(),
                            "responses": kept.batch["responses"].tolist(),
                            "metrics": {**metrics, **step.step_metrics(kept)}, "seen": manager.seen}
    return out


def _spread(world: int) -> dict:
    import torch.distributed as dist

    from ttrl_megatron.trainer import labels

    gather, sent = labels.all_gather_objects, []

    def recording(part):  # what this rank puts on the wire
        sent.append(None if part is None else list(part["objects"]))
        return gather(part)

    labels.all_gather_objects = recording
    try:
        return {**_label(dist.get_rank(), world), "sent": sent}
    finally:
        labels.all_gather_objects = gather


def test_each_rank_grades_its_share_and_all_agree_with_one_process():
    single = _label(0, 1)
    ranks = run_distributed(_spread, 2, 2, timeout_s=120)
    for num_prompts, shares in ((5, (["1:0", "1:1", "1:2"], ["1:3", "1:4"])), (1, (["1:0"], []))):
        for rank, result in enumerate(ranks):
            got, want = result[num_prompts], single[num_prompts]
            assert got["seen"] == shares[rank]  # only its own prompts were scored here
            assert got["objects"] == want["objects"] and got["scores"] == want["scores"]
            assert got["responses"] == want["responses"] and got["metrics"] == want["metrics"]
    # Only what the shares wrote crossed ranks: labels, scores, answers; never the texts every rank already holds.
    assert ranks[0]["sent"][0] == ["reward_model", "majority_ratio", "score", "gt_score", "pred", "acc",
                                   "label_correct"]
    assert ranks[1]["sent"] == [["reward_model", "majority_ratio", "score", "gt_score", "pred", "acc", "note",
                                 "label_correct"], None]
    five = single[5]
    assert [rm["majority_gt"] for rm in five["objects"]["reward_model"][::N_SAMPLES]] == ["3", "8", "1", "2", "9"]
    assert five["metrics"]["train/label_accuracy"] == 0.6  # 3, 1 and 9 match the dataset labels
    assert five["objects"]["label_correct"][::N_SAMPLES] == [True, False, True, False, True]
    assert five["objects"]["note"] == [None] * 8 + ["p4"] * 2  # rank 0's share had no such field: filled with None
