"""CPDO, class-wise dual optimisation (Eq. 12-16): move class tokens toward/away from each other.

Scores ``S_c = A_cc + A_ccᵀ`` [B, C, C]; the diagonal is never a candidate (a class with itself
carries no cross-class information), so n = C - 1 per row:
``X_c' = X_c + ((AF·Mc_cs + SF·Mc_ns) ⊙ S_c) @ X_c``. Undefined (skipped) for C = 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from doei.core.attention import ClassAttention
from doei.core.ppdo import class_tokens, head_mean, work_dtype
from doei.core.selection import num_selected, selection_factor, selection_weights


def class_scores(attn: Tensor | ClassAttention, num_cls: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S_c [B, C, C] from head-mean attention [B, T, T] or its class rows
    (:class:`doei.core.attention.ClassAttention`); per head [B, H, C, C] from [B, H, T, T]; in ``dtype``."""
    rows = attn.rows if isinstance(attn, ClassAttention) else attn[..., :num_cls, :]
    a = rows[..., :num_cls].to(dtype)
    return a + a.transpose(-1, -2)


def cpdo_weights(attn: Tensor | ClassAttention, num_cls: int, block: int, depth: int, step: float,
                 amplify: float, suppress: float, mode: str, ranks: Tensor | None = None, uniform: bool = False,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, int]:
    """CPDO as weights: ``(W [B, C, C], k_i)`` with ``Δ_c = W @ X_c`` (zero diagonal), in ``dtype``;
    the arguments as :func:`cpdo_delta`."""
    n = num_cls - 1
    k = num_selected(block, depth, step, n)
    scores = class_scores(attn, num_cls, dtype)
    eye = torch.eye(num_cls, dtype=torch.bool, device=scores.device)
    with torch.no_grad():
        if ranks is None:
            factor = class_factor(scores, k, amplify, suppress, mode)
        else:
            if scores.dim() == 4:
                ranks = ranks.unsqueeze(1)
            factor = selection_weights(ranks, n, k, amplify, suppress, mode, dtype)
    if uniform:
        mean = scores.masked_fill(eye, 0.0).sum(dim=-1, keepdim=True) / n
        scores = mean.expand_as(scores)
    return head_mean(scores * factor), k


def class_factor(scores: Tensor, k: int, amplify: float, suppress: float, mode: str) -> Tensor:
    """The selection factor [..., C, C] of S_c [..., C, C] (float): each row's top-k_i off-diagonal entries
    AF, the suppressed ones SF, the diagonal 0 (it is ranked last, = n = C - 1, before the selection)."""
    c = scores.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=scores.device)
    candidates = None
    if suppress != 0 and scores.device.type == "cpu" and bool(torch.isfinite(scores.sum())):   # (overflow: no shortcut)
        candidates = (~eye).to(scores.dtype)     # the diagonal, alone at -inf, is the one entry ranked n
    return selection_factor(scores.masked_fill(eye, float("-inf")), c - 1, k, amplify, suppress, mode, candidates)


def cpdo_delta(x: Tensor, attn: Tensor, num_cls: int, block: int, depth: int, step: float, amplify: float,
               suppress: float, mode: str, x_cls: Tensor | None = None, ranks: Tensor | None = None,
               uniform: bool = False) -> tuple[Tensor, int]:
    """Update of the class tokens, [B, C, D] float32 (float64 for float64 x), and k_i. x [B, T, D], attn
    [B, T, T] (or per head [B, H, T, T]: selection in each head, the weighted scores averaged over heads);
    ``x_cls``: :func:`doei.core.ppdo.class_tokens_f32` of x if the caller has it already. Controls (issue
    #24): ``ranks`` [B, C, C] (diagonal ranked last) replaces the ranking by the scores; ``uniform`` weights
    every candidate by its row's mean off-diagonal score. :func:`doei.core.doei.doei_update` uses
    :func:`cpdo_weights` and applies Δ without materialising it."""
    dtype = work_dtype(x)
    w, k = cpdo_weights(attn, num_cls, block, depth, step, amplify, suppress, mode, ranks, uniform, dtype)
    if x_cls is None:
        x_cls = class_tokens(x, num_cls, dtype)   # not a view of x: see doei.core.ppdo.class_tokens_f32
    return w @ x_cls.to(dtype), k
