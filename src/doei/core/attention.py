"""Attention kernels for blocks whose probabilities are read partly or not at all.

Three ways to compute one multi-head attention ``softmax(q kᵀ · scale) v`` (q, k, v [B, H, T, d]):

* :func:`eager_attention`: the T×T probabilities materialised (the official MCTformer/TS-CAM/TransCAM
  formula, bit for bit); for readers of the whole matrix (CAMs' patch→patch affinity, HFA on the
  attention, per-head selection, pre-softmax logits);
* :func:`fused_attention`: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels), when
  nobody reads the probabilities;
* :func:`class_attention`: the block output from the fused kernel PLUS the head-mean class-token rows
  ``A[:C, :]`` [B, C, T] and class-key columns ``A[C:, :C]`` [B, P, C] — all that DOEI reads — without
  the T×T matrix. The columns are ``exp(s·q_p·k_cᵀ - lse_p)`` with ``lse`` the softmax normaliser of
  each row, which the fused kernel returns; the gradient through ``lse`` (∂lse_i/∂S_ij = p_ij) is folded
  into the fused kernel's own backward (see :class:`_ClassAttention`), so values AND gradients equal
  the eager path's to float rounding. Extra work over a fused block: the 2·C·T·d products of the rows
  and columns (and as many in backward), against T²·d for the attention itself.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


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


def _flat(t: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, H, T, d] contiguous -> [B·H, T, d] of ``dtype`` (a view for float32 inputs)."""
    return t.to(dtype).reshape(-1, t.shape[-2], t.shape[-1])


def _class_probs(q3: Tensor, k3: Tensor, lse_p: Tensor | None, scale: float, c: int):
    """Per head: the class rows softmax(s·q_c kᵀ) [BH, C, T] (the whole row is here, so its own softmax) and,
    given ``lse_p`` [BH, P] (the patch rows' normaliser), the columns exp(s·q_p k_cᵀ - lse_p) [BH, P, C]."""
    rows = torch.bmm(q3[:, :c] * scale, k3.transpose(1, 2)).softmax(dim=-1)
    if lse_p is None:
        return rows, None
    cols = torch.bmm(q3[:, c:], k3[:, :c].transpose(1, 2)).mul_(scale).sub_(lse_p.unsqueeze(-1))
    return rows, cols.exp_()


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
    an output O' with ∂O_i·O'_i = D_i - ∂lse_i adds exactly ∂lse_i · p_ij (O' = O - (∂lse_i/|∂O_i|²) ∂O_i;
    rows with ∂O_i = 0 get their term computed explicitly, image by image). The direct terms (the rows'
    softmax backward dS_r, and s·G) then add dS k to ∂q and dSᵀ q to ∂k.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, num_cls, want_cols, kernel, chunk):
        c = num_cls
        b, h, t, _ = q.shape
        acc = torch.promote_types(q.dtype, torch.float32)      # float32, or float64 for float64 inputs
        with torch.autocast(device_type=q.device.type, enabled=False):
            # contiguous copies of q, k, v [B, H, T, d], saved instead of the views (whose [B, T, 3, H, d] buffer
            # is then freed, so memory stays that of a fused block): the class products below are then single
            # batched products, and backward needs no further copy
            q, k, v = (x.contiguous() for x in (q, k, v))
            if kernel == "cpu":
                out, lse = _FLASH_CPU(q, k, v, 0.0, False, scale=scale)
                lse_p = lse[:, :, c:] if want_cols else None
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                lse_p = _lse_chunked(q[:, :, c:], k, scale, chunk) if want_cols else None
            lse3 = lse_p.to(acc).reshape(b * h, t - c) if want_cols else None
            rows_h, cols_h = _class_probs(_flat(q, acc), _flat(k, acc), lse3, scale, c)
        # rows_h / cols_h are recomputed in backward (2·C·T·d products), not saved: at 448² they would be
        # ~3 % of a fused block's saved activations for MCTformer-V2's C = 20
        ctx.save_for_backward(q, k, v, out, lse if kernel == "cpu" else lse_p)
        ctx.scale, ctx.num_cls, ctx.kernel, ctx.chunk, ctx.want_cols = scale, c, kernel, chunk, want_cols
        rows = rows_h.view(b, h, c, t).mean(dim=1)
        if not want_cols:
            cols = rows.new_zeros(())
            ctx.mark_non_differentiable(cols)
        else:
            cols = cols_h.view(b, h, t - c, c).mean(dim=1)
        return out, rows, cols

    @staticmethod
    def backward(ctx, dout, drows, dcols):
        q, k, v, out, lse = ctx.saved_tensors
        s, c, kernel = ctx.scale, ctx.num_cls, ctx.kernel
        b, h, t, _ = q.shape
        acc = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q3, k3 = _flat(q, acc), _flat(k, acc)
            lse_p = (lse[:, :, c:] if kernel == "cpu" else lse) if ctx.want_cols else None
            need_cols = dcols is not None and lse_p is not None and dcols.dim() == 3
            rows_h, cols_h = _class_probs(q3, k3, lse_p.to(acc).reshape(b * h, t - c) if need_cols else None, s, c)
            ds_r = g_c = dlse = None
            if drows is not None:       # softmax backward of the class rows, times s: [BH, C, T]
                g = (rows_h.view(b, h, c, t) * (drows.to(acc) * (s / h)).unsqueeze(1)).view(b * h, c, t)
                ds_r = g.sub_(rows_h.mul_(g.sum(dim=-1, keepdim=True)))     # p ⊙ d - p Σ(p ⊙ d)
            if need_cols:               # s·G [BH, P, C] and the patch rows' ∂lse [B, H, P]
                g_c = cols_h.view(b, h, t - c, c).mul_((dcols.to(acc) * (s / h)).unsqueeze(1)).view(b * h, t - c, c)
                dlse = g_c.sum(dim=-1).mul_(-1.0 / s).view(b, h, t - c)
            if dout is None:
                dout = torch.zeros_like(out)
            if kernel == "cpu":
                dq, dk, dv = _cpu_backward(dout, q, k, v, out, lse, dlse, s, c)
            else:
                dq, dk, dv = _generic_backward(dout, q, k, v, lse_p, dlse, s, c, ctx.chunk)
            _add_direct_terms(dq, dk, q3, k3, ds_r, g_c, c)
        return dq, dk, dv, None, None, None, None, None


def _add_direct_terms(dq: Tensor, dk: Tensor, q3: Tensor, k3: Tensor, ds_r: Tensor | None, g_c: Tensor | None,
                      c: int) -> None:
    """dq += [dS_r k ; G k_c], dk += dS_rᵀ q_c + [Gᵀ q_p ; 0] (dS_r [BH, C, T], G [BH, P, C], both already
    times s), in place into dq, dk [B, H, T, d] (the flash backward returns them in [B, T, H, d] memory order:
    each product goes to one fresh [B·H] batch, added once)."""
    b, h, t, dh = dq.shape
    tk = None
    if ds_r is not None:
        dq[:, :, :c] += torch.bmm(ds_r, k3).view(b, h, c, dh).to(dq.dtype)
        tk = torch.bmm(ds_r.transpose(1, 2), q3[:, :c])                                     # [BH, T, d]
    if g_c is not None:
        dq[:, :, c:] += torch.bmm(g_c, k3[:, :c]).view(b, h, t - c, dh).to(dq.dtype)
        tkc = torch.bmm(g_c.transpose(1, 2), q3[:, c:])                                      # [BH, C, d]
        if tk is None:
            dk[:, :, :c] += tkc.view(b, h, c, dh).to(dk.dtype)
        else:
            tk[:, :c] += tkc
    if tk is not None:
        dk += tk.view(b, h, t, dh).to(dk.dtype)


def _cpu_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Tensor | None,
                  scale: float, c: int) -> tuple[Tensor, Tensor, Tensor]:
    """The flash CPU backward, with the patch rows' ∂lse [B, H, P] (or None) folded in (class docstring).

    The output handed to the kernel differs from O in one entry per patch row: O'_im = O_im - ∂lse_i / ∂O_im
    at m = the entry of ∂O_i largest in magnitude, so ∂O_i·O'_i = D_i - ∂lse_i. It is written into O's own
    storage for the kernel call and the original entries are put back right after (exactly: they were
    kept), through ``.data`` so that autograd's version of O is untouched: no [B, H, T, d] copy of O."""
    if dlse is None:
        return _FLASH_CPU_BWD(dout, q, k, v, out, lse, 0.0, False, scale=scale)
    acc = dlse.dtype
    dp = dout[:, :, c:]
    hi, i_hi = dp.max(dim=-1, keepdim=True)
    lo, i_lo = dp.min(dim=-1, keepdim=True)
    use_hi = hi.abs() >= lo.abs()
    m, dm = torch.where(use_hi, i_hi, i_lo), torch.where(use_hi, hi, lo).to(acc)          # [B, H, P, 1]
    ok = dm != 0                                                     # False: ∂O_i = 0 (the whole row)
    lam = dlse.unsqueeze(-1) / torch.where(ok, dm, torch.ones((), dtype=acc, device=dm.device))
    o_p = out.data[:, :, c:]
    orig = o_p.gather(-1, m)
    o_p.scatter_(-1, m, torch.where(ok, orig.to(acc) - lam, orig.to(acc)).to(out.dtype))
    try:
        dq, dk, dv = _FLASH_CPU_BWD(dout, q, k, v, out, lse, 0.0, False, scale=scale)
    finally:
        o_p.scatter_(-1, m, orig)
    stuck = (~ok[..., 0]) & (dlse != 0)     # patch rows whose output gets no gradient: ∂lse · p_ij explicitly
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
