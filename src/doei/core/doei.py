"""DOEI between two transformer blocks: X_i' = X_i + Δ_i (PPDO on patch tokens, CPDO on class tokens).

The block computes X_i and its attention A_i unchanged; :func:`doei_update` returns the tokens the
next block receives. Parameter-free, label-free, active in training and inference.
Scores and updates are computed in float32 (also under autocast; float64 for float64 tokens) and cast
back to X's dtype.

Both updates are linear in the original class tokens, so the update is applied as one product over the
tokens with hand-written backward passes (:mod:`doei.core.fused`); today's DOEI runs end to end in one
autograd node (:class:`doei.core.fused.DefaultUpdate`), the other readings and controls build the weights
with autograd (:func:`doei.core.ppdo.ppdo_weights`, :func:`doei.core.cpdo.cpdo_weights`) and apply them
with :class:`doei.core.fused.TokenUpdate`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from doei.core.attention import ClassAttention
from doei.core.config import DOEIConfig
from doei.core.cpdo import cpdo_weights
from doei.core.fused import DefaultUpdate, TokenUpdate
from doei.core.ppdo import class_tokens, ppdo_weights, work_dtype
from doei.core.selection import num_selected, random_ranks


def doei_update(x: Tensor, attn: Tensor, num_cls: int, block: int, depth: int, cfg: DOEIConfig,
                g_hat: Tensor | None = None, stats: dict | None = None, keys: Tensor | None = None) -> Tensor:
    """Apply DOEI after 1-based ``block`` of ``depth``.

    x [B, T, D] tokens (C class tokens first), attn [B, T, T] head-mean softmax attention of the
    block or only its class rows/columns (:class:`doei.core.attention.ClassAttention`, same results;
    other readings: its logits, or per head [B, H, T, T]: what the block hands over), g_hat [B, P, P]
    HFA affinity or None. If ``stats`` is a dict, it receives ``k_p2c``,
    ``k_c2c`` and the ratios ``delta_ratio_patch`` / ``delta_ratio_cls`` = ‖Δ‖/‖X‖ (batch means).
    Returns x itself (the same object) when DOEI does not act here. ``keys`` [B] int64: the images' keys
    (:func:`doei.core.selection.image_keys`), needed by the control ``select="random"`` only.
    """
    if not cfg.applies_to(block, depth):
        return x
    do_p = cfg.ppdo and (cfg.af_p2c != 0 or cfg.sf_p2c != 0) and x.shape[1] > num_cls
    do_c = cfg.cpdo and num_cls > 1 and (cfg.af_c2c != 0 or cfg.sf_c2c != 0)
    if not (do_p or do_c):
        return x
    rand = cfg.select == "random"
    if rand and (keys is None or keys.shape != (x.shape[0],)):
        raise ValueError(f"select='random' needs keys [B] = [{x.shape[0]}] (doei.core.selection.image_keys), "
                         f"got {None if keys is None else tuple(keys.shape)}")
    uniform = cfg.weights == "uniform"
    b, t = x.shape[:2]
    dtype = work_dtype(x)
    alpha = cfg.alpha if cfg.hfa and cfg.hfa_target == "scores" else 0.0
    with torch.autocast(device_type=x.device.type, enabled=False):
        if not (rand or uniform) and cfg.suppress_target == "class" and _head_mean(attn):
            # today's DOEI: scores, selection and update in one autograd node (doei.core.fused)
            k_p = num_selected(block, depth, cfg.st_p2c, t - num_cls) if do_p else None
            k_c = num_selected(block, depth, cfg.st_c2c, num_cls - 1) if do_c else None
            rows, cols = (attn.rows, attn.cols) if isinstance(attn, ClassAttention) else \
                (attn[:, :num_cls], attn[:, num_cls:, :num_cls])
            out, wt = DefaultUpdate.apply(x, rows, cols, g_hat, num_cls, alpha,
                                          (k_p, cfg.af_p2c, cfg.sf_p2c, cfg.suppress) if do_p else None,
                                          (k_c, cfg.af_c2c, cfg.sf_c2c, cfg.suppress) if do_c else None, dtype)
            w_sup = None
        else:
            w_p = w_sup = w_c = k_p = k_c = None
            if do_p:
                w_p, w_sup, k_p = ppdo_weights(attn, num_cls, block, depth, cfg.st_p2c, cfg.af_p2c, cfg.sf_p2c,
                                               cfg.suppress, g_hat, alpha, cfg.suppress_target,
                                               random_ranks(keys, cfg.control_seed, block, num_cls, t - num_cls)
                                               if rand else None, uniform, dtype)
            if do_c:
                w_c, k_c = cpdo_weights(attn, num_cls, block, depth, cfg.st_c2c, cfg.af_c2c, cfg.sf_c2c,
                                        cfg.suppress, random_ranks(keys, cfg.control_seed, -block, num_cls, num_cls,
                                                                   True) if rand else None, uniform, dtype)
            # Wᵀ [B, C, T]: column t holds the coefficients of the class tokens in token t's update
            zeros = (lambda n: torch.zeros(b, num_cls, n, dtype=dtype, device=x.device))
            wt = torch.cat([w_c.transpose(1, 2) if do_c else zeros(num_cls),
                            w_p if do_p else zeros(t - num_cls)], dim=-1)
            out = TokenUpdate.apply(x, wt, w_sup, num_cls)
    if stats is not None:
        with torch.no_grad():
            delta = wt.transpose(1, 2) @ class_tokens(x, num_cls, dtype)       # Δ [B, T, D] (+ the SF term)
            if w_sup is not None:
                delta[:, num_cls:] += w_sup.unsqueeze(-1) * x[:, num_cls:].to(dtype)
        stats.update(k_p2c=k_p, k_c2c=k_c,
                     delta_ratio_patch=_ratio(delta[:, num_cls:], x[:, num_cls:]) if do_p else None,
                     delta_ratio_cls=_ratio(delta[:, :num_cls], x[:, :num_cls]) if do_c else None)
    return out


def _head_mean(attn) -> bool:
    """Whether ``attn`` is the head-mean attention [B, T, T] or its class rows/columns (not per head)."""
    if isinstance(attn, ClassAttention):
        return attn.cols is not None and attn.rows.dim() == 3
    return attn.dim() == 3


def _ratio(delta: Tensor | None, x: Tensor) -> float | None:
    if delta is None:
        return None
    with torch.no_grad():
        return float((delta.norm(dim=(-2, -1)) / x.float().norm(dim=(-2, -1)).clamp_min(1e-12)).mean())
