"""Segmentation confusion matrix and IoU as the seg baseline's ``tool/metrics.Evaluator`` computes them.

Rows are ground truth, columns prediction; pixels whose ground truth is outside
``0..num_classes-1`` (255 = ignore) are skipped. ``IoU_k = C_kk / (row_k + col_k - C_kk)`` is NaN for
a class absent from both, and the mean is ``nanmean`` (absent classes ignored) — unlike seed
evaluation (:mod:`doei.eval.metrics`, all 21 classes averaged). See docs/reference-notes.md#segmentation-inference.
"""
from __future__ import annotations

import numpy as np

from doei.errors import DoeiError


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = 21) -> np.ndarray:
    """``[num_classes,num_classes]`` int64 counts for one label map pair (additive over images)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise DoeiError(f"prediction {pred.shape} vs ground truth {gt.shape}: expected equal shapes")
    mask = (gt >= 0) & (gt < num_classes)
    p = pred[mask].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise DoeiError(f"prediction label {int(p.max() if p.max() >= num_classes else p.min())}: expected 0..{num_classes - 1}")
    idx = num_classes * gt[mask].astype(np.int64) + p
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU (float64, NaN where a class is absent from both maps) and their ``nanmean``."""
    conf = np.asarray(conf, dtype=np.float64)
    diag = np.diag(conf)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / (conf.sum(axis=1) + conf.sum(axis=0) - diag)
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    return iou, miou
