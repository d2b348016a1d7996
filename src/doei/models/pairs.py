"""Pixel pairs within a radius on a feature grid, in PSA's layout.

PSA (``pyutils.get_indices_of_pairs`` / ``ExtractAffinityLabelInRadius``) pairs every "from"
position with the positions at the offsets of a half disc of radius ``r`` (so each unordered pair
is listed once): first ``(0, 1) … (0, r-1)``, then for ``dy = 1 … r-1`` every ``dx`` in
``-(r-1) … r-1`` with ``dx² + dy² < r²``. For ``r = 5`` that is 34 offsets.

"From" positions exclude the last ``r-1`` rows and the first/last ``r-1`` columns, so every
offset stays inside the grid: the from-grid is ``(h-(r-1)) × (w-2(r-1))``, row-major. Two pixels
that both lie in that border band never get an affinity (docs/reference-notes.md#affinitynet-and-the-random-walk).
"""
from __future__ import annotations

import numpy as np
import torch

from doei.errors import DoeiError


def pair_offsets(radius: int = 5) -> np.ndarray:
    """The ``[D,2]`` int64 ``(dy, dx)`` offsets in PSA's order (D = 34 for radius 5)."""
    if radius < 2:
        raise DoeiError(f"radius={radius}: expected an integer >= 2")
    offs = [(0, dx) for dx in range(1, radius)]
    offs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius * radius]
    return np.asarray(offs, dtype=np.int64)


def from_grid_shape(h: int, w: int, radius: int = 5) -> tuple[int, int]:
    """Shape ``(h - (r-1), w - 2(r-1))`` of the "from" grid; raises if the grid is too small."""
    hf, wf = h - (radius - 1), w - 2 * (radius - 1)
    if hf < 1 or wf < 1:
        raise DoeiError(f"feature grid {h}x{w}: too small for pair radius {radius} "
                        f"(needs at least {radius}x{2 * radius - 1})")
    return hf, wf


def pair_indices(h: int, w: int, radius: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the ``h×w`` grid: ``ind_from`` ``[n_from]`` and ``ind_to`` ``[D*n_from]``.

    ``ind_to`` is offset-major: entry ``d*n_from + i`` is the partner of ``ind_from[i]`` at
    offset ``d`` (the layout of PSA's ``get_indices_of_pairs``).
    """
    r1 = radius - 1
    hf, wf = from_grid_shape(h, w, radius)
    ys = np.arange(hf)[:, None]
    xs = np.arange(r1, r1 + wf)[None, :]
    ind_from = (ys * w + xs).reshape(-1)
    offs = pair_offsets(radius)
    ind_to = (ind_from[None, :] + offs[:, 0:1] * w + offs[:, 1:2]).reshape(-1)
    return torch.from_numpy(ind_from.astype(np.int64)), torch.from_numpy(ind_to.astype(np.int64))
