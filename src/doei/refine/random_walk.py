"""Random walk of CAM scores over AffinityNet affinities (PSA ``infer_aff.py``), done cheaply.

Official formulation (docs/reference-notes.md#affinitynet-and-the-random-walk), on the stride-8 grid of ``N = h*w``
positions::

    T = A**beta / A**beta.sum(0)          # column-normalised dense [N,N] transition matrix
    T = T @ T   (logt times)              # T^(2^logt): logt dense N^3 products
    cam_rw = cam_vec @ T                  # [C,N]

Here the same product is computed as ``2^logt`` applications of ``T`` to the rows of ``cam_vec``
that are not all zero (absent classes stay exactly 0), using the band structure of ``T``: the
affinity of position ``p`` is non-zero only for the 68 partners of radius 5 and itself, so one
application is a 69-point stencil on the ``h×w`` grid::

    cam_rw[c, p] = sum_o cam[c, p+o] * W[o, p],   W[o, p] = A(p+o, p)**beta / sum_q A(q, p)**beta

That is ``(K+1)·69·N`` multiply-adds per step instead of ``N^3`` per squaring (VOC size: N≈2961,
~250× fewer operations for PSA's logt = 8). Results agree with the exact (float64) dense form to ~1e-12
(``benchmarks/random_walk.py``); the walk accumulates in float64, so it is closer to the exact
product than the official float32 squaring (whose own rounding error is ~2e-5 at logt 8).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from doei.errors import DoeiError
from doei.models.pairs import from_grid_shape, pair_indices, pair_offsets

BackgroundMode = Literal["constant", "power"]

# Official defaults (docs/reference-notes.md#affinitynet-and-the-random-walk): MCTformer psa/infer_aff.py and jiwoon-ahn/psa infer_aff.py.
MCTFORMER_DEFAULTS = {"bg_mode": "constant", "bg_threshold": 0.39, "beta": 8, "logt": 6}
PSA_DEFAULTS = {"bg_mode": "power", "alpha": 16.0, "beta": 8, "logt": 8}


def cam_with_background(cams: torch.Tensor | np.ndarray, classes: torch.Tensor | np.ndarray | list[int],
                        num_classes: int = 21, bg_mode: BackgroundMode = "constant",
                        bg_threshold: float = 0.39, alpha: float = 16.0) -> torch.Tensor:
    """Full score stack ``[num_classes,H,W]`` float32 from foreground CAMs ``[K,H,W]``.

    Channel ``k+1`` holds the CAM of 0-based foreground class ``classes[i] = k``; the others are 0.
    Channel 0 (background) is the constant ``bg_threshold`` (MCTformer) or
    ``(1 - max_c cam_c) ** alpha`` over all foreground channels (PSA).
    """
    cams_t = torch.as_tensor(np.asarray(cams), dtype=torch.float32)
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64)).reshape(-1)
    if cams_t.dim() != 3 or cams_t.shape[0] != cls.numel():
        raise DoeiError(f"cams {tuple(cams_t.shape)} / classes {tuple(cls.shape)}: expected cams [K,H,W] with K = len(classes)")
    if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= num_classes - 1):
        raise DoeiError(f"classes {cls.tolist()}: expected 0-based foreground ids in 0..{num_classes - 2}")
    full = torch.zeros((num_classes,) + tuple(cams_t.shape[1:]), dtype=torch.float32)
    full[cls + 1] = cams_t
    if bg_mode == "constant":
        full[0] = bg_threshold
    elif bg_mode == "power":
        full[0] = (1 - full[1:].max(dim=0).values) ** alpha
    else:
        raise DoeiError(f"bg_mode={bg_mode!r}: expected 'constant' or 'power'")
    return full


def cam_vector(cam_full: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad ``[C,H,W]`` bottom/right to multiples of ``stride`` and average-pool: ``[C, h*w]``."""
    c, hh, ww = cam_full.shape
    ph, pw = -hh % stride, -ww % stride
    pooled = F.avg_pool2d(F.pad(cam_full, (0, pw, 0, ph))[None], stride, stride)[0]
    return pooled.reshape(c, -1)


# ---------------------------------------------------------------- official dense formulation
def transition_dense(aff_dense: torch.Tensor, beta: float) -> torch.Tensor:
    """Column-normalised ``A**beta`` ``[N,N]`` (PSA's ``trans_mat`` before squaring)."""
    a = aff_dense ** beta
    return a / a.sum(dim=0, keepdim=True)


def random_walk_dense(cam_vec: torch.Tensor, aff_dense: torch.Tensor, beta: float, logt: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official formulation: returns ``(cam_vec @ T^(2^logt), T^(2^logt))``. O(logt·N³); used
    as the parity reference and benchmark baseline only."""
    t = transition_dense(aff_dense, beta)
    for _ in range(logt):
        t = t @ t
    return cam_vec @ t, t


# ---------------------------------------------------------------- banded (stencil) formulation
def stencil_offsets(radius: int = 5) -> np.ndarray:
    """``[2D+1, 2]`` offsets of the stencil: self, the D forward pair offsets, their negatives."""
    offs = pair_offsets(radius)
    return np.concatenate([np.zeros((1, 2), np.int64), offs, -offs], axis=0)


def stencil_weights(aff: torch.Tensor, h: int, w: int, beta: float, radius: int = 5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Transition weights ``W`` ``[2D+1,h,w]`` (order of :func:`stencil_offsets`) from sparse ``aff``
    ``[D,n_from]``: ``W[o,p] = T[p+o, p]``; each column ``p`` of ``T`` sums to 1. Computed in
    ``dtype`` (float64 by default, see :func:`random_walk_stencil`)."""
    ind_from, ind_to = pair_indices(h, w, radius)
    d, n_from = aff.shape
    if n_from != ind_from.numel() or d != len(pair_offsets(radius)):
        raise DoeiError(f"affinity {tuple(aff.shape)}: expected [{len(pair_offsets(radius))},{ind_from.numel()}] "
                        f"for a {h}x{w} grid at radius {radius}")
    ab = aff.to(dtype) ** beta
    n = h * w
    fwd = torch.zeros(d, n, dtype=ab.dtype, device=ab.device)   # at p = from, partner p + off
    bwd = torch.zeros(d, n, dtype=ab.dtype, device=ab.device)   # at p = to,   partner p - off
    fwd[:, ind_from.to(ab.device)] = ab
    bwd.scatter_(1, ind_to.to(ab.device).view(d, n_from), ab)
    wts = torch.cat([torch.ones(1, n, dtype=ab.dtype, device=ab.device), fwd, bwd], 0)
    wts = wts / wts.sum(dim=0, keepdim=True)
    return wts.view(-1, h, w)


def random_walk_stencil(cam_vec: torch.Tensor, weights: torch.Tensor, logt: int, radius: int = 5) -> torch.Tensor:
    """``cam_vec @ T^(2^logt)`` ``[C,N]`` by ``2^logt`` stencil applications (module docstring).

    ``weights`` ``[2D+1,h,w]`` from :func:`stencil_weights`. Only rows with a non-zero entry are
    walked (a zero row stays zero). The loop over the 69 stencil offsets is deliberate: each
    iteration is a whole-image fused multiply-add on a shifted view, which measured several times
    faster on CPU than gathered/unfolded formulations that copy the 81-neighbourhood every step.

    The walk runs in the dtype of ``weights`` (float64 by default) and returns ``cam_vec.dtype``:
    ``2^logt`` float32 steps accumulate ~``2^logt``·eps of rounding (≈2e-5 at logt 8, the size of
    the official float32 squaring's own error), float64 keeps the result within ~1e-12 of the exact
    product at a small cost (the rows walked are few).
    """
    _, h, w = weights.shape
    r = radius - 1
    offs = stencil_offsets(radius).tolist()
    live = cam_vec.abs().sum(dim=1) > 0
    x = cam_vec[live].to(weights.dtype).reshape(-1, h, w)
    for _ in range(2 ** logt):
        pad = F.pad(x, (r, r, r, r))
        acc = x * weights[0]
        for k in range(1, len(offs)):
            dy, dx = offs[k]
            acc.addcmul_(pad[:, r + dy:r + dy + h, r + dx:r + dx + w], weights[k])
        x = acc
    out = torch.zeros_like(cam_vec)
    out[live] = x.reshape(x.shape[0], -1).to(cam_vec.dtype)
    return out


def random_walk_vectors_dense(cam_vec: torch.Tensor, aff_dense: torch.Tensor, beta: float, logt: int) -> torch.Tensor:
    """``cam_vec @ T^(2^logt)`` for an arbitrary dense affinity ``[N,N]``, by ``2^logt`` vector
    products on the non-zero rows (no N×N squaring)."""
    t = transition_dense(aff_dense, beta)
    live = cam_vec.abs().sum(dim=1) > 0
    x = cam_vec[live]
    for _ in range(2 ** logt):
        x = x @ t
    out = torch.zeros_like(cam_vec)
    out[live] = x
    return out


# ---------------------------------------------------------------- end to end
def random_walk_refine(cams: torch.Tensor | np.ndarray, classes: torch.Tensor | np.ndarray | list[int],
                       affinity: torch.Tensor, *, bg_mode: BackgroundMode = "constant", bg_threshold: float = 0.39,
                       alpha: float = 16.0, beta: float = 8, logt: int = 6, num_classes: int = 21,
                       radius: int = 5, stride: int = 8, return_scores: bool = False
                       ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
    """Pseudo-mask ``[H,W]`` uint8 (0 = background, k+1 = class k) from CAMs by random walk.

    ``cams`` ``[K,H,W]`` (full image size) for 0-based foreground ``classes``; ``affinity`` is
    either AffinityNet features ``[C,h,w]`` (``AffinityNet.features`` of the image zero-padded to
    multiples of 8, batch dim dropped) or a dense affinity matrix ``[h*w,h*w]`` with
    ``h = ceil(H/8)``, ``w = ceil(W/8)``. Defaults are MCTformer's (constant background 0.39,
    beta 8, logt 6); PSA uses ``bg_mode='power', alpha=16, logt=8``. Steps as the official script:
    background channel, zero-pad, 8×8 average pool, walk, bilinear upsampling
    (``align_corners=False``) to the padded size, argmax, crop. With ``return_scores`` also
    returns the walked low-resolution scores ``[num_classes,h,w]``.
    """
    cam_full = cam_with_background(cams, classes, num_classes, bg_mode, bg_threshold, alpha)
    hh, ww = cam_full.shape[1:]
    h, w = -(-hh // stride), -(-ww // stride)
    vec = cam_vector(cam_full, stride)
    with torch.no_grad():
        if affinity.dim() == 3:
            if tuple(affinity.shape[1:]) != (h, w):
                raise DoeiError(f"affinity features {tuple(affinity.shape)}: expected [C,{h},{w}] for a {hh}x{ww} CAM")
            from doei.models.affinity import affinity_from_features

            from_grid_shape(h, w, radius)
            aff = affinity_from_features(affinity[None].float(), radius)[0]
            rw = random_walk_stencil(vec, stencil_weights(aff, h, w, beta, radius), logt, radius)
        elif affinity.dim() == 2 and tuple(affinity.shape) == (h * w, h * w):
            rw = random_walk_vectors_dense(vec, affinity.float(), beta, logt)
        else:
            raise DoeiError(f"affinity {tuple(affinity.shape)}: expected features [C,{h},{w}] or a dense [{h * w},{h * w}] matrix")
        low = rw.view(1, num_classes, h, w)
        up = F.interpolate(low, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
        pred = up[0].argmax(dim=0)[:hh, :ww].to(torch.uint8).cpu().numpy()
    return (pred, low[0]) if return_scores else pred
