"""Construction of the engines' models from the typed config: model stages with weights (``build_model_chunks``,
``load_critic_weights``), the fusion / overlap settings (``engine_perf``) and the refusal of knobs the engines cannot
honour (``reject_unsupported``, ``reject_model_overrides``). actor.py and critic.py build on this module; it
imports neither of them (no import cycle).

Imports megatron.core (through model.py / hf_io.py); must not import vllm, hydra or the trainer.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from ttrl_megatron.config.perf import PerfSettings, StackFacts, resolve_perf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stack_facts() -> StackFacts:
    """What this process's stack provides, from real imports (a broken TE build counts as absent)."""
    from ttrl_megatron.megatron.model import layer_spec_kind

    def importable(name: str) -> bool:
        try:
            __import__(name)
        except Exception:  # ImportError, or an extension built for another CUDA
            return False
        return True

    cuda = torch.cuda.is_available()
    return StackFacts(cuda=cuda, te=cuda and layer_spec_kind() == "te",
                      apex_grad_accum=cuda and importable("fused_weight_gradient_mlp_cuda"),
                      softmax_kernel=cuda and importable("scaled_masked_softmax_cuda"))


def engine_perf(megatron, gradient_checkpointing: bool, prefix: str = "actor_rollout_ref.actor.megatron"
                ) -> PerfSettings:
    """Concrete fusions / SP / recompute / overlap for a model from ``config.MegatronConfig`` (the actor's section:
    one model family per process); raises ValueError naming the field the stack cannot honour."""
    settings, problems = resolve_perf(megatron, megatron.tensor_model_parallel_size, gradient_checkpointing,
                                      stack_facts(), prefix)
    if problems:
        raise ValueError("; ".join(problems))
    return settings


def load_critic_weights(model: torch.nn.Module, hf_dir: str, head_weight: Optional[torch.Tensor] = None) -> None:
    """Fill a value model stage from an HF causal LM: trunk from ``hf_dir`` (``hf_io.load_hf_weights`` loads a
    value model's trunk only); value head = ``head_weight [1, h]``, zero when None (a fresh critic predicts 0)."""
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import unwrap_model

    gpt = unwrap_model(model)
    load_hf_weights(gpt, hf_dir)
    head = getattr(gpt, "output_layer", None)
    if head is not None:  # only the last pipeline stage holds the head
        with torch.no_grad():
            head.weight.copy_(torch.zeros_like(head.weight) if head_weight is None else head_weight.reshape(1, -1))


def build_model_chunks(hf_dir: str, dtype: str, *, value_head: bool = False, load_format: str = "auto",
                       perf: Optional[PerfSettings] = None) -> List[torch.nn.Module]:
    """This rank's model stage(s) for the HF checkpoint ``hf_dir``, weights loaded (a value model gets the HF
    trunk and a zero value head). Needs megatron's parallel state (``parallel.init_distributed``).

    ``load_format`` (``model.load_format``): a folder without ``config.json`` (or a non-``hf`` format) is a NeMo-2,
    Megatron-Bridge / NeMo-RL, Megatron-LM or ttrl checkpoint, read by ``megatron/foreign`` (format detected and
    checked against ``load_format``). ``perf``: fusions / SP / recompute (``engine_perf``); None = all off."""
    from ttrl_megatron.megatron.arch import ModelArchConfig
    from ttrl_megatron.megatron.hf_io import load_hf_weights
    from ttrl_megatron.megatron.model import build_gpt_model

    if dtype not in DTYPES:
        raise ValueError(f"megatron.dtype={dtype!r} is not one of {sorted(DTYPES)}")
    if load_format not in ("auto", "hf") or not os.path.isfile(os.path.join(hf_dir, "config.json")):
        from ttrl_megatron.megatron.foreign.api import load_initial_model

        return [load_initial_model(hf_dir, load_format, DTYPES[dtype], value_head=value_head)]
    model = build_gpt_model(ModelArchConfig.from_hf(hf_dir), value_head=value_head, params_dtype=DTYPES[dtype],
                            perf=perf)
    if value_head:
        load_critic_weights(model, hf_dir)
    else:
        load_hf_weights(model, hf_dir)
    return [model]


def reject_model_overrides(model, prefix: str) -> None:
    """``*.model.override_config`` would change the architecture read from config.json; not supported here."""
    if model.override_config:
        raise ValueError(f"{prefix}.override_config={dict(model.override_config)} is not supported by the megatron "
                         "engine (the architecture comes from the checkpoint's config.json); remove it")


def reject_unsupported(megatron, prefix: str, *, trainable: bool) -> None:
    """One clear error for a ``*.megatron`` knob this engine cannot honour (checked when an engine is built).

    ``megatron`` is ``config.MegatronConfig`` (actor) or ``config.RoleMegatronConfig`` (ref, critic). Fusions,
    overlap and sequence parallelism are checked by ``engine_perf``.
    """
    offloads = [n for n in ("param_offload", "optimizer_offload", "grad_offload") if getattr(megatron, n)]
    if trainable and offloads and not torch.cuda.is_available():  # they act around generation (megatron/offload.py)
        raise ValueError(f"{prefix}.{offloads[0]}=True moves a trained model's state off the GPU while vLLM generates; "
                         "there is no GPU here: set it False")
    if not trainable and set(offloads) - {"param_offload"}:
        raise ValueError(f"{prefix}: only param_offload applies to the frozen reference model; got {offloads}")
    from ttrl_megatron.config import MegatronConfig

    if isinstance(megatron, MegatronConfig):
        if megatron.virtual_pipeline_model_parallel_size not in (None, 1):
            raise ValueError(f"{prefix}.virtual_pipeline_model_parallel_size="
                             f"{megatron.virtual_pipeline_model_parallel_size}: the interleaved schedule is not "
                             "supported by this engine yet; set it to null")
        if megatron.context_parallel_size != 1:
            raise ValueError(f"{prefix}.context_parallel_size={megatron.context_parallel_size}: only 1 is supported")
