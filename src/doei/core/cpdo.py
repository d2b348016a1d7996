"""CPDO, class-wise dual optimisation (Eq. 12-16): move class tokens toward/away from each other.

Scores ``S_c = A_cc + A_ccᵀ`` [B, C, C]; the diagonal is never a candidate (a class with itself
carries no cross-class information), so n = C - 1 per row:
``X_c' = X_c + ((AF·Mc_cs + SF·Mc_ns) ⊙ S_c) @ X_c``. Undefined (skipped) for C = 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from doei.core.attention import ClassAttention
from doei.core.ppdo import class_tokens_f32, head_mean
from doei.core.selection import num_selected, rank_desc, selection_weights


def class_scores(attn: Tensor | ClassAttention, num_cls: int) -> Tensor:
    """S_c [B, C, C] from head-mean attention [B, T, T] (float32) or its class rows
    (:class:`doei.core.attention.ClassAttention`); per head [B, H, C, C] from [B, H, T, T]."""
    rows = attn.rows if isinstance(attn, ClassAttention) else attn[..., :num_cls, :]
    a = rows[..., :num_cls].float()
    return a + a.transpose(-1, -2)


def cpdo_delta(x: Tensor, attn: Tensor, num_cls: int, block: int, depth: int, step: float, amplify: float,
               suppress: float, mode: str, x_cls: Tensor | None = None, ranks: Tensor | None = None,
               uniform: bool = False) -> tuple[Tensor, int]:
    """Update of the class tokens, [B, C, D] float32, and k_i. x [B, T, D], attn [B, T, T] (or per head
    [B, H, T, T]: selection in each head, the weighted scores averaged over heads);
    ``x_cls``: :func:`doei.core.ppdo.class_tokens_f32` of x if the caller has it already. Controls (issue
    #24): ``ranks`` [B, C, C] (diagonal ranked last) replaces the ranking by the scores; ``uniform`` weights
    every candidate by its row's mean off-diagonal score."""
    n = num_cls - 1
    k = num_selected(block, depth, step, n)
    scores = class_scores(attn, num_cls)
    eye = torch.eye(num_cls, dtype=torch.bool, device=scores.device)
    with torch.no_grad():
        if ranks is None:
            ranks = rank_desc(scores.masked_fill(eye, float("-inf")))  # the diagonal ranks last (= n)
        elif scores.dim() == 4:
            ranks = ranks.unsqueeze(1)
    if uniform:
        mean = scores.masked_fill(eye, 0.0).sum(dim=-1, keepdim=True) / n
        scores = mean.expand_as(scores)
    with torch.no_grad():
        factor = selection_weights(ranks, n, k, amplify, suppress, mode)
    if x_cls is None:
        x_cls = class_tokens_f32(x, num_cls)   # not a view of x: see class_tokens_f32
    return head_mean(scores * factor) @ x_cls, k
