"""CPU STAND-IN for Transformer Engine's / apex's ``FusedAdam`` (both need CUDA; neither installs on this machine).

What it reproduces, read from TE's ``transformer_engine/pytorch/optimizers/fused_adam.py`` and apex's
``apex/optimizers/fused_adam.py``: the constructor megatron-core calls (``adam_w_mode``, ``bias_correction``,
``capturable``...), the STATE LAYOUT (per parameter ``exp_avg`` and ``exp_avg_sq`` in fp32, created at the first
step; NO per-parameter ``step``: the step counter is a python int in each param group, incremented by every
``step()``), the Adam / AdamW update with bias correction from the group's step, and TE's
``state_dict`` / ``load_state_dict`` overrides (``te_style``: states returned in fp32, re-created by
``load_state_dict``; empty param groups skipped). What it does not: CUDA kernels, master weights, scaled (fp16 /
fp8) states, capturable mode.

``fused_adam_installed(kind)`` makes megatron-core 0.16.1 behave as when TE (``kind="te"``) or apex
(``kind="apex"``) imports: its optimizer factory builds this class with ``adam_w_mode`` and its
DistributedOptimizer takes the TE/apex code paths for ``step`` (module flags ``HAVE_APEX_OR_TE``,
``USING_TE_OPTIMIZER`` / ``USING_APEX_OPTIMIZER``). Tests only.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class FusedAdam(torch.optim.Optimizer):
    """CPU stand-in with FusedAdam's API and state layout (module doc). ``te_style``: TE's state_dict overrides."""

    te_style = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 bias_correction=True, adam_w_mode=True, capturable=False, master_weights=False, **unused):
        if amsgrad or capturable or master_weights:
            raise RuntimeError("FusedAdam stand-in: amsgrad / capturable / master_weights are not modelled")
        super().__init__(params, {"lr": lr, "bias_correction": bias_correction, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})
        self.adam_w_mode = 1 if adam_w_mode else 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            if self.te_style and len(group["params"]) == 0:
                continue
            group["step"] = group["step"] + 1 if "step" in group else 1
            step = group["step"]
            beta1, beta2 = group["betas"]
            c1 = 1 - beta1 ** step if group["bias_correction"] else 1.0
            c2 = 1 - beta2 ** step if group["bias_correction"] else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                grad = p.grad.float()
                param = p.float()
                if self.adam_w_mode:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                else:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / c2).sqrt_().add_(group["eps"])
                param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / c1)
                p.copy_(param)
        return loss

    def state_dict(self):
        out = super().state_dict()
        if self.te_style:  # TE returns every state in fp32 (its states may be scaled low-precision tensors)
            out["state"] = {k: {n: v.float() for n, v in s.items()} for k, s in out["state"].items()}
        return out

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not self.te_style:
            return
        # TE re-creates each state tensor (torch's loader casts states to the parameter's dtype)
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for key, p in zip(ids, params):
            if key in state_dict["state"]:
                self.state[p] = {n: v.detach().float().clone() for n, v in state_dict["state"][key].items()}


class ApexFusedAdam(FusedAdam):
    """apex's flavour: no state_dict overrides, empty groups not skipped. Named ``FusedAdam`` like apex's class."""

    te_style = False


ApexFusedAdam.__name__ = ApexFusedAdam.__qualname__ = "FusedAdam"


@contextlib.contextmanager
def fused_adam_installed(kind: str = "te") -> Iterator[type]:
    """megatron-core sees TE (``"te"``) or apex (``"apex"``) FusedAdam = the stand-in (module doc)."""
    import megatron.core.optimizer as mopt
    from megatron.core.optimizer import distrib_optimizer as dopt

    cls = {"te": FusedAdam, "apex": ApexFusedAdam}[kind]
    patches = [(mopt, "Adam", cls), (mopt, "USING_PYTORCH_OPTIMIZER", False), (dopt, "Adam", cls),
               (dopt, "HAVE_APEX_OR_TE", True), (dopt, "USING_TE_OPTIMIZER", kind == "te"),
               (dopt, "USING_APEX_OPTIMIZER", kind == "apex")]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield cls
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


__all__ = ["FusedAdam", "ApexFusedAdam", "fused_adam_installed"]
