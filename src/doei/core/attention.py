"""Attention kernels for blocks whose probabilities are read partly or not at all.

Three ways to compute one multi-head attention ``softmax(q kᵀ · scale) v`` (q, k, v [B, H, T, d]):

* :func:`eager_attention`: the T×T probabilities materialised (the official MCTformer/TS-CAM/TransCAM
  formula, bit for bit); for readers of the whole matrix (CAMs' patch→patch affinity, HFA on the
  attention, per-head selection, pre-softmax logits);
* :func:`fused_attention`: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels), when
  nobody reads the probabilities;
* :func:`class_attention`: the block output from the fused kernel PLUS the head-mean class-token rows
  ``A[:C, :]`` [B, C, T] and class-key columns ``A[C:, :C]`` [B, P, C] — all that DOEI reads — without
  the T×T matrix. The class rows are whole rows (their own softmax); the columns are
  ``exp(s·q_p·k_cᵀ - lse_p)`` with ``lse`` the softmax normaliser of each patch row, which the fused
  kernel returns; the gradient through ``lse`` (∂lse_i/∂S_ij = p_ij) is folded into the fused kernel's own
  backward (see :class:`_ClassAttention`), so values AND gradients equal the eager path's to float
  rounding. Extra work over a fused block: the 2·C·T·d products of the rows and columns forward (up to
  three times that backward), against ~7·T²·d for the attention itself; no copy of q, k, v or O.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


class ClassAttention(NamedTuple):
    """The part of a block's head-mean attention DOEI reads (C class tokens first, P = T - C patches)."""

    rows: Tensor           # [B, C, T] float32: A[:C, :] (class-token queries, every key)
    cols: Tensor | None    # [B, P, C] float32: A[C:, :C] (patch queries, class-token keys); None if not asked


def eager_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(softmax(q kᵀ · scale) v, probabilities [B, H, T, T])``, computed as the official code does."""
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    return attn @ v, attn


def fused_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q kᵀ · scale) v`` [B, H, T, d] by ``F.scaled_dot_product_attention`` (no T×T tensor kept)."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def class_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, num_cls: int, cols: bool = True,
                    chunk: int = 256, kernel: str = "auto") -> tuple[Tensor, ClassAttention]:
    """Block output [B, H, T, d] and :class:`ClassAttention` without the T×T matrix.

    ``cols=False``: only the class rows (e.g. a CAM reading class→patch attention). ``kernel``:
    ``"cpu"`` folds the normaliser's gradient into the CPU flash kernel's backward (fast path, CPU
    tensors only), ``"generic"`` works on any device (normaliser and its gradient computed in row chunks
    of ``chunk``: a second q·kᵀ pass, memory O(chunk·T)); ``"auto"``: ``"cpu"`` on CPU, else generic.
    """
    if not isinstance(num_cls, int) or not 1 <= num_cls <= q.shape[-2]:
        raise ValueError(f"num_cls must be an int in 1..{q.shape[-2]}, got {num_cls!r}")
    if kernel not in ("auto", "cpu", "generic"):
        raise ValueError(f"kernel must be 'auto', 'cpu' or 'generic', got {kernel!r}")
    if kernel == "auto":
        kernel = "cpu" if q.device.type == "cpu" else "generic"
    if kernel == "cpu" and q.device.type != "cpu":
        raise ValueError(f"kernel='cpu' needs CPU tensors, got {q.device.type}")
    out, rows, col = _ClassAttention.apply(q, k, v, float(scale), num_cls, bool(cols), kernel, int(chunk))
    return out, ClassAttention(rows, col if cols else None)


# Two ways to form the class products on q, k [B, H, T, d] without copying them (they are views of the
# projection's [B, T, 3, H, d] output, whose memory order is [B, T, H, d]):
# * per head: one batched [B] product per head (H calls per product);
# * block-diagonal: the C class-token rows of all heads as one block-diagonal [H·C, H·d] matrix against the
#   tokens in their own [B, T, H·d] order: one product, outputs written straight into the gradients' order,
#   at H times the multiply-adds (zeros), which is cheaper while H·C is small (TS-CAM's and TransCAM's C = 1).
BLOCK_DIAG_MAX_ROWS = 24     # H·C up to which the block-diagonal form is used


def _natural(x: Tensor) -> Tensor:
    """[B, H, T, d] -> [B, T, H·d] in the projection's memory order (a view where x is one)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _block_diag(x: Tensor) -> Tensor:
    """x [B, H, C, d] -> [B, H·C, H·d]: row (h, c) holds x[:, h, c] in columns h·d .. (h+1)·d, zeros elsewhere."""
    b, h, c, d = x.shape
    out = x.new_zeros(b, h, c, h, d)
    out.diagonal(dim1=1, dim2=3).copy_(x.permute(0, 2, 3, 1))
    return out.view(b, h * c, h * d)


def _head_diagonal(y: Tensor, h: int) -> Tensor:
    """y [B, H·C, H·d] (every head's rows against every head's columns) -> the same-head blocks as [B, C, H·d]."""
    b, hc, hd = y.shape
    return torch.diagonal(y.view(b, h, hc // h, h, hd // h), dim1=1, dim2=3).permute(0, 1, 3, 2).reshape(b, hc // h, hd)


def _class_logits(q: Tensor, k: Tensor, c: int, want_cols: bool) -> tuple[Tensor, Tensor | None]:
    """Unscaled logits of the class rows q_c kᵀ [B, H, C, T] and columns q_p k_cᵀ [B, H, P, C] (float32/64)."""
    b, h, t, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    if h * c <= BLOCK_DIAG_MAX_ROWS:
        rows = torch.bmm(_block_diag(q[:, :, :c].to(acc)), _natural(k.to(acc)).transpose(1, 2)).view(b, h, c, t)
        cols = (torch.bmm(_natural(q.to(acc))[:, c:], _block_diag(k[:, :, :c].to(acc)).transpose(1, 2))
                .view(b, t - c, h, c).transpose(1, 2) if want_cols else None)
        return rows, cols
    rows = torch.empty(h, b, c, t, dtype=acc, device=q.device)       # head-major: each head's [B, ...] slice
    cols = torch.empty(h, b, t - c, c, dtype=acc, device=q.device) if want_cols else None    # is one block
    for i in range(h):
        qi, ki = q[:, i].to(acc), k[:, i].to(acc)
        torch.bmm(qi[:, :c], ki.transpose(1, 2), out=rows[i])
        if cols is not None:
            torch.bmm(qi[:, c:], ki[:, :c].transpose(1, 2), out=cols[i])
    return rows.transpose(0, 1), cols.transpose(0, 1) if cols is not None else None


def _class_probs(q: Tensor, k: Tensor, lse_p: Tensor | None, scale: float, c: int):
    """The class rows softmax(s·q_c kᵀ) [B, H, C, T] per head (the whole row is here, so its own softmax) and,
    given ``lse_p`` [B, H, P] (the patch rows' normaliser), the columns exp(s·q_p k_cᵀ - lse_p) [B, H, P, C]."""
    rows, cols = _class_logits(q, k, c, lse_p is not None)
    rows = torch.softmax(rows.mul_(scale), dim=-1)
    if cols is not None:
        cols.mul_(scale).sub_(lse_p.to(cols.dtype).unsqueeze(-1)).exp_()
    return rows, cols


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _lse_chunked(q: Tensor, k: Tensor, scale: float, chunk: int) -> Tensor:
    """log Σ_j exp(s·q_i·k_j) [B, H, T'] for q [B, H, T', d], in row chunks (memory O(chunk·T))."""
    acc = torch.promote_types(q.dtype, torch.float32)
    kt = k.to(acc).transpose(-2, -1)
    return torch.cat([torch.logsumexp((q[..., i:i + chunk, :].to(acc) @ kt) * scale, dim=-1)
                      for i in range(0, q.shape[-2], chunk)], dim=-1)


class _ClassAttention(torch.autograd.Function):
    """out = softmax(s·q kᵀ) v, rows = mean_h softmax(s·q_c kᵀ), cols = mean_h exp(s·q_p k_cᵀ - lse_p).

    The class rows are whole rows: their softmax and its backward are computed here directly. The columns
    read the patch rows' normaliser lse_p, which only the fused kernel sees whole. Backward: with
    G = cols_h ⊙ ∂cols/H (the gradient w.r.t. the logits S through the exponent), each patch row's
    normaliser receives ∂lse_p = -Σ_c G_pc, whose gradient w.r.t. S_pj is ∂lse_p · p_pj. A flash backward
    computes ∂S_ij = p_ij (∂O_i·v_j - D_i) with D_i = ∂O_i·O_i read from the output it is given; handing it
    an output O' with ∂O_i·O'_i = D_i - ∂lse_i adds exactly ∂lse_i · p_ij (one entry of each row changed,
    see :func:`_cpu_backward`). The direct terms (the rows' softmax backward dS_r, and s·G) then add dS k to
    ∂q and dSᵀ q to ∂k.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, num_cls, want_cols, kernel, chunk):
        c, h = num_cls, q.shape[1]
        with torch.autocast(device_type=q.device.type, enabled=False):
            if kernel == "cpu":
                out, lse = _FLASH_CPU(q, k, v, 0.0, False, scale=scale)
                lse_p = lse[:, :, c:] if want_cols else None
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                lse_p = _lse_chunked(q[:, :, c:], k, scale, chunk) if want_cols else None
            rows_h, cols_h = _class_probs(q, k, lse_p, scale, c)
        # rows_h / cols_h (H·C·(T + P) values per image) are kept while H·C is small (C = 1: ~2 % of a [T, D]
        # token tensor) and recomputed in backward otherwise (2·C·T·d products): at 448² they would be ~3 % of
        # a fused block's saved activations for MCTformer-V2's C = 20
        keep = h * c <= BLOCK_DIAG_MAX_ROWS
        ctx.save_for_backward(q, k, v, out, lse if kernel == "cpu" else lse_p,
                              *((rows_h, cols_h) if keep and want_cols else ()))
        ctx.scale, ctx.num_cls, ctx.kernel, ctx.chunk, ctx.want_cols = scale, c, kernel, chunk, want_cols
        rows = rows_h.mean(dim=1)
        if not want_cols:
            cols = rows.new_zeros(())
            ctx.mark_non_differentiable(cols)
        else:
            cols = cols_h.mean(dim=1)
        return out, rows, cols

    @staticmethod
    @once_differentiable        # a double backward raises instead of missing terms
    def backward(ctx, dout, drows, dcols):
        q, k, v, out, lse, *probs = ctx.saved_tensors
        s, c, kernel = ctx.scale, ctx.num_cls, ctx.kernel
        h = q.shape[1]
        acc = torch.promote_types(q.dtype, torch.float32)      # float32, or float64 for float64 inputs
        with torch.autocast(device_type=q.device.type, enabled=False):
            lse_p = (lse[:, :, c:] if kernel == "cpu" else lse) if ctx.want_cols else None
            need_cols = dcols is not None and lse_p is not None and dcols.dim() == 3
            # kept probabilities are read, never written (a second backward with retain_graph reads them again)
            rows_h, cols_h = probs if probs else _class_probs(q, k, lse_p if need_cols else None, s, c)
            ds_r = g_c = dlse = None
            if drows is not None:       # softmax backward of the class rows, times s: [B, H, C, T]
                g = rows_h * (drows.to(acc) * (s / h)).unsqueeze(1)
                ds_r = g.sub_(rows_h * g.sum(dim=-1, keepdim=True))         # p ⊙ d - p Σ(p ⊙ d)
            if need_cols:               # s·G [B, H, P, C] and the patch rows' ∂lse [B, H, P]
                g_c = cols_h * (dcols.to(acc) * (s / h)).unsqueeze(1)
                dlse = g_c.sum(dim=-1).mul_(-1.0 / s)
            if dout is None:
                dout = torch.zeros_like(out)
            if kernel == "cpu":
                dq, dk, dv = _cpu_backward(dout, q, k, v, out, lse, dlse, s, c)
            else:
                dq, dk, dv = _generic_backward(dout, q, k, v, lse_p, dlse, s, c, ctx.chunk)
            _add_direct_terms(dq, dk, q, k, ds_r, g_c, c)
        return dq, dk, dv, None, None, None, None, None


def _add_direct_terms(dq: Tensor, dk: Tensor, q: Tensor, k: Tensor, ds_r: Tensor | None, g_c: Tensor | None,
                      c: int) -> None:
    """dq += [dS_r k ; G k_c], dk += dS_rᵀ q_c + [Gᵀ q_p ; 0] (dS_r [B, H, C, T], G [B, H, P, C], both already
    times s), in place into dq, dk [B, H, T, d] (the flash backward returns them in [B, T, H, d] memory order)."""
    b, h, t, dh = dq.shape
    acc = ds_r.dtype if ds_r is not None else g_c.dtype
    dqn, dkn = _natural(dq), _natural(dk)
    if h * c <= BLOCK_DIAG_MAX_ROWS and dq.dtype == acc and dqn._base is not None and dkn._base is not None:
        qn, kn = _natural(q.to(acc)), _natural(k.to(acc))
        if ds_r is not None:
            r = ds_r.reshape(b, h * c, t)
            dkn.baddbmm_(r.transpose(1, 2), _block_diag(q[:, :, :c].to(acc)))
            dqn[:, :c] += _head_diagonal(torch.bmm(r, kn), h)
        if g_c is not None:
            gn = torch.zeros(b, t, h * c, dtype=acc, device=dq.device)
            gn[:, c:] = g_c.transpose(1, 2).reshape(b, t - c, h * c)
            dqn.baddbmm_(gn, _block_diag(k[:, :, :c].to(acc)))
            dkn[:, :c] += _head_diagonal(torch.bmm(gn[:, c:].transpose(1, 2), qn[:, c:]), h)
        return
    # head-major buffers [H, B, ...] (each head's products write one contiguous block), added once each
    new = (lambda *shape: torch.empty(h, b, *shape, dtype=acc, device=dq.device))
    tq_c, tk = (new(c, dh), new(t, dh)) if ds_r is not None else (None, None)
    tq_p, tk_c = (new(t - c, dh), new(c, dh)) if g_c is not None else (None, None)
    for i in range(h):
        qi, ki = q[:, i].to(acc), k[:, i].to(acc)
        if ds_r is not None:
            torch.bmm(ds_r[:, i], ki, out=tq_c[i])
            torch.bmm(ds_r[:, i].transpose(1, 2), qi[:, :c], out=tk[i])
        if g_c is not None:
            torch.bmm(g_c[:, i], ki[:, :c], out=tq_p[i])
            torch.bmm(g_c[:, i].transpose(1, 2), qi[:, c:], out=tk_c[i])
    if tk is not None:
        if tk_c is not None:
            tk[:, :, :c] += tk_c
        dk += tk.transpose(0, 1).to(dk.dtype)
    elif tk_c is not None:
        dk[:, :, :c] += tk_c.transpose(0, 1).to(dk.dtype)
    if tq_c is not None:
        dq[:, :, :c] += tq_c.transpose(0, 1).to(dq.dtype)
    if tq_p is not None:
        dq[:, :, c:] += tq_p.transpose(0, 1).to(dq.dtype)


def _cpu_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Tensor | None,
                  scale: float, c: int) -> tuple[Tensor, Tensor, Tensor]:
    """The flash CPU backward, with the patch rows' ∂lse [B, H, P] (or None) folded in (class docstring).

    The output handed to the kernel differs from O in the first entry of each patch row: O'_i0 = O_i0 -
    ∂lse_i / ∂O_i0, so ∂O_i·O'_i = D_i - ∂lse_i (the kernel reads O only for D). The rounding of that entry
    costs ~eps·|∂lse_i| in D whatever the size of ∂O_i0, so any nonzero entry serves; rows whose ∂O_i0 is 0
    (or so small that the quotient would overflow: e.g. rows without any output gradient) get their term
    explicitly, image by image. O' is written into O's own storage for the kernel call and the kept entries
    are put back right after, through ``.data`` so that autograd's version of O is untouched: no [B, H, T, d]
    copy of O."""
    if dlse is None:
        return _FLASH_CPU_BWD(dout, q, k, v, out, lse, 0.0, False, scale=scale)
    acc = dlse.dtype
    d0 = dout[:, :, c:, 0].to(acc)                                              # [B, H, P]
    ok = d0.abs() > dlse.abs() * 1e-30
    lam = dlse / torch.where(ok, d0, torch.ones((), dtype=acc, device=d0.device))
    o0 = out.data[:, :, c:, 0]
    orig = o0.clone()
    o0.copy_(torch.where(ok, orig.to(acc) - lam, orig.to(acc)))
    try:
        dq, dk, dv = _FLASH_CPU_BWD(dout, q, k, v, out, lse, 0.0, False, scale=scale)
    finally:
        o0.copy_(orig)
    stuck = (~ok) & (dlse != 0)
    if bool(stuck.any()):
        imgs = stuck.flatten(1).any(dim=1).nonzero().flatten()          # only the images that have such rows
        qf, kf = q[imgs].to(acc), k[imgs].to(acc)
        qp = qf[:, :, c:]
        g = (dlse[imgs] * stuck[imgs]).unsqueeze(-1) * torch.exp((qp @ kf.transpose(-2, -1)) * scale
                                                                  - lse[imgs][:, :, c:, None].to(acc))
        dq[imgs, :, c:] += ((g @ kf) * scale).to(dq.dtype)
        dk[imgs] += ((g.transpose(-2, -1) @ qp) * scale).to(dk.dtype)
    return dq, dk, dv


def _generic_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, lse_p: Tensor | None, dlse: Tensor | None,
                      scale: float, c: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused kernel's own backward plus ∂lse_p · p_pj of the patch rows, in row chunks (any device)."""
    with torch.enable_grad():
        q_, k_, v_ = (t.detach().requires_grad_(True) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q_, k_, v_, scale=scale)
        dq, dk, dv = torch.autograd.grad(o, (q_, k_, v_), dout)
    if dlse is None:
        return dq, dk, dv
    dq, dk = dq.clone(), dk.clone()
    qf, kf, lse_p = q[:, :, c:].to(dlse.dtype), k.to(dlse.dtype), lse_p.to(dlse.dtype)
    for i in range(0, qf.shape[-2], chunk):                     # ∂lse_p · p_pj through S = s·q kᵀ
        g = dlse[:, :, i:i + chunk, None] * torch.exp((qf[:, :, i:i + chunk] @ kf.transpose(-2, -1)) * scale
                                                        - lse_p[:, :, i:i + chunk, None])
        dq[:, :, c + i:c + i + chunk] += ((g @ kf) * scale).to(dq.dtype)
        dk += ((g.transpose(-2, -1) @ qf[:, :, i:i + chunk]) * scale).to(dk.dtype)
    return dq, dk, dv
