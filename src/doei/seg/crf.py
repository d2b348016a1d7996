"""DenseCRF post-processing with the baselines' parameters (pydensecrf2, import name ``pydensecrf``).

Two official call styles, both ``unary_from_softmax`` (``-log(clip(p, 1e-5, 1))``) + one Gaussian
and one bilateral pairwise term, 10 mean-field iterations:

* CAM / seed style (PSA & MCTformer ``imutils.crf_inference``, used by ``_crf_with_alpha``):
  Gaussian ``sxy=3, compat=3``; bilateral ``sxy=80, srgb=13, compat=10`` (:data:`CAM_CRF`).
* segmentation style (MCTformer ``seg/tool/imutils.crf_inference_inf``):
  Gaussian ``sxy=4, compat=3``; bilateral ``sxy=83, srgb=5, compat=3`` (:data:`SEG_CRF`).

See docs/reference-notes.md#mctformer-cam-generation and #segmentation-inference. Images are ``uint8 [H,W,3]`` RGB; probabilities ``[C,H,W]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doei.errors import DoeiError


@dataclass(frozen=True)
class CRFParams:
    """Pairwise parameters of one DenseCRF call (see the module docstring)."""

    gauss_sxy: float
    gauss_compat: float
    bi_sxy: float
    bi_srgb: float
    bi_compat: float
    iterations: int = 10


CAM_CRF = CRFParams(gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10)
SEG_CRF = CRFParams(gauss_sxy=4, gauss_compat=3, bi_sxy=83, bi_srgb=5, bi_compat=3)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field DenseCRF: returns the marginals ``[C,H,W]`` float32 for ``probs`` ``[C,H,W]``."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise DoeiError("DenseCRF needs pydensecrf2 (pip install pydensecrf2)") from None

    img = np.asarray(image)
    p = np.asarray(probs)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DoeiError(f"CRF image {img.dtype} {img.shape}: expected uint8 [H,W,3] RGB")
    if p.ndim != 3 or p.shape[1:] != img.shape[:2]:
        raise DoeiError(f"CRF probabilities {p.shape}: expected [C,{img.shape[0]},{img.shape[1]}] matching the image")
    c, h, w = p.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bi_sxy, srgb=params.bi_srgb, rgbim=np.ascontiguousarray(img),
                             compat=params.bi_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(c, h, w)


def crf_refine(image: np.ndarray, probs: np.ndarray, params: CRFParams = SEG_CRF) -> np.ndarray:
    """Segmentation-style CRF of softmax probabilities ``[C,H,W]`` → refined ``[C,H,W]``
    (defaults: the seg baseline's ``crf_inference_inf``)."""
    return dense_crf(image, probs, params)


def crf_with_alpha(image: np.ndarray, cams: np.ndarray, alpha: float, params: CRFParams = CAM_CRF) -> np.ndarray:
    """MCTformer/PSA ``_crf_with_alpha``: scores ``[bg; cams]`` with ``bg = (1 - max cams)**alpha``
    through the CAM-style CRF → ``[K+1,H,W]`` (row 0 = background, then the CAM rows in order).

    ``cams`` ``[K,H,W]``, normally min–max normalised to [0,1]. MCTformer passes the uint8-truncated
    de-normalised network input as ``image`` (docs/reference-notes.md#mctformer-cam-generation).
    """
    v = np.asarray(cams, dtype=np.float32)
    bg = np.power(1 - v.max(axis=0, keepdims=True), alpha)
    return dense_crf(image, np.concatenate([bg, v], axis=0), params)

