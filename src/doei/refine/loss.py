"""AffinityNet training loss (PSA ``train_aff.py``).

With sparse affinities ``aff`` ``[B,D,n_from]`` in (0,1] and the pair labels of
:mod:`doei.refine.labels` (same shape, batched)::

    bg  = sum(-bg_pos * log(aff + 1e-5)) / (sum(bg_pos) + 1e-5)
    fg  = sum(-fg_pos * log(aff + 1e-5)) / (sum(fg_pos) + 1e-5)
    neg = sum(-neg * log(1 + 1e-5 - aff)) / (sum(neg) + 1e-5)
    loss = bg/4 + fg/4 + neg/2

Under DDP the sums and counts are those of the GLOBAL batch
(:func:`doei.engine.distributed.global_ratio`), so the gradient is the single-process one; the logged
counts are the global ones.
"""
from __future__ import annotations

import torch

from doei.engine.distributed import current_training_ranks, global_sum


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar loss and its parts (``bg``, ``fg``, ``neg`` losses and pair counts) for logging."""
    eps = 1e-5
    k = current_training_ranks().size                  # DDP averages over k ranks: scale each share by k
    counts = global_sum(torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()]))   # global batch (one all-reduce)
    bg_n, fg_n, neg_n = counts[0] + eps, counts[1] + eps, counts[2] + eps
    bg = (-bg_pos * torch.log(aff + eps)).sum() * k / bg_n
    fg = (-fg_pos * torch.log(aff + eps)).sum() * k / fg_n
    ng = (-neg * torch.log(1.0 + eps - aff)).sum() * k / neg_n
    loss = bg / 4 + fg / 4 + ng / 2
    parts = {"bg_loss": float(bg.detach()), "fg_loss": float(fg.detach()), "neg_loss": float(ng.detach()),
             "bg_cnt": float(bg_n), "fg_cnt": float(fg_n), "neg_cnt": float(neg_n)}
    return loss, parts
