"""Affinity labels from CAM seeds, as PSA / MCTformer train AffinityNet.

Two background strengths make a three-way seed map (``voc12/data.py`` ``VOC12AffDataset``):

* "low alpha" scores ``[bg; cams]`` with ``bg = (1 - max cams)**low_alpha`` — a *high* background
  score; pixels whose argmax is still a foreground class are **confident foreground**;
* "high alpha" scores with ``bg = (1 - max cams)**high_alpha`` — a *low* background score; pixels
  whose argmax is still background are **confident background**;
* everything else (and pixels with no score at all, e.g. crop padding) is ignored (255).

PSA uses ``low_alpha=4, high_alpha=32``; MCTformer's ``run_psa.sh`` ``1`` and ``12``. Both
officially CRF-refine each score stack first (``_crf_with_alpha``, :func:`doei.seg.crf.crf_with_alpha`);
here that is optional (pass the image). The training crop is 8×8 **average**-pooled (the official
``AvgPool2d(8)`` label transform, ``block_reduce`` with zero padding) *before* the argmax, then
pairs within radius 5 are labelled on the stride-8 grid (:mod:`doei.models.pairs`):

* ``bg_pos``: both ends background (0);
* ``fg_pos``: both ends the same foreground class, neither ignored;
* ``neg``: different labels, neither ignored.
"""
from __future__ import annotations

import numpy as np
import torch

from doei.data.common import IGNORE_INDEX as IGNORE  # the label that is not scored
from doei.errors import DoeiError
from doei.models.pairs import from_grid_shape, pair_indices

PSA_ALPHAS = (4.0, 32.0)
MCTFORMER_ALPHAS = (1.0, 12.0)


def scores_with_background(cams: np.ndarray, alpha: float, image: np.ndarray | None = None) -> np.ndarray:
    """``[K+1,H,W]`` float32: ``[(1 - max cams)**alpha; cams]``, CRF-refined when ``image`` (uint8
    ``[H,W,3]``) is given (the official la/ha CRF maps)."""
    v = np.asarray(cams, dtype=np.float32)
    if v.ndim != 3:
        raise DoeiError(f"cams {v.shape}: expected [K,H,W]")
    if image is not None:
        from doei.seg.crf import crf_with_alpha

        return crf_with_alpha(image, v, alpha)
    bg = np.power(1 - v.max(axis=0, keepdims=True), alpha)
    return np.concatenate([bg, v], axis=0).astype(np.float32)


def block_mean(scores: np.ndarray, k: int = 8) -> np.ndarray:
    """Mean over ``k×k`` blocks of ``[C,H,W]`` → ``[C,ceil(H/k),ceil(W/k)]``, zero-padding the
    bottom/right first (``skimage.measure.block_reduce(..., np.mean)`` semantics)."""
    c, h, w = scores.shape
    ph, pw = -h % k, -w % k
    x = np.pad(np.asarray(scores, dtype=np.float32), ((0, 0), (0, ph), (0, pw)))
    return x.reshape(c, (h + ph) // k, k, (w + pw) // k, k).mean(axis=(2, 4))


def seed_label_from_scores(scores_la: np.ndarray, scores_ha: np.ndarray, classes: np.ndarray | list[int]) -> np.ndarray:
    """Three-way seed map ``[h,w]`` uint8 (0 bg, k+1 class k, 255 ignore) from the low-/high-alpha
    score stacks ``[K+1,h,w]`` (row 0 background, row i+1 = ``classes[i]``)."""
    cls = np.asarray(classes, dtype=np.int64).reshape(-1)
    if scores_la.shape != scores_ha.shape or scores_la.shape[0] != cls.size + 1:
        raise DoeiError(f"seed scores {scores_la.shape} / {scores_ha.shape}: expected equal [K+1,h,w] with K = {cls.size}")
    ids = np.concatenate([[0], cls + 1]).astype(np.uint8)
    la = scores_la.argmax(axis=0)
    ha = scores_ha.argmax(axis=0)
    label = ids[la]
    label[la == 0] = IGNORE
    label[ha == 0] = 0
    no_score = np.maximum(scores_la.max(axis=0), scores_ha.max(axis=0)) < 1e-5
    label[no_score] = IGNORE
    return label


def affinity_labels_from_label(label: np.ndarray, radius: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bg_pos, fg_pos, neg)`` float32 ``[D,n_from]`` for a stride-8 seed map ``[h,w]``, in the
    layout of AffinityNet's sparse output (offset-major, :func:`doei.models.pairs.pair_indices`)."""
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise DoeiError(f"seed label {lab.shape}: expected [h,w]")
    h, w = lab.shape
    from_grid_shape(h, w, radius)
    ind_from, ind_to = pair_indices(h, w, radius)
    flat = torch.from_numpy(lab.astype(np.int64).reshape(-1))
    a = flat[ind_from].unsqueeze(0)                            # [1,n_from]
    b = flat[ind_to].view(-1, ind_from.numel())                # [D,n_from]
    valid = (a != IGNORE) & (b != IGNORE)
    same = a == b
    bg_pos = same & (a == 0)
    fg_pos = same & (a != 0) & valid
    neg = ~same & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def affinity_labels_from_seeds(cams: np.ndarray, classes: np.ndarray | list[int], *, low_alpha: float = MCTFORMER_ALPHAS[0],
                               high_alpha: float = MCTFORMER_ALPHAS[1], image: np.ndarray | None = None,
                               stride: int = 8, radius: int = 5
                               ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Seed map ``[ceil(H/8),ceil(W/8)]`` and pair labels ``(bg_pos, fg_pos, neg)`` ``[D,n_from]`` for
    one image (or crop) from its CAMs ``[K,H,W]`` (0-based foreground ``classes``).

    ``image`` (uint8 ``[H,W,3]``) switches on the official CRF refinement of both score stacks.
    A training loader crops (zero-padding) the two score stacks together with the image first and
    then calls :func:`block_mean`, :func:`seed_label_from_scores`, :func:`affinity_labels_from_label`.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(np.atleast_1d(classes)):
        raise DoeiError(f"cams {cams.shape}: expected [K,H,W] with K = len(classes) = {len(np.atleast_1d(classes))}")
    la = block_mean(scores_with_background(cams, low_alpha, image), stride)
    ha = block_mean(scores_with_background(cams, high_alpha, image), stride)
    label = seed_label_from_scores(la, ha, classes)
    return label, affinity_labels_from_label(label, radius)
