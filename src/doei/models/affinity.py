"""Pair affinities from AffinityNet features, sparse (PSA's training form) and dense (its inference form).

``a_ij = exp(-mean_c |f_c(i) - f_c(j)|)`` for the pairs of :mod:`doei.models.pairs`. The dense
matrix is symmetric, has ones on the diagonal and zeros for pairs that are not listed
(docs/reference-notes.md#affinitynet-and-the-random-walk).
"""
from __future__ import annotations

import torch

from doei.models.pairs import pair_indices


def affinity_from_features(f: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Sparse affinities ``[B,D,n_from]`` from features ``[B,C,h,w]`` (D = 34 for radius 5)."""
    b, c, h, w = f.shape
    ind_from, ind_to = pair_indices(h, w, radius)
    flat = f.reshape(b, c, h * w)
    ff = flat[:, :, ind_from.to(f.device)].unsqueeze(2)                      # [B,C,1,n_from]
    ft = flat[:, :, ind_to.to(f.device)].reshape(b, c, -1, ind_from.numel())  # [B,C,D,n_from]
    return torch.exp(-(ft - ff).abs().mean(dim=1))


def dense_affinity(aff: torch.Tensor, h: int, w: int, radius: int = 5) -> torch.Tensor:
    """Dense symmetric ``[h*w,h*w]`` affinity matrix from one image's sparse ``aff`` ``[D,n_from]``."""
    ind_from, ind_to = pair_indices(h, w, radius)
    n = h * w
    frm = ind_from.to(aff.device).expand(aff.shape[0], -1).reshape(-1)
    to = ind_to.to(aff.device)
    vals = aff.reshape(-1)
    dense = torch.zeros(n, n, dtype=aff.dtype, device=aff.device)
    dense[frm, to] = vals
    dense[to, frm] = vals
    idx = torch.arange(n, device=aff.device)
    dense[idx, idx] = 1.0
    return dense
