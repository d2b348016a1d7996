"""PPDO, patch-wise dual optimisation (Eq. 7-11): move patch tokens toward/away from class tokens.

Scores ``S_p = A_cp + A_pcᵀ`` [B, C, P] rank every patch as a candidate for each class token; per
class the top-k_i patches are confident (amplified by AF), the rest (or bottom-k_i) suppressed by SF:
``X_p' = X_p + ((AF·M_cs + SF·M_ns) ⊙ S̃_p)ᵀ @ X_c``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from doei.core.attention import ClassAttention
from doei.core.hfa import hybrid_scores
from doei.core.selection import num_selected, rank_desc, selection_weights


def patch_scores(attn: Tensor | ClassAttention, num_cls: int) -> Tensor:
    """S_p [B, C, P] from head-mean attention [B, T, T] (float32) or its class rows/columns
    (:class:`doei.core.attention.ClassAttention`); per head [B, H, C, P] from [B, H, T, T]."""
    if isinstance(attn, ClassAttention):
        return attn.rows[..., num_cls:].float() + attn.cols.float().transpose(-1, -2)
    a = attn.float()
    return a[..., :num_cls, num_cls:] + a[..., num_cls:, :num_cls].transpose(-1, -2)


def head_mean(w: Tensor) -> Tensor:
    """Per-head weights [B, H, C, n] -> their mean over heads [B, C, n]; [B, C, n] is returned as is."""
    return w.mean(dim=1) if w.dim() == 4 else w


def class_tokens_f32(x: Tensor, num_cls: int) -> Tensor:
    """The class tokens ``x[:, :C]`` as float32 [B, C, D] in a storage of their own.

    The products that read them save them for backward. When x is already float32, ``.float()`` is a
    no-op that returns a VIEW of x, and a saved view keeps all of x's [B, T, D] storage alive until
    backward (one extra copy of the tokens per DOEI block); so a float32 x is copied (B·C·D values).
    Same values, so the same results bit for bit."""
    x_cls = x[:, :num_cls]
    return x_cls.clone(memory_format=torch.contiguous_format) if x_cls.dtype == torch.float32 else x_cls.float()


def ppdo_delta(x: Tensor, attn: Tensor, num_cls: int, block: int, depth: int, step: float, amplify: float,
               suppress: float, mode: str, g_hat: Tensor | None, alpha: float,
               x_cls: Tensor | None = None, suppress_target: str = "class", ranks: Tensor | None = None,
               uniform: bool = False) -> tuple[Tensor, int]:
    """Update of the patch tokens, [B, P, D] float32, and k_i. x [B, T, D], attn [B, T, T] (or per head
    [B, H, T, T]: selection in each head, the weighted scores then averaged over heads);
    ``x_cls``: :func:`class_tokens_f32` of x if the caller has it already (shared with CPDO).
    ``suppress_target="patch"``: the SF term multiplies each patch token by its summed non-confident
    scores (``SF · Σ_c W_ns[c, j] · X_p[j]``) instead of pushing it along the class tokens.
    Controls (issue #24): ``ranks`` [B, C, P] replaces the ranking by the scores (``select="random"``);
    ``uniform`` weights every candidate by its row's mean score instead of its own (``weights="uniform"``)."""
    num_patches = x.shape[1] - num_cls
    k = num_selected(block, depth, step, num_patches)
    scores = hybrid_scores(patch_scores(attn, num_cls), g_hat, alpha)
    if x_cls is None:
        x_cls = class_tokens_f32(x, num_cls)
    if ranks is None:
        with torch.no_grad():
            ranks = rank_desc(scores)
    elif scores.dim() == 4:
        ranks = ranks.unsqueeze(1)      # one draw for every head
    if uniform:
        scores = scores.mean(dim=-1, keepdim=True).expand_as(scores)
    if suppress_target == "class":
        with torch.no_grad():
            factor = selection_weights(ranks, num_patches, k, amplify, suppress, mode)
        weights = head_mean(scores * factor)                     # [B, C, P]
        return weights.transpose(1, 2) @ x_cls, k               # [B, P, D]
    if suppress_target != "patch":
        raise ValueError(f"unknown suppress_target {suppress_target!r}")
    with torch.no_grad():
        f_amp = selection_weights(ranks, num_patches, k, amplify, 0.0, mode)
        f_sup = selection_weights(ranks, num_patches, k, 0.0, suppress, mode)
    w_amp = head_mean(scores * f_amp)                            # [B, C, P]
    w_sup = head_mean(scores * f_sup).sum(dim=1)                 # [B, P]: SF · Σ_c W_ns[c, j]
    return w_amp.transpose(1, 2) @ x_cls + w_sup.unsqueeze(-1) * x[:, num_cls:].float(), k
