"""The step's training batch: generate and label prompt batches, filter them, fill the step.

Without a filter this is one generated prompt batch, labelled (trainer/labels.py), trained on whole (the plain path,
unchanged). Two filters drop whole prompts (all rollouts of a prompt together):

* TTRL consensus (``ttrl.min_majority_ratio``, ``ttrl.skip_no_answer``): a prompt whose winning answer holds less
  than the given share of its votes, or whose votes hold no extractable answer, gives a low-confidence (or no) pseudo
  label; it is not trained on.
* DAPO dynamic sampling (``algorithm.filter_groups``, Yu et al. 2025, arXiv 2503.14476 §3.2, as verl's DAPO recipe):
  a prompt whose kept rollouts all have the same ``metric`` value has zero group-relative advantage; it is dropped,
  and further prompt batches are generated (and, with TTRL, voted on per batch, before filtering) until
  ``data.train_batch_size`` prompts are kept or ``max_num_gen_batches`` batches were generated (<= 0: no limit).
  Kept prompts beyond the batch size are discarded, first kept first trained (verl trims the same way).

Fewer kept prompts than data.train_batch_size (the limit was reached, or the consensus filter alone dropped some):
verl raises; here the step trains on what there is. The update needs whole mini-batches (``ppo_mini_batch_size``
prompts, of actor and critic, split over DP ranks and micro-batches), so the K kept prompts are topped up to the next
multiple of the mini-batch size with PADDING prompts: dropped prompts, in generation order, whose ``response_mask`` is
all 0 -- they add exactly nothing to any loss, gradient or loss denominator (agg_loss counts valid tokens / non-empty
sequences only), only compute. Every optimizer step then holds >= 1 kept prompt, and fewer kept prompts mean fewer
optimizer steps. (With a critic whose ppo_mini_batch_size differs from the actor's, one role's mini-batch can hold
only padding: a zero-gradient optimizer step; by default the critic inherits the actor's size.) Padding rows carry
``padding=True`` and are left out of the data metrics and dumps (``real_rows``).
When no prompt is kept at all the step has nothing to learn: ``__call__`` returns no batch and the trainer skips
the update (the step still counts).

Prompts come from the train loader in order (``next_prompts``), so the data order stays a pure function of the
sampler state and a resumed run regenerates exactly the same batches. A further batch g >= 1 of step s gets its own
sampling seeds and group ids ``"<s>:<g>:<i>"`` (the first keeps ``"<s>:<i>"``). The run still lasts
trainer.total_training_steps training steps; the loader rolls over epochs as needed (``training/epoch`` shows how
many passes the further batches used).

Metrics: ``train/*`` (TTRL) over every prompt generated in the step, before filtering; with a consensus filter also
``train/consensus_kept_ratio`` and ``train/label_accuracy_consensus_{kept,dropped}``; with any filter
``filter/{num_gen_batches, prompts_generated, prompts_dropped_consensus, prompts_dropped_no_signal, prompts_kept,
prompts_trained, prompts_padding, batch_full}`` (batch_full = 1 when data.train_batch_size kept prompts were found) and
``filter/zero_adv_share{,_unfiltered}``: the share of rows in prompts whose training rewards (``seq_reward``) are all
equal, in the trained rows and in the step's first generated batch (what training without the filter would use); for
group-relative estimators those rows have advantage exactly 0. With dynamic sampling also verl's
``train/num_gen_batches``. No megatron, no vllm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import count
from typing import Callable

import torch

from ttrl_megatron.algorithms.group_filter import constant_group_share, group_rows, groups_with_signal
from ttrl_megatron.protocol import DataProto, to_object_array

from .labels import RewardStep, concat_rows

PADDING = "padding"  # per-row bool column of a filtered batch


@dataclass
class FilterSettings:
    """The filters of one run (from algorithm.filter_groups, ttrl.* and the batch sizes)."""

    dynamic: bool = False  # algorithm.filter_groups.enable
    metric: str | None = None  # algorithm.filter_groups.metric
    max_num_gen_batches: int = 0  # algorithm.filter_groups.max_num_gen_batches (<= 0: no limit)
    min_majority_ratio: float = 0.0  # ttrl.min_majority_ratio
    skip_no_answer: bool = False  # ttrl.skip_no_answer
    train_batch_size: int = 1  # data.train_batch_size (prompts)
    unit: int = 1  # prompts per whole mini-batch: lcm of the actor's (and critic's) ppo_mini_batch_size
    rows_per_prompt: int = 1  # training rollouts per prompt (rollout.n / ttrl.n_samples_per_prompt)

    @property
    def consensus(self) -> bool:
        return self.min_majority_ratio > 0 or self.skip_no_answer

    @property
    def active(self) -> bool:
        return self.dynamic or self.consensus

    @classmethod
    def from_config(cls, cfg, rows_per_prompt: int, with_critic: bool) -> "FilterSettings":
        """From the root config (the trainer's setup; components below it get this object, not the root)."""
        fg, ttrl, actor = cfg.algorithm.filter_groups, cfg.ttrl, cfg.actor_rollout_ref.actor
        unit = actor.ppo_mini_batch_size
        if with_critic:
            unit = math.lcm(unit, cfg.critic.ppo_mini_batch_size)
        on = ttrl.enable
        return cls(dynamic=fg.enable, metric=fg.metric, max_num_gen_batches=fg.max_num_gen_batches,
                   min_majority_ratio=ttrl.min_majority_ratio if on else 0.0,
                   skip_no_answer=ttrl.skip_no_answer and on, train_batch_size=cfg.data.train_batch_size,
                   unit=unit, rows_per_prompt=rows_per_prompt)


def metric_values(batch: DataProto, metric: str) -> list:
    """Per-row values of ``algorithm.filter_groups.metric``: ``seq_reward`` / ``seq_final_reward`` = the row's summed
    token_level_scores (the final reward equals it: the KL-in-reward combination is refused by validate()), else the
    per-row column of that name (``acc``, ``score``, a custom reward's extra field)."""
    if metric in ("seq_reward", "seq_final_reward"):
        return batch.tensor("token_level_scores").sum(dim=-1).tolist()
    if metric not in batch.non_tensor_batch:
        raise ValueError(f"algorithm.filter_groups.metric={metric!r}: the rollouts have no such value; use "
                         f"seq_reward, seq_final_reward or one of {sorted(batch.non_tensor_batch)}")
    return list(batch.obj(metric))


def relabel_groups(batch: DataProto, step: int, gen_index: int, n: int) -> None:
    """Group ids ``"<step>:<gen_index>:<i>"`` for the n rows of each prompt i of a further prompt batch (in place)."""
    batch.non_tensor_batch["uid"] = to_object_array([f"{step}:{gen_index}:{r // n}" for r in range(len(batch))])


def real_rows(batch: DataProto) -> DataProto:
    """The batch without its padding rows (the batch itself when it has none)."""
    if PADDING not in batch.non_tensor_batch:
        return batch
    keep = [i for i, pad in enumerate(batch.obj(PADDING)) if not pad]
    return batch if len(keep) == len(batch) else batch[keep]


def _rows_of(groups: dict, ids) -> list[int]:
    return [r for gid in ids for r in groups[gid]]


class StepBatchCollector:
    """``__call__(prompts, step, timer) -> (training batch or None, metrics)``; see the module docstring.

    ``generate(prompts, step, gen_index)``: the rollout batch of a collated prompt batch (n_votes rows per prompt);
    ``reward``: the RewardStep; ``next_prompts()``: the train loader's next collated prompt batch; ``timer``: the
    step's PhaseTimer (``gen`` and ``reward`` accumulate over the prompt batches).
    """

    def __init__(self, settings: FilterSettings, *, generate: Callable, reward: RewardStep,
                 next_prompts: Callable[[], dict]):
        self.settings, self.generate, self.reward, self.next_prompts = settings, generate, reward, next_prompts

    def __call__(self, prompts: dict, step: int, timer) -> tuple[DataProto | None, dict]:
        s = self.settings
        labelled, kept, dropped, metrics = [], [], [], {}
        counts = {"prompts_generated": 0, "prompts_dropped_consensus": 0, "prompts_dropped_no_signal": 0}
        num_kept = 0
        for gen_index in count():
            if gen_index:
                prompts = self.next_prompts()
            with timer("gen"):
                batch = self.generate(prompts, step, gen_index)
            with timer("reward"):
                batch, reward_metrics = self.reward(batch, step, gen_index)  # TTRL: voted per prompt batch
            for k, v in reward_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v
            labelled.append(batch)
            if not s.active:
                break
            keep_ids, drop_ids = self._judge(batch, counts)
            groups = group_rows(batch.obj("uid"))
            kept.append(batch[_rows_of(groups, keep_ids)])
            dropped.append(batch[_rows_of(groups, drop_ids)])
            num_kept += len(keep_ids)
            limit_reached = 0 < s.max_num_gen_batches <= gen_index + 1
            if not s.dynamic or num_kept >= s.train_batch_size or limit_reached:
                break
        everything = concat_rows(labelled)
        metrics.update(self.reward.step_metrics(everything))
        if not s.active:
            return labelled[0], metrics
        batch, trained, padding = self._fill(concat_rows(kept), concat_rows(dropped), num_kept)
        metrics.update(self._consensus_metrics(everything))
        counts.update(num_gen_batches=len(labelled), prompts_kept=num_kept, prompts_trained=trained,
                      prompts_padding=padding, batch_full=float(num_kept >= s.train_batch_size))
        metrics.update({f"filter/{k}": float(v) for k, v in counts.items()})
        first = labelled[0]
        metrics["filter/zero_adv_share_unfiltered"] = constant_group_share(first.obj("uid"),
                                                                           metric_values(first, "seq_reward"))
        if batch is not None:
            real = real_rows(batch)
            metrics["filter/zero_adv_share"] = constant_group_share(real.obj("uid"), metric_values(real, "seq_reward"))
        if s.dynamic:
            metrics["train/num_gen_batches"] = float(len(labelled))
        return batch, metrics

    def _judge(self, batch: DataProto, counts: dict) -> tuple[list, list]:
        """(kept group ids, dropped group ids) of one labelled prompt batch, in batch order; updates the counts."""
        s = self.settings
        uids = batch.obj("uid")
        groups = group_rows(uids)
        counts["prompts_generated"] += len(groups)
        ok = dict.fromkeys(groups, True)
        if s.consensus:
            for gid, rows in groups.items():
                if not self._confident(batch, rows[0]):
                    ok[gid] = False
                    counts["prompts_dropped_consensus"] += 1
        if s.dynamic:
            signal = groups_with_signal(uids, metric_values(batch, s.metric))
            for gid in groups:
                if ok[gid] and not signal[gid]:
                    ok[gid] = False
                    counts["prompts_dropped_no_signal"] += 1
        return [g for g in groups if ok[g]], [g for g in groups if not ok[g]]

    def _confident(self, batch: DataProto, row: int) -> bool:
        """Whether the prompt of ``row`` passes the TTRL consensus filter (its majority share and label)."""
        s = self.settings
        label = batch.obj("reward_model")[row].get("majority_gt")
        return float(batch.obj("majority_ratio")[row]) >= s.min_majority_ratio and not (s.skip_no_answer and
                                                                                        label is None)

    def _fill(self, kept: DataProto, dropped: DataProto, num_kept: int) -> tuple[DataProto | None, int, int]:
        """(training batch, prompts trained, padding prompts): the first train_batch_size kept prompts, topped up to
        whole mini-batches with masked padding prompts; no batch when nothing was kept."""
        s, n = self.settings, self.settings.rows_per_prompt
        trained = min(num_kept, s.train_batch_size)
        if trained == 0:
            return None, 0, 0
        padding = -trained % s.unit
        real = kept[: trained * n]
        pad = dropped[: padding * n]
        if len(pad) != padding * n:  # cannot happen: >= train_batch_size prompts were generated
            raise RuntimeError(f"dynamic sampling: {padding} padding prompts needed, {len(pad) // n} dropped")
        pad.batch["response_mask"] = torch.zeros_like(pad.batch["response_mask"])
        batch = concat_rows([real, pad]) if padding else real
        batch.non_tensor_batch[PADDING] = to_object_array([False] * len(real) + [True] * len(pad))
        return batch, trained, padding

    def _consensus_metrics(self, everything: DataProto) -> dict:
        """Share of prompts passing the consensus filter and the TTRL label accuracy of kept vs dropped prompts."""
        if not self.settings.consensus or self.reward.ttrl is None:
            return {}
        groups = group_rows(everything.obj("uid"))
        keep, drop = [], []
        for rows in groups.values():
            (keep if self._confident(everything, rows[0]) else drop).extend(rows)
        out = {"train/consensus_kept_ratio": len(keep) / max(len(everything), 1)}
        for name, rows in (("kept", keep), ("dropped", drop)):
            if rows:
                acc = self.reward.step_metrics(everything[rows]).get("train/label_accuracy")
                if acc is not None:
                    out[f"train/label_accuracy_consensus_{name}"] = acc
        return out
