"""AdamW with DeiT's parameter groups, and the warm-up + cosine learning-rate schedule.

MCTformer trains with timm's ``create_optimizer`` / ``create_scheduler`` (main.py defaults, run.sh):

* AdamW, lr 5e-4 scaled by batch / 512 (DeiT's rule: 6.25e-5 at batch 64), weight decay 0.05,
  eps 1e-8, betas (0.9, 0.999), no gradient clipping;
* weight decay is NOT applied to biases, 1-D parameters (norms) and ``pos_embed`` / ``cls_token``
  (timm's ``no_weight_decay`` set);
* 5 warm-up epochs from 1e-6, then cosine down to ``min_lr`` 1e-5 over the 60 epochs, stepped once
  per epoch.

Differences here, on purpose: the schedule is evaluated per optimiser step from the fractional epoch
(smoother for short runs), and the cosine spans the epochs AFTER warm-up (timm's default counts
warm-up epochs inside the cosine, so its lr at the end of warm-up is already 0.966× the peak at 60
epochs). Both are negligible at paper scale and make short demo schedules well behaved.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights, and (decay 0) biases, 1-D tensors, ``pos_embed``, ``cls_token``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``foreach=False`` keeps the update order fixed across runs."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, foreach=False)


def lr_at(epoch_float: float, peak_lr: float, epochs: float, warmup_epochs: float, warmup_lr: float,
          min_lr: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up ``warmup_lr → peak_lr`` over ``warmup_epochs``,
    then half-cosine ``peak_lr → min_lr`` over the remaining epochs (clamped at ``min_lr`` after them).

    ``min_lr`` above ``peak_lr`` (a tiny demo lr) is capped at ``peak_lr``: the schedule never rises
    after warm-up.
    """
    min_lr = min(min_lr, peak_lr)
    if warmup_epochs > 0 and epoch_float < warmup_epochs:
        return warmup_lr + (peak_lr - warmup_lr) * epoch_float / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    t = min(max((epoch_float - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for g in optimizer.param_groups:
        g["lr"] = lr
