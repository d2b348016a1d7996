"""DOEI between two transformer blocks: X_i' = X_i + Δ_i (PPDO on patch tokens, CPDO on class tokens).

The block computes X_i and its attention A_i unchanged; :func:`doei_update` returns the tokens the
next block receives. Parameter-free, label-free, active in training and inference.
Scores and updates are computed in float32 (also under autocast) and cast back to X's dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor

from doei.core.config import DOEIConfig
from doei.core.cpdo import cpdo_delta
from doei.core.ppdo import class_tokens_f32, ppdo_delta
from doei.core.selection import random_ranks


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
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_cls, x_patch = x[:, :num_cls], x[:, num_cls:]
        x_cls32 = class_tokens_f32(x, num_cls)   # saved for backward: a copy, never a view of x [B, T, D]
        if do_p:
            alpha = cfg.alpha if cfg.hfa and cfg.hfa_target == "scores" else 0.0
            d_p, k_p = ppdo_delta(x, attn, num_cls, block, depth, cfg.st_p2c, cfg.af_p2c, cfg.sf_p2c,
                                  cfg.suppress, g_hat, alpha, x_cls=x_cls32, suppress_target=cfg.suppress_target,
                                  ranks=random_ranks(keys, cfg.control_seed, block, num_cls, x.shape[1] - num_cls)
                                  if rand else None, uniform=uniform)
        else:
            d_p, k_p = None, None
        if do_c:
            d_c, k_c = cpdo_delta(x, attn, num_cls, block, depth, cfg.st_c2c, cfg.af_c2c, cfg.sf_c2c,
                                  cfg.suppress, x_cls=x_cls32, uniform=uniform,
                                  ranks=random_ranks(keys, cfg.control_seed, -block, num_cls, num_cls, True)
                                  if rand else None)
        else:
            d_c, k_c = None, None
        # x + [Δ_c; Δ_p] (a zero block where a part does not act): the same values as updating the two
        # slices and concatenating them, but x's gradient passes straight through, without the
        # zero-filled [B, T, D] buffers that slicing x costs in backward
        b, _, dim = x.shape
        zeros = (lambda n: torch.zeros(b, n, dim, dtype=torch.float32, device=x.device))
        delta = torch.cat([d_c if d_c is not None else zeros(num_cls),
                           d_p if d_p is not None else zeros(x.shape[1] - num_cls)], dim=1)
        out = (x.float() + delta).to(x.dtype)
    if stats is not None:
        stats.update(k_p2c=k_p, k_c2c=k_c,
                     delta_ratio_patch=_ratio(d_p, x_patch), delta_ratio_cls=_ratio(d_c, x_cls))
    return out


def _ratio(delta: Tensor | None, x: Tensor) -> float | None:
    if delta is None:
        return None
    with torch.no_grad():
        return float((delta.norm(dim=(-2, -1)) / x.float().norm(dim=(-2, -1)).clamp_min(1e-12)).mean())
