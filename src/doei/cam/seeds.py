"""Pseudo-label seeds from CAMs: background threshold β, and MCTformer's dense-CRF seeds with exponent α.

Label-map convention: 0 = background, ``k + 1`` = foreground class k (0-based), 255 = ignore.

* :func:`seeds_from_cams`: ``argmax([β; cams])`` in float32, ties to the lower index (so background
  wins a tie with a class, and the lower class wins between classes), as ``evaluation.py`` does.
* :func:`crf_with_alpha`: the official ``_crf_with_alpha`` (docs/reference-notes.md#mctformer-cam-generation): ``bg = (1 - max)^α``,
  probabilities ``[bg; cams]``, ``unary_from_softmax`` (−log, clipped at 1e-5), Gaussian pairwise
  (sxy 3, compat 3), bilateral pairwise (sxy 80, srgb 13, compat 10), 10 mean-field iterations.
  PSA's affinity labels are made from α = 1 (low: generous foreground) and α = 12 (high: confident
  foreground). Needs ``pydensecrf2`` (import name ``pydensecrf``).
* :func:`official_crf_image`: the CRF's colour image as the official code builds it — the normalised
  tensor de-normalised and TRUNCATED to uint8 (``astype(np.uint8)``), which differs from the original
  pixels by one grey level here and there (docs/reference-notes.md#mctformer-cam-generation). Passing the original uint8 pixels to
  :func:`crf_with_alpha` instead is allowed (``doei cam --crf-image original``); it is what one would
  do without the official quirk and gives slightly different CRF outputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from doei.cam.extractor import IMAGENET_MEAN, IMAGENET_STD
from doei.errors import DoeiError

def seeds_from_cams(cams: Tensor | np.ndarray, beta: float, classes: Sequence[int] | np.ndarray | None = None
                    ) -> np.ndarray:
    """Label map from CAMs and background threshold ``beta``.

    ``cams`` [K, H, W] (or [B, K, H, W]); channel i is class ``classes[i]`` (0-based; default i).
    Returns uint8 [H, W] (or [B, H, W]) with 0 = background, ``classes[i] + 1`` elsewhere. An image
    with K = 0 is all background.
    """
    c = torch.as_tensor(np.asarray(cams) if not isinstance(cams, Tensor) else cams.detach().cpu()).float()
    if c.ndim not in (3, 4):
        raise DoeiError(f"cams: expected [K, H, W] or [B, K, H, W], got {tuple(c.shape)}")
    k = c.shape[-3]
    ids = np.arange(k) if classes is None else np.asarray(classes, dtype=np.int64).reshape(-1)
    if ids.shape[0] != k:
        raise DoeiError(f"classes: {ids.shape[0]} ids for {k} CAM channels")
    if ids.size and (ids.min() < 0 or ids.max() > 253):
        raise DoeiError(f"classes: ids must be in 0..253 for a uint8 label map, got {ids.min()}..{ids.max()}")
    bg = torch.full_like(c.narrow(-3, 0, 1) if k else c.sum(-3, keepdim=True), float(np.float32(beta)))
    idx = torch.argmax(torch.cat([bg, c], dim=-3), dim=-3).numpy()   # first maximum: ties -> lower index
    lut = np.concatenate([[0], ids + 1]).astype(np.uint8)
    return lut[idx]


def official_crf_image(normalized: Tensor | np.ndarray) -> np.ndarray:
    """Normalised [3, H, W] (or [1, 3, H, W]) -> uint8 [H, W, 3], de-normalised in float32 as the
    official engine does (``(x·std + mean)·255``) and truncated by ``astype(np.uint8)``."""
    x = normalized.detach().cpu().numpy() if isinstance(normalized, Tensor) else np.asarray(normalized)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise DoeiError(f"normalized image: expected [3, H, W], got {tuple(x.shape)}")
    hwc = x.transpose(1, 2, 0).astype(np.float32)
    out = np.zeros_like(hwc)
    for ch in range(3):  # three channels, not pixels: the official per-channel float32 expression
        out[:, :, ch] = (hwc[:, :, ch] * np.float32(IMAGENET_STD[ch]) + np.float32(IMAGENET_MEAN[ch])) * np.float32(255.0)
    return out.astype(np.uint8)


def crf_with_alpha(image: np.ndarray, classes: Sequence[int] | np.ndarray, cams: np.ndarray, alpha: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The official ``_crf_with_alpha`` as arrays: cams [K, H, W] (min–max normalised) of 0-based ``classes``.

    Returns ``(keys int64 [K+1], probs float32 [K+1, H, W])`` with keys ``[0, classes + 1]`` (0 =
    background), i.e. the official saved dict. The CRF itself is :func:`doei.seg.crf.crf_with_alpha`
    (background ``(1 - max_k cams)^alpha``, CAM-style parameters).
    """
    from doei.seg.crf import crf_with_alpha as crf_probs

    v = np.asarray(cams, dtype=np.float32)
    ids = np.asarray(classes, dtype=np.int64).reshape(-1)
    if v.ndim != 3 or v.shape[0] != ids.shape[0] or v.shape[0] == 0:
        raise DoeiError(f"CRF: expected cams [K>0, H, W] for {ids.shape[0]} classes, got {tuple(v.shape)}")
    return np.concatenate([[0], ids + 1]).astype(np.int64), crf_probs(image, v, alpha)


def crf_label_map(keys: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Argmax of CRF probabilities [n, H, W] mapped to their keys -> uint8 label map [H, W]."""
    return np.asarray(keys, dtype=np.int64)[np.argmax(probs, axis=0)].astype(np.uint8)
