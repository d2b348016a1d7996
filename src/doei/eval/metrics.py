"""Confusion counts of label maps and the IoU / FP / FN scores derived from them.

Counts are per class ``k`` over all pixels whose ground truth is not 255 (ignore):

* ``TP[k]`` pixels with prediction k and ground truth k,
* ``P[k]``  pixels predicted k,
* ``T[k]``  pixels whose ground truth is k.

They are int64 and additive over images, so a data set is scored by summing per-image counts
(memory does not depend on the number of images). Scores follow MCTformer's ``evaluation.py``
bit for bit in float64 (see docs/evaluation.md)::

    IoU_k = TP / (T + P - TP + 1e-10)
    FP_k  = (P - TP) / (T + P - TP + 1e-10)
    FN_k  = (T - TP) / (T + P - TP + 1e-10)

and the means use one of two conventions, named in every report:

* ``"all"``: plain mean over all classes, an absent class counting 0 (the seed-evaluation
  convention of ``evaluation.py``; the default),
* ``"present"``: mean over the classes with ``T + P > 0`` only (the ``nanmean`` convention of the
  segmentation evaluator, ``seg/tool/metrics.py``).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from doei.data.common import IGNORE_INDEX as IGNORE  # the label that is not scored
from doei.errors import DoeiError

MeanConvention = Literal["all", "present"]
MEAN_CONVENTIONS: dict[str, str] = {
    "all": "mean over all classes, an absent class counting 0 (seed-evaluation convention of evaluation.py)",
    "present": "mean over present classes (T+P>0) only (nanmean convention of the segmentation evaluator)",
}


def label_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``(TP, P, T)``, each int64 [num_classes], of one predicted label map against its GT.

    ``pred``, ``gt``: integer [H, W] with values in 0..num_classes-1 or 255 (already validated).
    Pixels with ``gt == 255`` are skipped. A prediction of 255 on a valid pixel counts as a miss of
    the GT class and as a prediction of no class (what the official arithmetic does).
    """
    valid = gt != IGNORE
    g = gt[valid].astype(np.intp, copy=False)
    p = pred[valid].astype(np.intp, copy=False)
    t_cnt = np.bincount(g, minlength=256)[:num_classes]
    p_cnt = np.bincount(p, minlength=256)[:num_classes]
    tp_cnt = np.bincount(g[p == g], minlength=256)[:num_classes]
    return tp_cnt.astype(np.int64), p_cnt.astype(np.int64), t_cnt.astype(np.int64)


def per_class_scores(tp: np.ndarray, p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(IoU, FP, FN)`` as fractions in [0, 1], float64, same shape as the counts [..., C].

    The ``+ 1e-10`` in the denominator is the official one: it makes an absent class score 0 and
    is kept so that every number equals the official one exactly.
    """
    tp = np.asarray(tp, dtype=np.int64)
    p = np.asarray(p, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    denom = (t + p - tp) + 1e-10
    return tp / denom, (p - tp) / denom, (t - tp) / denom


def present_mask(tp: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bool [..., C]: the class occurs in the ground truth or in the prediction (``T + P > 0``)."""
    return (np.asarray(t) + np.asarray(p)) > 0


def mean_scores(
    tp: np.ndarray, p: np.ndarray, t: np.ndarray, mean: MeanConvention = "all"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mIoU, FP, FN)`` in percent, float64, for counts of shape [B, C] (one row per β) -> each [B].

    ``mean="all"`` reproduces ``np.mean(np.array(IoU)) * 100`` of the official script exactly
    (each row is averaged as a 1-D array, the same summation order). ``mean="present"`` averages
    over the classes with ``T + P > 0``; a row without any present class raises DoeiError.
    """
    if mean not in MEAN_CONVENTIONS:
        raise DoeiError(f"mean convention {mean!r}: expected one of {sorted(MEAN_CONVENTIONS)}")
    tp2, p2, t2 = (np.atleast_2d(np.asarray(a, dtype=np.int64)) for a in (tp, p, t))
    iou, fp, fn = per_class_scores(tp2, p2, t2)
    keep = present_mask(tp2, p2, t2) if mean == "present" else np.ones(iou.shape, dtype=bool)
    if not keep.any(axis=1).all():
        raise DoeiError("no class is present (every ground-truth pixel is 255 or there are no pixels)")
    out = np.empty((3, iou.shape[0]), dtype=np.float64)
    for b in range(iou.shape[0]):  # one row per beta (tens at most), not per pixel or class
        m = keep[b]
        out[0, b] = np.mean(iou[b][m]) * 100
        out[1, b] = np.mean(fp[b][m]) * 100
        out[2, b] = np.mean(fn[b][m]) * 100
    return out[0], out[1], out[2]
