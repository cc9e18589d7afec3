"""A user's recipe module written against verl's core_algos API, as a verl recipe would be: the functions below have
verl's signatures and only the import line names ttrl_megatron instead of verl.trainer.ppo.core_algos.

Selected in a run with ``actor_rollout_ref.model.external_lib=tests.unit.algorithms.verl_recipe_example``,
``algorithm.adv_estimator=recipe_leave_one_out`` and ``actor_rollout_ref.actor.policy_loss.loss_mode=recipe_clipped_pg``.
Every call appends one JSON line (the keywords it received) to the file named by ``RECIPE_CALL_LOG``, so tests can
see that the trainer and the actor called them, and how.
"""

import json
import os
from collections import defaultdict

import torch

from ttrl_megatron.algorithms import agg_loss, register_adv_est, register_policy_loss


def _log(kind, **info):
    path = os.environ.get("RECIPE_CALL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, **info}) + "\n")


@register_adv_est("recipe_leave_one_out")
def compute_recipe_leave_one_out_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, config=None,
                                           **kwargs):
    """Leave-one-out baseline in the loop style of verl's estimators, scaled by config.gamma."""
    scores = token_level_rewards.sum(dim=-1)
    groups = defaultdict(list)
    with torch.no_grad():
        for i in range(scores.shape[0]):
            groups[index[i]].append(i)
        adv = torch.zeros_like(scores)
        for members in groups.values():
            total = sum(scores[i] for i in members)
            for i in members:
                n = len(members)
                adv[i] = (scores[i] - (total - scores[i]) / (n - 1)) if n > 1 else 0.0
        adv = adv.unsqueeze(-1) * response_mask * config.gamma
    _log("adv", keys=sorted(["token_level_rewards", "response_mask", "index", "epsilon", "config", *kwargs]),
         gamma=float(config.gamma))
    return adv, adv


@register_policy_loss("recipe_clipped_pg")
def compute_policy_loss_recipe_clipped_pg(old_log_prob, log_prob, advantages, response_mask,
                                          loss_agg_mode="token-mean", config=None, rollout_is_weights=None):
    """PPO's clipped surrogate without the dual clip, reading config and global_batch_info as verl's losses do."""
    ratio = torch.exp(log_prob - old_log_prob)
    clip = config.clip_ratio
    pg_losses = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip, 1 + clip))
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    pg_loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                       **config.global_batch_info)
    _log("loss", loss_mode=config.policy_loss.loss_mode, loss_agg_mode=loss_agg_mode,
         global_batch_info=sorted(config.global_batch_info))
    return pg_loss, {"actor/recipe_ratio_mean": ratio.detach().mean().item()}
