"""Loss-side corrections of the trained batch, each built at setup only when its config turns it on (so a run without
them executes exactly the code it ran before they existed):

* ``RolloutCorrection`` (verl ``algorithm.rollout_correction``, decoupled mode): after the old log-probs, before the
  advantages, puts ``rollout_is_weights [B, R]`` (truncated / IcePop importance weights between the actor's old
  log-probs and the rollout engine's ``rollout_log_probs``) into the batch, which the actor ships to its
  micro-batches and the policy loss multiplies in, and applies rejection sampling to ``response_mask``; metrics
  ``rollout_corr/*``. Math: algorithms/rollout_corr.py.
* ``TruncationMask`` (``actor_rollout_ref.actor.mask_truncated_responses``, DAPO's overlong filtering): the actor's
  view of the batch with the rows whose generation hit the length limit (finish reason ``length``) masked out of
  the policy loss. Their rewards still take part in the group baselines (the advantages are computed before), and
  the critic still learns their values. Metric ``actor/truncated_masked_ratio``.
* ``rollout_mismatch_metrics``: verl's ``training/rollout_probs_diff_*`` between the engine's and the actor's
  probabilities of the sampled tokens, over the whole batch, also when each row's rollout log-probs stayed on the
  rank that sampled them (without rollout correction nothing else needs them elsewhere, so the gather leaves them
  there: trainer/generation.py): every rank sums its own rows and the nine sums are all-gathered.

No megatron, no vllm, no torch.distributed (the gather is passed in).
"""

from __future__ import annotations

from ttrl_megatron.algorithms.mismatch import merge_probs_diff_sums, probs_diff_metrics, probs_diff_sums
from ttrl_megatron.algorithms.overlong import mask_rows, truncated_rows
from ttrl_megatron.algorithms.rollout_corr import compute_rollout_correction
from ttrl_megatron.protocol import DataProto
from ttrl_megatron.rollout.packed import LOGPROB_RANK  # [B] the rank holding each row's real rollout_log_probs


class RolloutCorrection:
    """``__call__(batch) -> metrics``: adds ``rollout_is_weights`` and/or replaces ``response_mask`` in place."""

    def __init__(self, cfg):
        """``cfg``: the algorithm.rollout_correction section (RolloutCorrectionConfig), with rollout_is or rollout_rs
        set."""
        self.cfg = cfg

    @staticmethod
    def wanted(cfg) -> bool:
        return cfg.rollout_is is not None or cfg.rollout_rs is not None

    def __call__(self, batch: DataProto) -> dict:
        t, c = batch.batch, self.cfg
        if LOGPROB_RANK in t:  # the trainer gathers every row's log-probs everywhere when this object exists
            raise RuntimeError("RolloutCorrection: the batch holds only this rank's rollout log-probs; rollout "
                               "correction needs every row's (generate with logprobs_everywhere=True)")
        weights, mask, metrics = compute_rollout_correction(
            t["old_log_probs"], t["rollout_log_probs"], t["response_mask"], rollout_is=c.rollout_is,
            rollout_is_threshold=c.rollout_is_threshold, rollout_is_batch_normalize=c.rollout_is_batch_normalize,
            rollout_rs=c.rollout_rs, rollout_rs_threshold=c.rollout_rs_threshold)
        if weights is not None:
            t["rollout_is_weights"] = weights
        t["response_mask"] = mask
        return metrics


class TruncationMask:
    """``__call__(batch) -> (the actor's view of the batch, metrics)``: a shallow copy whose ``response_mask`` is 0 on
    the rows with finish reason ``length``; the batch itself is not changed (data metrics keep the real lengths)."""

    def __call__(self, batch: DataProto) -> tuple[DataProto, dict]:
        mask = batch.tensor("response_mask")
        cut = truncated_rows(list(batch.obj("finish_reason"))).to(mask.device)
        live = mask.sum(dim=-1) > 0  # padding rows (already all 0) are not counted
        ratio = float((cut & live).sum()) / max(int(live.sum()), 1)
        view = DataProto(dict(batch.batch, response_mask=mask_rows(mask, cut)), dict(batch.non_tensor_batch),
                         dict(batch.meta_info))
        return view, {"actor/truncated_masked_ratio": ratio}


def rollout_mismatch_metrics(batch: DataProto, rank: int, gather) -> dict:
    """``training/rollout_probs_diff_*`` of the batch (old_log_probs computed). When the batch says which rank holds
    each row's rollout log-probs, this rank sums the rows it holds and ``gather`` (obj -> [obj of every rank], every
    rank calls it) combines the sums; else the batch is measured here."""
    t = batch.batch
    if LOGPROB_RANK not in t:
        return probs_diff_metrics(probs_diff_sums(t["rollout_log_probs"], t["old_log_probs"], t["response_mask"]))
    mine = (t[LOGPROB_RANK] == rank).to(t["response_mask"].dtype).unsqueeze(1)
    local = probs_diff_sums(t["rollout_log_probs"], t["old_log_probs"], t["response_mask"] * mine)
    return probs_diff_metrics(merge_probs_diff_sums(gather(local)))
