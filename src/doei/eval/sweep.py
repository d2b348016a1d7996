"""Label maps from CAMs with a background threshold β, and counts for MANY β in one pass.

The official prediction (MCTformer ``evaluation.py``) of one image is::

    tensor = zeros((C, H, W), float32); tensor[k + 1] = cam[k]; tensor[0] = β   # β cast to float32
    pred = argmax(tensor, axis=0)          # ties -> lowest index: background wins a tie with β

Because only channel 0 depends on β, the foreground part can be reduced ONCE per image to the
per-pixel maximum ``m`` [H, W] (float32) and its label ``a`` [H, W] (1..C-1, lowest label on ties,
absent classes taking part with value 0 as in the zero-initialised tensor). Then for every β::

    pred_β = a  where m > float32(β)  else 0

so pixel x is foreground exactly for the sorted thresholds with index < ``i(x) = #{β_j < m(x)}``
(a ``searchsorted``). One ``bincount`` of ``(a, i)`` pairs (and of ``(a, i)`` on pixels where
``a == gt``, and of ``i`` on background-GT pixels) followed by cumulative sums gives TP/P/T for all
β at once: the per-image cost barely grows with the number of thresholds.
"""
from __future__ import annotations

import numpy as np

from doei.data.common import IGNORE_INDEX as IGNORE  # the label that is not scored
from doei.errors import DoeiError



def sort_by_class(classes: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder ``classes`` [K] / ``cams`` [K, H, W] by ascending class id (so argmax ties pick the lowest)."""
    order = np.argsort(classes, kind="stable")
    if np.array_equal(order, np.arange(order.size)):
        return classes, cams
    return classes[order], cams[order]


def foreground_max(classes: np.ndarray, cams: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel max foreground score ``m`` float32 [H, W] and its label ``a`` int64 [H, W] (1..C-1).

    ``classes`` [K] are distinct 0-based foreground ids < num_classes-1; ``cams`` float32 [K, H, W].
    Classes not in ``classes`` score 0 (the official tensor is zero-initialised): they win only
    where every given CAM is below 0 (or equal to 0 with a higher label), which matters for
    negative CAM values or negative β only.
    """
    classes, cams = sort_by_class(np.asarray(classes, dtype=np.int64), np.asarray(cams, dtype=np.float32))
    k, h, w = cams.shape
    if k == 0:
        m = np.zeros((h, w), dtype=np.float32)
        a = np.ones((h, w), dtype=np.int64)
        return m, a
    if k == 1:
        m = cams[0]
        a = np.full((h, w), classes[0] + 1, dtype=np.int64)
    else:
        m = cams.max(axis=0)
        a = classes[_first_max_index(cams, m)] + 1
    if k < num_classes - 1:  # the lowest absent label competes with value 0
        present = np.zeros(num_classes, dtype=bool)
        present[classes + 1] = True
        z = int(np.flatnonzero(~present[1:])[0]) + 1
        take = (m < 0) | ((m == 0) & (z < a))
        if take.any():
            m = np.where(take, np.float32(0), m)
            a = np.where(take, z, a)
    return m, a


def _first_max_index(cams: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Index [H, W] of the FIRST of the K maps equal to the max ``m`` (what ``argmax(axis=0)`` gives).

    numpy's axis-0 argmax is a slow strided reduction; instead bit ``K-1-j`` of an integer code is
    set where map j attains the max, so the highest set bit (an exact ``frexp`` exponent while
    K <= 53) names the lowest such j; measured about 2x faster than argmax for K = 3.
    """
    k = cams.shape[0]
    if k > 53:
        return np.argmax(cams, axis=0)
    weights = np.left_shift(np.int64(1), np.arange(k - 1, -1, -1, dtype=np.int64))
    code = (cams == m) * weights[:, None, None]
    exponent = np.frexp(code.sum(axis=0).astype(np.float64))[1]  # code in [2^(e-1), 2^e)
    return k - exponent


def predict_labels(classes: np.ndarray, cams: np.ndarray, beta: float, num_classes: int) -> np.ndarray:
    """Reference (one β): the official ``argmax([β; cams])`` label map, uint8 [H, W].

    Builds the full zero-initialised [C, H, W] float32 tensor like the official script. Used as
    the ground truth for the one-pass sweep and by the per-β benchmark baseline.
    """
    classes = np.asarray(classes, dtype=np.int64)
    cams = np.asarray(cams, dtype=np.float32)
    tensor = np.zeros((num_classes,) + cams.shape[1:], dtype=np.float32)
    tensor[classes + 1] = cams
    tensor[0] = beta  # numpy casts to float32 like the official assignment
    return np.argmax(tensor, axis=0).astype(np.uint8)


def labels_at(m: np.ndarray, a: np.ndarray, beta: float) -> np.ndarray:
    """Label map int64 [H, W] for one β from :func:`foreground_max`'s ``(m, a)``."""
    return np.where(m > np.float32(beta), a, 0)


def check_betas(betas: np.ndarray) -> np.ndarray:
    """Validate thresholds: 1-D, finite, strictly increasing after the float32 cast. Returns float32 [B]."""
    b64 = np.asarray(betas, dtype=np.float64).reshape(-1)
    if b64.size == 0 or not np.isfinite(b64).all():
        raise DoeiError(f"betas {b64.tolist()}: expected one or more finite numbers")
    b32 = b64.astype(np.float32)
    if b32.size > 1 and not (np.diff(b32) > 0).all():
        raise DoeiError(f"betas {b64.tolist()}: expected strictly increasing values (distinct in float32)")
    return b32


def sweep_counts(
    m: np.ndarray, a: np.ndarray, gt: np.ndarray, betas32: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts for every β of one image: ``TP`` [B, C], ``P`` [B, C], ``T`` [C], all int64.

    ``m`` float32 / ``a`` int [H, W] from :func:`foreground_max`; ``gt`` integer [H, W] (validated,
    255 = ignore); ``betas32`` float32 [B] strictly increasing (see :func:`check_betas`).
    Equal to :func:`doei.eval.metrics.label_counts` of :func:`predict_labels` at each β.
    """
    c = num_classes
    nb = betas32.shape[0]
    b1 = nb + 1
    mv, av, gv = m.reshape(-1), a.reshape(-1), gt.reshape(-1)
    # i = number of thresholds strictly below m: the pixel is foreground for sorted betas[:i]
    i = np.searchsorted(betas32, mv, side="left")
    # state: 1 correct foreground (a == gt; a >= 1 so never background or 255), 2 gt background,
    # 3 ignore (gt 255), 0 otherwise; one bincount over (label a, bin i, state)
    state = (av == gv).astype(np.intp)
    state += 2 * (gv == 0)
    state += 3 * (gv == IGNORE)
    key = av * b1
    key += i
    key *= 4
    key += state
    hist = np.bincount(key, minlength=c * b1 * 4).reshape(c, b1, 4)
    hist_p = hist[:, :, :3].sum(axis=2)  # valid pixels by (a, i)
    hist_tp = hist[:, :, 1]
    bg_i = hist[:, :, 2].sum(axis=0)  # background-GT pixels by i
    # foreground count for beta index j = pixels with i > j = suffix sum from j+1
    p_fg = np.cumsum(hist_p[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [C, B]
    tp_fg = np.cumsum(hist_tp[:, ::-1], axis=1)[:, ::-1][:, 1:]
    tp = np.ascontiguousarray(tp_fg.T, dtype=np.int64)  # [B, C]
    p = np.ascontiguousarray(p_fg.T, dtype=np.int64)
    tp[:, 0] = np.cumsum(bg_i)[:nb]  # background predicted where i <= j
    p[:, 0] = hist_p.sum() - p[:, 1:].sum(axis=1)
    t = np.bincount(gv, minlength=256)[:c].astype(np.int64)
    return tp, p, t
