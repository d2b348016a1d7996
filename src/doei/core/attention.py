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


def _class_probs(q: Tensor, k: Tensor, lse: Tensor, scale: float, c: int, want_cols: bool):
    """Per-head class rows exp(s·q_c kᵀ - lse_c) [B,H,C,T] and columns exp(s·q_p k_cᵀ - lse_p) [B,H,P,C]."""
    acc = torch.promote_types(q.dtype, torch.float32)      # float32, or float64 for float64 inputs
    qf, kf, lse = q.to(acc), k.to(acc), lse.to(acc)
    rows = torch.exp((qf[:, :, :c] @ kf.transpose(-2, -1)) * scale - lse[:, :, :c, None])
    cols = (torch.exp((qf[:, :, c:] @ kf[:, :, :c].transpose(-2, -1)) * scale - lse[:, :, c:, None])
            if want_cols else None)
    return rows, cols


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _lse_chunked(q: Tensor, k: Tensor, scale: float, chunk: int) -> Tensor:
    acc = torch.promote_types(q.dtype, torch.float32)
    kt = k.to(acc).transpose(-2, -1)
    return torch.cat([torch.logsumexp((q[..., i:i + chunk, :].to(acc) @ kt) * scale, dim=-1)
                      for i in range(0, q.shape[-2], chunk)], dim=-1)


class _ClassAttention(torch.autograd.Function):
    """out = softmax(s·q kᵀ) v, rows = mean_h exp(s·q_c kᵀ - lse_c), cols = mean_h exp(s·q_p k_cᵀ - lse_p).

    Backward: with G_r = rows_h ⊙ ∂rows/H and G_c = cols_h ⊙ ∂cols/H (the gradients w.r.t. the logits
    S through the exponent), each row's normaliser receives ∂lse_i = -Σ_j G_ij, whose gradient w.r.t.
    S_ij is ∂lse_i · p_ij. A flash backward computes ∂S_ij = p_ij (∂O_i·v_j - D_i) with
    D_i = ∂O_i·O_i read from the output it is given; handing it an output O' with ∂O_i·O'_i =
    D_i - ∂lse_i adds exactly ∂lse_i · p_ij (O' = O - (∂lse_i/|∂O_i|²) ∂O_i; the few rows with ∂O_i = 0
    get their term computed explicitly). The direct terms G then add s·G k to ∂q and s·Gᵀ q to ∂k.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, num_cls, want_cols, kernel, chunk):
        c = num_cls
        with torch.autocast(device_type=q.device.type, enabled=False):
            if kernel == "cpu":
                out, lse = _FLASH_CPU(q, k, v, 0.0, False, scale=scale)
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
                lse = _lse_chunked(q, k, scale, chunk)
            lse_raw = lse
            rows_h, cols_h = _class_probs(q, k, lse, scale, c, want_cols)
        # rows_h [B,H,C,T] / cols_h [B,H,P,C] are recomputed in backward (2·C·T·d products), not saved: at
        # 448² they would be ~5 % of a fused block's saved activations for MCTformer-V2's C = 20
        ctx.save_for_backward(q, k, v, out, lse_raw)
        ctx.scale, ctx.num_cls, ctx.kernel, ctx.chunk, ctx.want_cols = scale, c, kernel, chunk, want_cols
        cols_mean = cols_h.mean(dim=1) if want_cols else rows_h.new_zeros(())
        if not want_cols:
            ctx.mark_non_differentiable(cols_mean)
        return out, rows_h.mean(dim=1), cols_mean

    @staticmethod
    def backward(ctx, dout, drows, dcols):
        q, k, v, out, lse = ctx.saved_tensors
        s, c = ctx.scale, ctx.num_cls
        heads = q.shape[1]
        with torch.autocast(device_type=q.device.type, enabled=False):
            rows_h, cols_h = _class_probs(q, k, lse, s, c, ctx.want_cols)
            acc = rows_h.dtype
            dlse = torch.zeros(lse.shape, dtype=acc, device=q.device)
            g_r = g_c = None
            if drows is not None:
                g_r = rows_h * (drows.to(acc).unsqueeze(1) / heads)                # [B,H,C,T]
                dlse[:, :, :c] -= g_r.sum(dim=-1)
            if dcols is not None and cols_h is not None and dcols.dim() == 3:
                g_c = cols_h * (dcols.to(acc).unsqueeze(1) / heads)                # [B,H,P,C]
                dlse[:, :, c:] -= g_c.sum(dim=-1)
            if dout is None:
                dout = torch.zeros_like(out)
            if ctx.kernel == "cpu":
                dq, dk, dv = _cpu_backward(dout, q, k, v, out, lse, dlse, s)
            else:
                dq, dk, dv = _generic_backward(dout, q, k, v, lse, dlse, s, ctx.chunk)
            qf, kf = q.to(acc), k.to(acc)
            if g_r is not None:
                dq[:, :, :c] += ((g_r @ kf) * s).to(dq.dtype)
                dk += ((g_r.transpose(-2, -1) @ qf[:, :, :c]) * s).to(dk.dtype)
            if g_c is not None:
                dq[:, :, c:] += ((g_c @ kf[:, :, :c]) * s).to(dq.dtype)
                dk[:, :, :c] += ((g_c.transpose(-2, -1) @ qf[:, :, c:]) * s).to(dk.dtype)
        return dq, dk, dv, None, None, None, None, None


def _cpu_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    dout = dout.contiguous()
    norm2 = torch.linalg.vecdot(dout.to(dlse.dtype), dout.to(dlse.dtype))            # [B, H, T]
    ok = norm2 > 1e-30
    stuck = (~ok) & (dlse != 0)     # rows whose output gets no gradient (e.g. TS-CAM's last class token)
    coef = torch.where(ok, dlse / norm2.clamp_min(1e-30), torch.zeros((), dtype=dlse.dtype, device=dlse.device))
    out2 = torch.addcmul(out.to(coef.dtype), coef.unsqueeze(-1), dout.to(coef.dtype), value=-1.0).to(out.dtype)
    dq, dk, dv = _FLASH_CPU_BWD(dout, q, k, v, out2, lse, 0.0, False, scale=scale)
    rows = stuck.flatten(0, 1).any(dim=0).nonzero().flatten()
    if rows.numel():                # their ∂lse · p_ij explicitly, O(rows · T · d)
        acc = dlse.dtype
        qs, kf = q[:, :, rows].to(acc), k.to(acc)
        g = (dlse * stuck)[:, :, rows, None] * torch.exp((qs @ kf.transpose(-2, -1)) * scale
                                                          - lse[:, :, rows, None].to(acc))
        dq[:, :, rows] += ((g @ kf) * scale).to(dq.dtype)
        dk += ((g.transpose(-2, -1) @ qs) * scale).to(dk.dtype)
    return dq, dk, dv


def _generic_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, dlse: Tensor, scale: float,
                      chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        q_, k_, v_ = (t.detach().requires_grad_(True) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q_, k_, v_, scale=scale)
        dq, dk, dv = torch.autograd.grad(o, (q_, k_, v_), dout)
    dq, dk = dq.clone(), dk.clone()
    qf, kf, lse = q.to(dlse.dtype), k.to(dlse.dtype), lse.to(dlse.dtype)
    for i in range(0, q.shape[-2], chunk):                     # ∂lse_i · p_ij through S = s·q kᵀ
        g = dlse[:, :, i:i + chunk, None] * torch.exp((qf[:, :, i:i + chunk] @ kf.transpose(-2, -1)) * scale
                                                        - lse[:, :, i:i + chunk, None])
        dq[:, :, i:i + chunk] += ((g @ kf) * scale).to(dq.dtype)
        dk += ((g.transpose(-2, -1) @ qf[:, :, i:i + chunk]) * scale).to(dk.dtype)
    return dq, dk, dv
