"""DOEI's token update with hand-written backward passes (used by :func:`doei.core.doei.doei_update`).

Both updates are linear in the ORIGINAL class tokens X_c [B, C, D]: ``Δ_c = W_c @ X_c`` (CPDO) and
``Δ_p = W_pᵀ @ X_c`` (PPDO), so ``X' = X + (Wᵀ)ᵀ @ X_c`` with ``Wᵀ = [W_cᵀ | W_p]`` [B, C, T] (column t:
the coefficients of the class tokens in token t's update). Forward is one product over the tokens;
backward reads the incoming gradient dY [B, T, D] in three products and copies it once:
``dX = dY + [Wᵀ @ dY ; 0]`` (the incoming gradient itself is never modified: it may be shared),
``dWᵀ = X_c @ dYᵀ`` — no slices of x, no zero-filled [B, T, D] buffers, no concatenated Δ.

* :class:`TokenUpdate`: Wᵀ (and ``W_sup`` of ``suppress_target="patch"``) computed by autograd outside;
* :class:`DefaultUpdate`: today's DOEI from the head-mean class rows/columns of the attention end to end
  (scores, HFA, selection, weights and the update; their gradients written out), which saves the small
  autograd graph of the scores.

Only the class tokens (a copy [B, C, D], never a view of x: that would keep x's storage alive until
backward), Wᵀ and the selection factors are saved. The backward passes are not themselves differentiable
(``once_differentiable``: a double backward raises instead of missing terms).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from doei.core.cpdo import class_factor
from doei.core.ppdo import class_tokens
from doei.core.selection import selection_factor


def _forward(x: Tensor, wt: Tensor, num_cls: int) -> tuple[Tensor, Tensor]:
    """(X + (Wᵀ)ᵀ @ X_c in wt's dtype [B, T, D], X_c [B, C, D]) for x [B, T, D], wt [B, C, T]."""
    x_cls = class_tokens(x, num_cls, wt.dtype)
    if num_cls == 1:        # an outer product: one elementwise pass
        out = torch.addcmul(x.to(wt.dtype), wt.transpose(1, 2), x_cls)
    elif x.dtype == wt.dtype:
        out = torch.bmm(wt.transpose(1, 2), x_cls).add_(x)
    else:                   # the conversion is a fresh tensor already: accumulate the product into it
        out = x.to(wt.dtype).baddbmm_(wt.transpose(1, 2), x_cls)
    return out, x_cls


def _grad_wt(x_cls: Tensor, g: Tensor) -> Tensor:
    """dWᵀ = X_c @ dYᵀ [B, C, T], in the layout measured faster on CPU (MKL, 1 thread): as written for a
    few class tokens (C = 1: 2x faster), as (dY @ X_cᵀ)ᵀ from about 16 on (C = 80: 1.2x faster)."""
    if x_cls.shape[1] < 16:
        return torch.bmm(x_cls, g.transpose(1, 2))
    return torch.bmm(g, x_cls.transpose(1, 2)).transpose(1, 2)


def _grad_x(g: Tensor, grad: Tensor, wt: Tensor, num_cls: int) -> Tensor:
    """dX = dY + [Wᵀ @ dY ; 0] in wt's dtype; g = the incoming gradient ``grad`` in wt's dtype."""
    d_cls = torch.bmm(wt, g)                                   # [B, C, D]
    d_x = g.clone(memory_format=torch.contiguous_format) if g is grad else g.contiguous()
    d_x[:, :num_cls] += d_cls
    return d_x


def _full_precision(backward):
    """Run a backward in the working dtype also when ``.backward()`` is called inside an autocast region."""
    @functools.wraps(backward)
    def run(ctx, grad, *rest):
        with torch.autocast(device_type=grad.device.type, enabled=False):
            return backward(ctx, grad, *rest)
    return run


class TokenUpdate(torch.autograd.Function):
    """``TokenUpdate.apply(x, wt, w_sup, num_cls)`` = ``X + (Wᵀ)ᵀ @ X_c (+ W_sup ⊙ X_p)``: x [B, T, D],
    wt = Wᵀ [B, C, T], w_sup [B, P] or None; computed in wt's dtype, returned in x's. Saves x itself only
    with ``w_sup``."""

    @staticmethod
    def forward(ctx, x: Tensor, wt: Tensor, w_sup: Tensor | None, num_cls: int) -> Tensor:
        out, x_cls = _forward(x, wt, num_cls)
        if w_sup is not None:
            out[:, num_cls:].addcmul_(w_sup.unsqueeze(-1), x[:, num_cls:])
        ctx.save_for_backward(x_cls, wt, w_sup, x if w_sup is not None else None)
        ctx.num_cls, ctx.x_dtype = num_cls, x.dtype
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    @_full_precision
    def backward(ctx, grad: Tensor):
        x_cls, wt, w_sup, x = ctx.saved_tensors
        c = ctx.num_cls
        g = grad.to(wt.dtype)
        d_wt = d_sup = d_x = None
        if ctx.needs_input_grad[1]:
            d_wt = _grad_wt(x_cls, g)                            # [B, C, T]
        if ctx.needs_input_grad[2]:
            d_sup = (g[:, c:] * x[:, c:]).sum(dim=-1)            # [B, P]
        if ctx.needs_input_grad[0]:
            d_x = _grad_x(g, grad, wt, c)
            if w_sup is not None:
                d_x[:, c:].addcmul_(g[:, c:], w_sup.unsqueeze(-1))
            d_x = d_x.to(ctx.x_dtype)
        return d_x, d_wt, d_sup, None


class DefaultUpdate(torch.autograd.Function):
    """Today's DOEI (``suppress_target="class"``, ``weights="scores"``, ``select="attention"``, head mean):
    ``DefaultUpdate.apply(x, rows, cols, g_hat, num_cls, alpha, ppdo, cpdo, dtype) -> (X', Wᵀ)``.

    x [B, T, D]; rows [B, C, T] = A[:C, :] and cols [B, P, C] = A[C:, :C] of the head-mean attention;
    g_hat [B, P, P] or None (HFA on the scores with blend ``alpha``); ``ppdo`` / ``cpdo``: (k_i, AF, SF,
    suppress mode) or None where the part does not act; ``dtype``: the working dtype. Returns X' in x's dtype
    and Wᵀ [B, C, T] (no gradient; for statistics). The same values as PPDO/CPDO by
    :func:`doei.core.ppdo.ppdo_weights` / :func:`doei.core.cpdo.cpdo_weights` and :class:`TokenUpdate`."""

    @staticmethod
    def forward(ctx, x, rows, cols, g_hat, num_cls, alpha, ppdo, cpdo, dtype):
        c = num_cls
        b, t, _ = x.shape
        hfa = ppdo is not None and g_hat is not None and alpha != 0
        wt = torch.empty(b, c, t, dtype=dtype, device=x.device)
        f_p = f_c = g = s_p = None
        if ppdo is not None:
            s_p = rows[:, :, c:].to(dtype) + cols.to(dtype).transpose(1, 2)             # S_p [B, C, P]
            if hfa:
                g = g_hat.to(dtype)
                s_h = torch.baddbmm(s_p, s_p, g.transpose(1, 2), beta=1.0 - alpha, alpha=alpha)
            else:
                s_h = s_p
            f_p = selection_factor(s_h, t - c, *ppdo)
            torch.mul(s_h, f_p, out=wt[:, :, c:])
        else:
            wt[:, :, c:] = 0
        if cpdo is not None:
            a = rows[:, :, :c].to(dtype)
            s_c = a + a.transpose(1, 2)                                                    # S_c [B, C, C]
            f_c = class_factor(s_c, *cpdo)
            torch.mul(s_c, f_c, out=wt[:, :, :c].transpose(1, 2))                          # W_cᵀ
        else:
            wt[:, :, :c] = 0
        out, x_cls = _forward(x, wt, c)
        keep_s = hfa and g_hat.requires_grad
        ctx.save_for_backward(x_cls, wt, f_p, f_c, g if hfa else None, s_p if keep_s else None)
        ctx.num_cls, ctx.alpha, ctx.hfa = c, alpha, hfa
        ctx.dtypes = (x.dtype, rows.dtype, cols.dtype, g_hat.dtype if g_hat is not None else None)
        ctx.mark_non_differentiable(wt)
        return out.to(x.dtype), wt

    @staticmethod
    @once_differentiable
    @_full_precision
    def backward(ctx, grad, _unused):
        x_cls, wt, f_p, f_c, g, s_p = ctx.saved_tensors
        c, alpha = ctx.num_cls, ctx.alpha
        x_dtype, rows_dtype, cols_dtype, g_dtype = ctx.dtypes
        need_x, need_rows, need_cols, need_g = ctx.needs_input_grad[:4]
        dy = grad.to(wt.dtype)
        d_x = d_rows = d_cols = d_g = None
        if need_rows or need_cols or need_g:
            d_wt = _grad_wt(x_cls, dy)                             # [B, C, T]
            if f_p is not None:
                d_sp = d_wt[:, :, c:] * f_p                          # dS̃_p
                if ctx.hfa:                                          # S̃ = (1-α) S + α S Gᵀ
                    if need_g:
                        d_g = (alpha * d_sp.transpose(1, 2) @ s_p).to(g_dtype)
                    d_sp = torch.baddbmm(d_sp, d_sp, g, beta=1.0 - alpha, alpha=alpha)
            else:
                d_sp = wt.new_zeros(wt.shape[0], c, wt.shape[2] - c)
            if f_c is not None:
                d_sc = d_wt[:, :, :c].transpose(1, 2) * f_c           # dS_c
                d_sc = d_sc + d_sc.transpose(1, 2)
            else:
                d_sc = wt.new_zeros(wt.shape[0], c, c)
            d_cols = d_sp.transpose(1, 2).to(cols_dtype) if need_cols else None
            d_rows = torch.cat([d_sc, d_sp], dim=-1).to(rows_dtype) if need_rows else None
        if need_x:
            d_x = _grad_x(dy, grad, wt, c).to(x_dtype)
        return d_x, d_rows, d_cols, d_g, None, None, None, None, None
