"""Megatron actor / reference / critic engines at TP=2, PP=2, DP=2 against a single-process PyTorch reference.

The reference is the transformers model holding the same HF weights, with the same losses from
ttrl_megatron.algorithms computed on each WHOLE mini-batch (no micro-batching, no global-count plumbing) and
torch.optim.AdamW + clip_grad_norm_. One spawn per layout runs every check (spawns cost ~3-5 s each):
log-probs + entropy, one update_policy (2 mini-batches, >= 2 micro-batches per rank), the same update with dynamic
micro-batches (loss values must not depend on micro-batching), compute_values and update_critic -- all with packed
(THD) micro-batches, the default -- then the same log-probs, update and critic with padded (right-aligned) rows,
packed against padded too; and the chunked log-prob computation against the unchunked full-logits one (values and
gradients, vocabulary-parallel at TP2). Each layout also builds its models with some fusion / overlap / recompute
settings that run on CPU (LAYOUTS), which must not change results.
Adam's first steps are nearly invariant to the gradient's scale, so the grad norm (before clipping) is compared
too: it pins the loss scaling that parameter parity alone would miss.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.dist.harness import run_distributed

B, P, R, VOCAB = 8, 6, 5, 300
PROMPT_LENS = [6, 4, 2, 5, 3, 6, 1, 4]
RESPONSE_LENS = [5, 3, 1, 4, 5, 2, 5, 3]
TEMPERATURE = 0.7
TOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# data and the single-process reference

def make_hf_dir(path) -> str:
    """A tiny tied Qwen2 (hidden 128, 4 heads, 2 KV groups, 2 layers, vocab 300) with perturbed weights, saved."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=64, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def make_batch(seed: int = 0) -> dict:
    """verl layout: left-padded prompts (P) + right-padded responses (R); pad id 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, P + R, dtype=torch.long)
    mask = torch.zeros(B, P + R, dtype=torch.long)
    for i, (pl, rl) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        mask[i, P - pl: P + rl] = 1
    ids = torch.randint(3, VOCAB, (B, P + R), generator=g) * mask
    return {
        "input_ids": ids, "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        "responses": ids[:, P:], "response_mask": mask[:, P:],
        "advantages": torch.randn(B, R, generator=g),
        "returns": torch.randn(B, R, generator=g),
        **{f"noise{i}": torch.randn(B, R, generator=g) * 0.3 for i in range(3)},
    }


def hf_forward(model, batch: dict, value_head=None):
    """Reference: logits / T at positions P-1 .. P+R-2 -> (log-probs, entropy) or values, each [B, R]."""
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"]) if value_head is not None else None
    if value_head is not None:
        return value_head(out.last_hidden_state)[:, P - 1: P + R - 1, 0]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[:, P - 1: P + R - 1] / TEMPERATURE
    logp = torch.log_softmax(logits.float(), -1)
    entropy = torch.logsumexp(logits, -1) - (logp.exp() * logits).sum(-1)
    return logp.gather(-1, batch["responses"][..., None])[..., 0], entropy


def _adamw(named_params, optim):
    decay = [p for n, p in named_params if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in named_params if p.ndim <= 1 or n.endswith(".bias")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=optim.lr, betas=optim.betas, eps=optim.eps)


def reference_steps(named_params, batch, mini_batch_rows, loss_of, optim):
    """One AdamW step per whole mini-batch; returns (per-step losses, per-step grad norms)."""
    params = [p for _, p in named_params]
    opt = _adamw(named_params, optim)
    losses, norms = [], []
    for start in range(0, batch["input_ids"].shape[0], mini_batch_rows):
        mb = {k: v[start:start + mini_batch_rows] for k, v in batch.items()}
        loss = loss_of(mb)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)))
        opt.step()
        losses.append(float(loss.detach()))
    return losses, norms


def reference_policy_update(hf, batch, cfg, optim):
    """The actor's loss (algorithms-semantics §1.5-§1.7) on each whole mini-batch of the transformers model."""
    from ttrl_megatron.algorithms import agg_loss, get_policy_loss_fn, kl_penalty

    model = copy.deepcopy(hf).train()
    loss_cfg = cfg.loss_config(None)
    loss_cfg.global_batch_info.update(loss_scale_factor=float(R))

    def loss_of(mb):
        lp, ent = hf_forward(model, mb)
        mask = mb["response_mask"]
        pg, _ = get_policy_loss_fn(cfg.loss_mode)(mb["old_log_probs"], lp, mb["advantages"], mask,
                                                  loss_agg_mode=cfg.loss_agg_mode, config=loss_cfg)
        loss = pg - cfg.entropy_coeff * agg_loss(ent, mask, cfg.loss_agg_mode, loss_scale_factor=float(R))
        if cfg.use_kl_loss:
            kl = kl_penalty(lp, mb["ref_log_prob"], cfg.kl_loss_type)
            loss = loss + cfg.kl_loss_coef * agg_loss(kl, mask, cfg.loss_agg_mode, loss_scale_factor=float(R))
        return loss

    losses, norms = reference_steps(list(model.named_parameters()), batch, cfg.mini_batch_rows, loss_of, optim)
    return model, losses, norms


def reference_critic_update(hf, head_w, batch, cfg, optim):
    from ttrl_megatron.algorithms import compute_value_loss

    model = copy.deepcopy(hf).train()
    head = torch.nn.Linear(head_w.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(head_w)

    def loss_of(mb):
        v = hf_forward(model, mb, value_head=head)
        loss, _ = compute_value_loss(v, mb["returns"], mb["values"], mb["response_mask"], cfg.cliprange_value,
                                     cfg.loss_agg_mode, loss_scale_factor=float(R))
        return loss

    named = [(n, p) for n, p in model.model.named_parameters()] + [("score.weight", head.weight)]
    losses, norms = reference_steps(named, batch, cfg.ppo_mini_batch_size * cfg.rows_per_prompt, loss_of, optim)
    return model, head, losses, norms


# ----------------------------------------------------------------------------------------------------------------
# what every rank runs

def _max_masked_err(a, b, mask):
    return float(((a - b).abs() * mask).max())


def _param_err(megatron_model, ref_model, skip=()):
    """Max |megatron - reference| over all HF-named tensors (collective over the model-parallel group)."""
    from ttrl_megatron.megatron.engine import unwrap
    from ttrl_megatron.megatron.hf_io import iter_hf_weights

    ref = dict(ref_model.state_dict())
    gpt = unwrap(megatron_model)
    # hf_io refuses to export a value model as a causal LM; its trunk exports like a tied LM's (no output layer)
    is_value = gpt.ttrl_value_head
    gpt.ttrl_value_head = False
    try:
        err = 0.0
        for name, tensor in iter_hf_weights(gpt):
            if name in skip:
                continue
            err = max(err, float((tensor - ref[name]).abs().max()))
    finally:
        gpt.ttrl_value_head = is_value
    return err


def _build_policy(arch, hf_dir, value_head=False, perf=None):
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    model = build_gpt_model(arch, value_head=value_head, perf=perf)
    if not value_head:
        load_hf_weights(model, hf_dir)
    return [model]


def _chunked_logprob_checks(seed: int = 0) -> dict:
    """chunked_logprobs vs unchunked_logprobs (full logits, megatron's vocab-parallel CE) on this rank's vocabulary
    shard: values and d/d(hidden), d/d(weight), with and without the entropy's gradient (vocab 390 of 400 padded:
    the last TP rank owns padding rows; temperature 0.7; chunk 8 over 37 positions)."""
    from megatron.core import parallel_state, tensor_parallel

    from ttrl_megatron.megatron.logprobs import chunked_logprobs, unchunked_logprobs

    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    g = torch.Generator().manual_seed(seed)
    n, h, vocab, padded = 37, 16, 390, 400
    hidden = torch.randn(n, h, generator=g)
    weight_full = torch.randn(padded, h, generator=g) * 0.5
    targets = torch.randint(0, vocab, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    local = padded // tp
    out = {}
    for entropy_grad in (False, True):
        grads = []
        for chunked in (True, False):
            hid = hidden.clone().requires_grad_()
            w = weight_full[rank * local:(rank + 1) * local].clone().requires_grad_()
            x = tensor_parallel.copy_to_tensor_model_parallel_region(hid)  # as model.py emit_hidden prepares it
            if chunked:
                lp, ent = chunked_logprobs(x, w, targets, vocab_size=vocab, temperature=0.7, chunk_size=8,
                                           with_entropy=True, entropy_grad=entropy_grad)
            else:
                lp, ent = unchunked_logprobs((x @ w.t())[None], targets[None], vocab, 0.7, True)
                lp, ent = lp[0], (ent[0] if entropy_grad else ent[0].detach())
            loss = (lp * g_lp).sum() + (ent * g_ent).sum()
            loss.backward()
            grads.append((lp.detach(), ent.detach(), hid.grad, w.grad))
        (a_lp, a_ent, a_h, a_w), (b_lp, b_ent, b_h, b_w) = grads
        tag = "ent_grad" if entropy_grad else "no_ent_grad"
        out[f"chunk_{tag}_logprob_err"] = float((a_lp - b_lp).abs().max())
        out[f"chunk_{tag}_entropy_err"] = float((a_ent - b_ent).abs().max())
        out[f"chunk_{tag}_hidden_grad_err"] = float((a_h - b_h).abs().max())
        out[f"chunk_{tag}_weight_grad_err"] = float((a_w - b_w).abs().max())
    return out


def _rank_checks(hf_dir: str, tp: int, pp: int, variant: dict) -> dict:
    from transformers import AutoModelForCausalLM

    from ttrl_megatron.distributed import ParallelLayout
    from ttrl_megatron.megatron.actor import ActorEngineConfig, LogProbConfig, MegatronActor
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.critic import CriticEngineConfig, MegatronCritic, load_critic_weights
    from ttrl_megatron.megatron.optimizer import OptimConfig
    from ttrl_megatron.megatron.parallel import init_distributed
    from ttrl_megatron.protocol import DataProto

    import torch.distributed as dist

    from ttrl_megatron.config.perf import PerfSettings

    layout = ParallelLayout.from_world(dist.get_world_size(), tp, pp)
    init_distributed(layout, seed=1)
    arch = ModelArchConfig.from_hf(hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    batch = make_batch()
    mask = batch["response_mask"].float()
    perf = PerfSettings(**variant["perf"])
    out = _chunked_logprob_checks()

    # 1. log-probs and entropy (frozen reference engine: no optimizer), packed and padded
    lp_cfg = LogProbConfig(micro_batch_size_per_gpu=variant["micro"], temperature=TEMPERATURE, chunk_size=3)
    with torch.no_grad():
        hf_lp, hf_ent = hf_forward(hf, batch)
    packed_lp = {}
    for packed in (True, False):
        ref_engine = MegatronActor(_build_policy(arch, hf_dir, perf=perf), lp_cfg, packed=packed, perf=perf)
        lp, ent = ref_engine.compute_log_prob(DataProto(dict(batch)), calculate_entropy=True)
        tag = "" if packed else "padded_"
        out[f"{tag}logprob_err"] = _max_masked_err(lp, hf_lp, mask)
        out[f"{tag}entropy_err"] = _max_masked_err(ent, hf_ent, mask)
        out[f"{tag}masked_zero"] = float((lp * (1 - mask)).abs().max())
        packed_lp[packed] = lp
    out["packed_vs_padded_logprob_err"] = _max_masked_err(packed_lp[True], packed_lp[False], mask)

    # 2. update_policy: 2 mini-batches, fixed micro-batches; then the same with dynamic micro-batches
    batch["old_log_probs"] = hf_lp + batch["noise0"]
    batch["ref_log_prob"] = hf_lp + batch["noise1"]
    # eps=1e-3: with eps ~1e-8 Adam's first steps are ~lr*sign(grad), which amplifies fp32 noise of near-zero
    # gradients past 1e-5 and hides the gradient's scale; a larger eps keeps the update proportional to it.
    optim = OptimConfig(lr=1e-3, weight_decay=0.5, clip_grad=variant["clip"], betas=(0.9, 0.99), eps=1e-3,
                        use_distributed_optimizer=variant["distopt"])
    actor_cfg = ActorEngineConfig(ppo_mini_batch_size=2, rows_per_prompt=2, ppo_micro_batch_size_per_gpu=variant["micro"],
                                  loss_agg_mode=variant["agg"], entropy_coeff=0.01, use_kl_loss=True,
                                  kl_loss_coef=0.1, kl_loss_type="low_var_kl", clip_ratio=0.2)
    ref_model, ref_losses, ref_norms = reference_policy_update(hf, batch, actor_cfg, optim)
    dynamic = dataclasses.replace(actor_cfg, use_dynamic_bsz=True, ppo_max_token_len_per_gpu=20)
    for name, cfg, packed in (("fixed", actor_cfg, True), ("dynamic", dynamic, True), ("padded", dynamic, False)):
        actor = MegatronActor(_build_policy(arch, hf_dir, perf=perf), lp_cfg, cfg, optim, packed=packed, perf=perf)
        metrics = actor.update_policy(DataProto(dict(batch)))
        out[f"actor_{name}_param_err"] = _param_err(actor.model[0], ref_model)
        out[f"actor_{name}_loss_err"] = abs(metrics["actor/loss"] - sum(ref_losses) / len(ref_losses))
        ref_norm = sum(ref_norms) / len(ref_norms)
        out[f"actor_{name}_gradnorm_rel_err"] = abs(metrics["actor/grad_norm"] - ref_norm) / ref_norm
        out[f"actor_{name}_metrics"] = metrics

    # 3. critic: values and one update (head weight random so every parameter gets a gradient)
    head_w = torch.randn(1, arch.hidden_size, generator=torch.Generator().manual_seed(3)) * 0.1
    critic_cfg = CriticEngineConfig(ppo_mini_batch_size=2, rows_per_prompt=2,
                                    ppo_micro_batch_size_per_gpu=variant["micro"], cliprange_value=0.2,
                                    loss_agg_mode=variant["agg"])
    with torch.no_grad():
        head = torch.nn.Linear(arch.hidden_size, 1, bias=False)
        head.weight.copy_(head_w)
        hf_values = hf_forward(hf, batch, value_head=head)
    for packed in (False, True):  # the packed critic is the one updated below
        chunks = _build_policy(arch, hf_dir, value_head=True, perf=perf)
        load_critic_weights(chunks[0], hf_dir, head_w)
        critic = MegatronCritic(chunks, critic_cfg, optim, packed=packed, perf=perf)
        values = critic.compute_values(DataProto(dict(batch)))
        out["values_err" if packed else "padded_values_err"] = _max_masked_err(values, hf_values, mask)
    batch["values"] = hf_values + batch["noise2"]
    ref_critic, ref_head, c_losses, c_norms = reference_critic_update(hf, head_w, batch, critic_cfg, optim)
    cmetrics = critic.update_critic(DataProto(dict(batch)))
    out["critic_param_err"] = _param_err(critic.model[0], ref_critic, skip=("lm_head.weight",))
    from ttrl_megatron.megatron.engine import unwrap
    gpt = unwrap(critic.model[0])
    if gpt.post_process:
        out["critic_head_err"] = float((gpt.output_layer.weight - ref_head.weight).abs().max())
    out["critic_loss_err"] = abs(cmetrics["critic/vf_loss"] - sum(c_losses) / len(c_losses))
    ref_norm = sum(c_norms) / len(c_norms)
    out["critic_gradnorm_rel_err"] = abs(cmetrics["critic/grad_norm"] - ref_norm) / ref_norm
    out["critic_metrics"] = cmetrics
    return out


LAYOUTS = {
    # tp, pp, variant (micro-batch rows per rank, loss_agg_mode, grad clip, distributed optimizer).
    # Mini-batch = 4 rows: DP=2 gives 2 per rank.
    # perf: fusions / overlap / recompute that run on CPU (config/perf.py PerfSettings).
    "tp2": (2, 1, dict(micro=2, agg="token-mean", clip=1.0, distopt=False,
                       perf=dict(bias_activation_fusion=True, recompute_granularity="selective",
                                 recompute_modules=("core_attn",)))),
    "pp2": (1, 2, dict(micro=1, agg="seq-mean-token-mean", clip=0.05, distopt=False,
                       perf=dict(overlap_grad_reduce=True, recompute_granularity="full", recompute_method="uniform",
                                 recompute_num_layers=1))),
    "dp2": (1, 1, dict(micro=1, agg="seq-mean-token-sum-norm", clip=1.0, distopt=True,
                       perf=dict(overlap_grad_reduce=True, overlap_param_gather=True, bias_activation_fusion=True))),
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_engines_match_single_process_reference(hf_dir, name):
    tp, pp, variant = LAYOUTS[name]
    results = run_distributed(_rank_checks, 2, hf_dir, tp, pp, variant, timeout_s=240)
    for rank, res in enumerate(results):
        errors = {k: v for k, v in res.items() if k.endswith("_err")}
        bad = {k: v for k, v in errors.items() if not v <= TOL}
        assert not bad, f"{name} rank {rank}: {bad} (all: {errors})"
        assert res["masked_zero"] == 0.0 and res["padded_masked_zero"] == 0.0
        for kind in ("fixed", "dynamic", "padded"):
            m = res[f"actor_{kind}_metrics"]
            assert {"actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "actor/entropy",
                    "actor/kl_loss", "actor/grad_norm", "actor/lr"} <= set(m), sorted(m)
            assert m["actor/lr"] == pytest.approx(1e-3)
        # micro-batching must not change any loss-valued metric
        for key in ("actor/pg_loss", "actor/entropy", "actor/kl_loss", "actor/pg_clipfrac", "actor/ppo_kl"):
            for kind in ("dynamic", "padded"):
                assert res["actor_fixed_metrics"][key] == pytest.approx(res[f"actor_{kind}_metrics"][key],
                                                                        abs=1e-6), (kind, key)
        assert {"critic/vf_loss", "critic/vf_clipfrac", "critic/vpred_mean", "critic/grad_norm", "critic/lr"} <= set(
            res["critic_metrics"])
    assert results[0]["actor_fixed_metrics"] == pytest.approx(results[1]["actor_fixed_metrics"])
