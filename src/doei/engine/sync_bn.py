"""BatchNorm over the global batch under DDP (``train.sync_bn``, ``refine.train.sync_bn``, ``seg.train.sync_bn``).

A single process normalises a BatchNorm layer over the whole batch. Under DDP each rank sees
``batch_size / W'`` images, so a plain BatchNorm in training mode would compute per-rank statistics and a
W-process run would not be the single-process computation (TransCAM's Conformer: 8 images over 4 GPUs are
normalised 2 by 2). :func:`synchronized_batchnorm` switches every BatchNorm layer of a model that is in
training mode to statistics over the training ranks (:func:`doei.engine.distributed.training_ranks`):

* mean ``= sum_r sum(x_r) / N`` and biased variance ``= sum_r sum((x_r - mean)^2) / N`` (two all-reduces,
  the same two-pass arithmetic on every rank; ``N`` the global count), differentiated through the
  all-reduce (its backward sums the gradients over the ranks), so the gradient is the single-process one;
* running statistics updated as ``torch.nn.BatchNorm*`` does (unbiased variance, momentum or the
  cumulative average, ``num_batches_tracked``).

It works on gloo (CPU; ``torch.nn.SyncBatchNorm`` is CUDA-only) and NCCL alike, which lets the CPU tests
check it (tests/test_dist_world_size.py). Layers in eval mode (the frozen BatchNorm of the ResNet38 nets)
and models run by one training rank are untouched. The layers keep their names and state-dict keys: the
switch changes the class of each layer for the duration of the block and restores it after.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from doei.engine import distributed as dist_util

_SYNCED: dict[type, type] = {}


class _SumOverRanks(torch.autograd.Function):
    """``sum_r t_r`` on every rank; the gradient of each ``t_r`` is the sum of the output gradients over
    the ranks (every rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:   # noqa: D102
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):   # noqa: D102
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


class _GlobalStatsMixin:
    """``forward`` of a BatchNorm layer with statistics over the training ranks' global batch."""

    _doei_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # noqa: D102 - see the module docstring
        if not self.training or not getattr(self, "_doei_synced", False):
            return super().forward(x)
        self._check_input_dim(x)
        group = self._doei_group
        dims = [0, *range(2, x.dim())]
        shape = [1, -1, *([1] * (x.dim() - 2))]
        xf = x.float()
        n_local = torch.tensor([xf.numel() / max(xf.shape[1], 1)], dtype=torch.float32, device=x.device)
        n = n_local.clone()
        dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
        mean = _SumOverRanks.apply(xf.sum(dims), group) / n
        centred = xf - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims), group) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED:
        _SYNCED[cls] = type(f"GlobalBatch{cls.__name__}", (_GlobalStatsMixin, cls), {"__module__": __name__})
    return _SYNCED[cls]


@contextlib.contextmanager
def synchronized_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside the block, ``model``'s BatchNorm layers in training mode normalise over the global batch of the
    current training ranks (see the module docstring); yields how many layers were switched (0 with one
    training rank, ``enabled=False`` or no BatchNorm). Every training rank must run the same forwards."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"synchronized_batchnorm: model must be an nn.Module, got {type(model).__name__}")
    tr = dist_util.current_training_ranks()
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, _GlobalStatsMixin)]
    if not enabled or tr.size == 1 or not layers:
        yield 0
        return
    originals = [type(m) for m in layers]
    for m in layers:
        m.__class__ = _synced_class(type(m))
        m._doei_group, m._doei_synced = tr.group, True
    try:
        yield len(layers)
    finally:
        for m, cls in zip(layers, originals):
            m.__class__ = cls
            for attr in ("_doei_group", "_doei_synced"):
                m.__dict__.pop(attr, None)


__all__ = ["synchronized_batchnorm"]
