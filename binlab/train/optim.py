"""Optimizers and schedules used to train BERT students.

Three choices (:data:`OPTIMIZERS`), all with the same linear warm-up / linear decay schedule:
* ``adamw`` — ``torch.optim.AdamW`` with bias correction and one global gradient-norm clip: what most
  people mean by fine-tuning BERT today.
* ``adamw_fused`` — the same update in torch's fused kernel (``fused=True``): one pass over all parameters
  instead of a dozen per tensor, 5x faster on MiniLM's 22.7M parameters on one CPU thread
  (docs/benchmarks.md); the weights agree with ``adamw`` to rounding (1.5e-8 after 6 steps), not bit for bit.
* ``bertadam`` — :class:`BertAdam`, the optimizer of the original BERT / TinyBERT code that BinaryBERT,
  BiBERT and BiT all inherit (methods.md §1): Adam **without bias correction**, eps = 1e-6, decoupled weight
  decay, and gradient-norm clipping at 1.0 **per parameter tensor**, not globally.

Parameter groups follow the authors' code: no weight decay on biases and LayerNorm, and the learned
quantizer parameters (clip values, LSQ steps, elastic alphas) in their own group with ``clip_lr`` and no
weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from binlab.quant import quantizers as Q


class BertAdam(torch.optim.Optimizer):
    r"""Adam as in the BERT/TinyBERT code (``transformer/optimization.py``).

    For each parameter tensor ``p`` with gradient ``g`` (after clipping ``‖g‖₂ ≤ max_grad_norm`` for this
    tensor alone)::

        m ← β₁ m + (1 − β₁) g
        v ← β₂ v + (1 − β₂) g²
        p ← p − lr · ( m / (√v + ε) + weight_decay · p )

    There is no bias correction: the first steps are smaller than AdamW's, which the warm-up hides.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float | None = 1.0):
        if lr < 0:
            raise ValueError(f"BertAdam: learning rate must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"BertAdam: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["max_grad_norm"]:
                    norm = g.norm()
                    if norm > group["max_grad_norm"]:
                        g = g * (group["max_grad_norm"] / (norm + 1e-6))
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
        return loss


def warmup_linear(step: int, total_steps: int, warmup: float = 0.1) -> float:
    """The learning-rate multiplier: linear from 0 to 1 over ``warmup·total`` steps, then linear to 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    w = warmup * total_steps
    if step < w:
        return step / w
    return max(0.0, (total_steps - step) / max(1.0, total_steps - w))


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.01, clip_lr: float = 1e-4):
    """Split parameters as the authors' code does: decay / no decay (bias, LayerNorm) / quantizer params."""
    # Learned quantizer scales (clip values, LSQ steps, elastic alphas) get clip_lr; BiT's learned
    # thresholds are called ``bias`` and, as in its code, get the ordinary lr without weight decay.
    quant_ids = set()
    for m in model.modules():
        if Q.is_quantizer(m):
            quant_ids |= {id(p) for n, p in m.named_parameters(recurse=False) if "bias" not in n}
    decay, no_decay, quant = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in quant_ids:
            quant.append(p)
        elif "bias" in name or "LayerNorm" in name or "layer_norm" in name or "norm." in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [dict(params=decay, lr=lr, weight_decay=weight_decay, name="decay"),
              dict(params=no_decay, lr=lr, weight_decay=0.0, name="no_decay"),
              dict(params=quant, lr=clip_lr, weight_decay=0.0, name="quantizer")]
    return [g for g in groups if g["params"]]


#: name -> (parameter groups, lr) -> optimizer
OPTIMIZERS = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, foreach=False),
    "adamw_fused": lambda groups, lr: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, fused=True),
    "bertadam": lambda groups, lr: BertAdam(groups, lr=lr),
}


def make_optimizer(model: nn.Module, name: str = "adamw", lr: float = 2e-5, weight_decay: float = 0.01,
                   clip_lr: float = 1e-4):
    """One of :data:`OPTIMIZERS` over :func:`param_groups`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](param_groups(model, lr, weight_decay, clip_lr), lr)


def make_schedule(optimizer, total_steps: int, warmup: float = 0.1):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear(s, total_steps, warmup))


def clip_gradients(model: nn.Module, optimizer, max_norm: float = 1.0) -> float:
    """Global clipping for AdamW (BertAdam clips per tensor inside its step). Returns the pre-clip norm."""
    if isinstance(optimizer, BertAdam) or not max_norm:
        return math.nan
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
