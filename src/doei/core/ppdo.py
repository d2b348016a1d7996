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
from doei.core.selection import num_selected, selection_factor, selection_weights


def patch_scores(attn: Tensor | ClassAttention, num_cls: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S_p [B, C, P] from head-mean attention [B, T, T] or its class rows/columns
    (:class:`doei.core.attention.ClassAttention`); per head [B, H, C, P] from [B, H, T, T]. In ``dtype``
    (float32, or float64 for float64 work)."""
    if isinstance(attn, ClassAttention):
        return attn.rows[..., num_cls:].to(dtype) + attn.cols.to(dtype).transpose(-1, -2)
    a = attn.to(dtype)
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
    return class_tokens(x, num_cls, torch.float32)


def class_tokens(x: Tensor, num_cls: int, dtype: torch.dtype) -> Tensor:
    """The class tokens ``x[:, :C]`` [B, C, D] as ``dtype``, always a copy (see :func:`class_tokens_f32`)."""
    x_cls = x[:, :num_cls]
    return x_cls.clone(memory_format=torch.contiguous_format) if x_cls.dtype == dtype else x_cls.to(dtype)


def ppdo_weights(attn: Tensor | ClassAttention, num_cls: int, block: int, depth: int, step: float,
                 amplify: float, suppress: float, mode: str, g_hat: Tensor | None, alpha: float,
                 suppress_target: str = "class", ranks: Tensor | None = None, uniform: bool = False,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor | None, int]:
    """PPDO as weights: ``(W [B, C, P], W_sup [B, P] or None, k_i)`` with ``Δ_p = Wᵀ @ X_c + W_sup ⊙ X_p``
    (``W_sup`` only for ``suppress_target="patch"``: SF · Σ_c W_ns[c, j]; otherwise the SF term is in W).
    attn: as :func:`patch_scores`; weights in ``dtype``; the other arguments as :func:`ppdo_delta`."""
    if suppress_target not in ("class", "patch"):
        raise ValueError(f"unknown suppress_target {suppress_target!r}")
    scores = hybrid_scores(patch_scores(attn, num_cls, dtype), g_hat, alpha)
    num_patches = scores.shape[-1]
    k = num_selected(block, depth, step, num_patches)
    split = suppress_target == "patch"
    with torch.no_grad():
        if ranks is None:
            factors = [selection_factor(scores, num_patches, k, amplify, 0.0 if split else suppress, mode)]
            if split:
                factors.append(selection_factor(scores, num_patches, k, 0.0, suppress, mode))
        else:
            if scores.dim() == 4:
                ranks = ranks.unsqueeze(1)      # one draw for every head
            factors = [selection_weights(ranks, num_patches, k, amplify, 0.0 if split else suppress, mode, dtype)]
            if split:
                factors.append(selection_weights(ranks, num_patches, k, 0.0, suppress, mode, dtype))
    if uniform:
        scores = scores.mean(dim=-1, keepdim=True).expand_as(scores)
    w = head_mean(scores * factors[0])                   # [B, C, P]
    w_sup = head_mean(scores * factors[1]).sum(dim=1) if split else None   # [B, P]
    return w, w_sup, k


def ppdo_delta(x: Tensor, attn: Tensor, num_cls: int, block: int, depth: int, step: float, amplify: float,
               suppress: float, mode: str, g_hat: Tensor | None, alpha: float,
               x_cls: Tensor | None = None, suppress_target: str = "class", ranks: Tensor | None = None,
               uniform: bool = False) -> tuple[Tensor, int]:
    """Update of the patch tokens, [B, P, D] float32 (float64 for float64 x), and k_i. x [B, T, D],
    attn [B, T, T] (or per head [B, H, T, T]: selection in each head, the weighted scores then averaged
    over heads); ``x_cls``: :func:`class_tokens_f32` of x if the caller has it already (shared with CPDO).
    ``suppress_target="patch"``: the SF term multiplies each patch token by its summed non-confident
    scores (``SF · Σ_c W_ns[c, j] · X_p[j]``) instead of pushing it along the class tokens.
    Controls (issue #24): ``ranks`` [B, C, P] replaces the ranking by the scores (``select="random"``);
    ``uniform`` weights every candidate by its row's mean score instead of its own (``weights="uniform"``).
    :func:`doei.core.doei.doei_update` uses :func:`ppdo_weights` and applies Δ without materialising it."""
    dtype = work_dtype(x)
    w, w_sup, k = ppdo_weights(attn, num_cls, block, depth, step, amplify, suppress, mode, g_hat, alpha,
                               suppress_target, ranks, uniform, dtype)
    x_cls = class_tokens(x, num_cls, dtype) if x_cls is None else x_cls.to(dtype)
    delta = w.transpose(1, 2) @ x_cls                              # [B, P, D]
    if w_sup is not None:
        delta = delta + w_sup.unsqueeze(-1) * x[:, num_cls:].to(dtype)
    return delta, k


def work_dtype(x: Tensor) -> torch.dtype:
    """The dtype DOEI computes in for tokens/attention of dtype ``x.dtype``: float32 (bfloat16, float16,
    float32), float64 for float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
