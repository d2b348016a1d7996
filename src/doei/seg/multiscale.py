"""Multi-scale (+ optional flip) segmentation inference with the seg baseline's conventions.

MCTformer ``seg/infer_seg.py`` (docs/reference-notes.md#segmentation-inference), for an input ``[1,3,H,W]``:

1. for each scale ``s``: resize the *normalised* input to ``[int(H*s), int(W*s)]`` with bilinear
   ``align_corners=True``;
2. logits ``[1,C,ceil(h/8),ceil(w/8)]`` → bilinear ``align_corners=False`` back to ``(H, W)`` →
   softmax over classes;
3. fuse scales by an element-wise **max** of the probabilities, the accumulator starting at 0.

Flip (not in the official script, optional here): the horizontally flipped view is run in the
same batch, its logits flipped back, and its probabilities enter the same max.
Normalisation as ``infer_seg.py``: ``(x/255 - mean)/std`` in float64, then cast to float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from doei.errors import DoeiError

OFFICIAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[H,W,3]`` → normalised float32 ``[1,3,H,W]`` (float64 arithmetic, as the baseline)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DoeiError(f"image {img.dtype} {img.shape}: expected uint8 [H,W,3] RGB")
    x = (img.astype(np.float64) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).float()


def multiscale_predict(model: nn.Module, image: np.ndarray | torch.Tensor, scales: Sequence[float] = OFFICIAL_SCALES,
                       flip: bool = False, return_logits: bool = False
                       ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Max-fused softmax probabilities ``[C,H,W]`` float32 of ``model`` over ``scales`` (and flips).

    ``image`` is uint8 ``[H,W,3]`` or an already normalised ``[1,3,H,W]`` tensor. With
    ``return_logits`` also returns the per-scale raw logits (unflipped view, ``[1,C,h_s,w_s]``).
    The model is used as given (call ``model.eval()`` first); runs under ``torch.no_grad()``.
    """
    x = normalize_image(image) if isinstance(image, np.ndarray) else image.float()
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise DoeiError(f"input {tuple(x.shape)}: expected [1,3,H,W]")
    if not scales:
        raise DoeiError("scales: expected at least one scale")
    dev = next(model.parameters()).device
    x = x.to(dev)
    _, _, h, w = x.shape
    probs = None
    logits_per_scale: list[torch.Tensor] = []
    with torch.no_grad():
        for s in scales:
            size = [int(h * s), int(w * s)]
            if min(size) < 1:
                raise DoeiError(f"scale {s}: image {h}x{w} would shrink to {size}")
            xs = F.interpolate(x, size, mode="bilinear", align_corners=True)
            if flip:
                xs = torch.cat([xs, xs.flip(-1)], 0)
            logits = model(xs)
            logits_per_scale.append(logits[:1])
            if flip:
                logits = torch.cat([logits[:1], logits[1:].flip(-1)], 0)
            p = F.softmax(F.interpolate(logits, (h, w), mode="bilinear", align_corners=False), dim=1)
            p = p.max(dim=0).values
            probs = p if probs is None else torch.maximum(probs, p)  # == max(0-initialised acc, p)
    out = probs.float().cpu()
    return (out, [t.cpu() for t in logits_per_scale]) if return_logits else out
