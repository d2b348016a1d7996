"""Oracle seeds: CAM files made from the ground-truth masks, for the random walk's ceiling.

A perfect classifier's CAM is no sharper than its token grid: for each labelled class of an image the true
mask is average-pooled over ``stride``×``stride`` blocks (the classifier's patch grid: 8 px for the demo's
models) and bilinearly upsampled back, then min–max normalised, i.e. the best map a CAM at that resolution
can be. Random walk started from these seeds (AffinityNet trained on them with the same recipe) measures
what the refinement stage can add when the seeds are right; ``stride=1`` gives the masks themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from doei.cam.io import save_cam
from doei.data.common import IGNORE_INDEX, read_mask
from doei.errors import DoeiError


def oracle_cams(mask: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes [K] 0-based, cams float32 [K, H, W] in [0, 1])`` of one label map (0 = background)."""
    if stride < 1:
        raise DoeiError(f"oracle seeds: stride {stride}: expected >= 1")
    h, w = mask.shape
    classes = [int(c) for c in np.unique(mask) if 0 < c != IGNORE_INDEX]
    cams = np.zeros((len(classes), h, w), np.float32)
    for k, c in enumerate(classes):
        t = torch.from_numpy((mask == c).astype(np.float32))[None, None]
        if stride > 1:
            t = F.interpolate(F.avg_pool2d(t, stride, ceil_mode=True), size=(h, w), mode="bilinear",
                              align_corners=False)
        m = t[0, 0].numpy()
        cams[k] = m / max(float(m.max()), 1e-6)
    return np.asarray([c - 1 for c in classes], dtype=np.int64), cams


def write_oracle_cams(ds, out_dir: str | Path, stride: int = 8, ids: Sequence[str] | None = None) -> int:
    """Oracle CAM files ``<out_dir>/<id>.npz`` for the records of dataset ``ds`` (all, or ``ids``) that have
    masks; existing files are kept. Returns the number of files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    want = None if ids is None else set(ids)
    n = 0
    for r in ds.records:
        if want is not None and r.id not in want:
            continue
        if r.mask_path is None:
            raise DoeiError(f"oracle seeds: image {r.id} has no ground-truth mask")
        path = out / f"{r.id}.npz"
        if path.is_file():
            continue
        classes, cams = oracle_cams(read_mask(r.mask_path), stride)
        save_cam(path, classes, cams, dtype=np.float32)
        n += 1
    return n


__all__ = ["oracle_cams", "write_oracle_cams"]
