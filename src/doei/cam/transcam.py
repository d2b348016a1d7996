"""TransCAM's CAM pipeline (``infer_TransCAM.py``): square rescales + flips, sum, normalisation, CRF.

For one image (uint8 [H, W, 3]) and its image-level labels:

1. **Views.** The image is resized with PIL bicubic to SQUARES (aspect ratio not kept; official
   sizes 256², 512², 768²), normalised ``(x/255 − mean)/std`` (computed in float64, stored as
   float32, as the official ``Normalize``), and each view is followed by its horizontal flip.
2. **Per view.** ``model.cam_forward(view, method)`` (TransCAM: the CNN-branch map refined by the
   transformer's summed patch-to-patch attention), background channel dropped, bilinearly
   up-sampled (align_corners=False) to H×W, multiplied by the label vector, flipped back.
3. **Sum** over the views (in view order, float32) → ``sum_cam`` [num_classes, H, W].
4. **Normalise** per class (:func:`normalize_sum_cam`):

   * ``"minmax"`` (default, this project's): ``relu(sum)`` then ``(s − min) / (max − min + 1e-5)``,
     values in [0, 1): the convention of the other baselines and of docs/doei-method.md.
   * ``"official"`` (compatibility): the official code sets negatives to 0, takes per-class
     ``mx``/``mn``, then ZEROES every pixel below ``mn + 1e-5`` and only then computes
     ``(s − mn − 1e-5) / (mx − mn + 1e-5)``, so the zeroed pixels become ``−(mn + 1e-5)/(mx − mn +
     1e-5)`` — hugely negative when ``mn > 0`` (−19 and −213 on the reference image). Those pixels
     always lose to the background in an argmax, so seeds are barely affected, but the values are
     not CAMs in [0, 1] (and a class whose sum is constant ends at −1 everywhere). Reproduced
     bit-for-bit for parity with official CAM files.

5. **CRF seeds** (:func:`crf_seed_labels`): ``[t; cams]`` → argmax (background at threshold t,
   official t ∈ {0.60, 0.25}) → DenseCRF on the labels (``crf_inference_label``: unary from labels
   with gt_prob 0.7, Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10, 10 iterations) →
   argmax → uint8 label map (0 = background, k + 1 = foreground class k).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from doei.errors import DoeiError

Normalization = Literal["minmax", "official"]
OFFICIAL_SCALES: tuple[int, ...] = (256, 512, 768)
OFFICIAL_CRF_THRESHOLDS: tuple[float, ...] = (0.60, 0.25)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-5


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], ``(x/255 − mean)/std`` evaluated in float64 per channel."""
    x = np.asarray(image).astype(np.float64) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1))


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    """Validate an RGB uint8 image [H, W, 3]; returns it as a numpy array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise DoeiError(f"{where}: expected an RGB uint8 array [H, W, 3], got {image.dtype} {list(image.shape)}")
    return image


def square_views(image: np.ndarray, scales: Sequence[int | tuple[int, int]] = OFFICIAL_SCALES) -> list[Tensor]:
    """The official resized views, one [1, 3, h, w] float32 tensor per scale (flips not included).

    An int scale s gives an s×s square (official); an (h, w) pair gives that size (non-square
    inputs work with this project's Conformer; sides must be multiples of its total stride).
    """
    pil = Image.fromarray(check_image(image))
    views = []
    for s in scales:
        h, w = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
        resized = np.asarray(pil.resize((w, h), resample=Image.BICUBIC))
        views.append(torch.from_numpy(normalize_image(resized))[None])
    return views


@torch.no_grad()
def transcam_sum_cam(model: torch.nn.Module, image: np.ndarray, labels: np.ndarray | Tensor,
                     scales: Sequence[int | tuple[int, int]] = OFFICIAL_SCALES, flip: bool = True,
                     method: str = "transcam", view_outputs: list | None = None) -> Tensor:
    """Label-masked sum of the per-view CAMs at the image's size: float32 [num_classes, H, W].

    ``model`` is a :class:`doei.models.conformer.Conformer` (anything with ``cam_forward`` and
    ``fg_offset``); ``labels`` [num_classes] image-level 0/1 vector. Each view and its flip run as
    one batch of 2. If ``view_outputs`` is a list it receives, per view in official order
    (s0, flip(s0), s1, ...), ``(logits_conv [1,K], logits_trans [1,K], cams [1,K,h,w])``.
    """
    image = check_image(image)
    h, w = image.shape[:2]
    device = next(model.parameters()).device
    lab = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(-1, 1, 1).to(device)
    off = int(getattr(model, "fg_offset", 1))
    total: Tensor | None = None
    for view in square_views(image, scales):
        batch = torch.cat([view, view.flip(-1)]) if flip else view
        logits_conv, logits_trans, cams = model.cam_forward(batch.to(device), method)
        if cams.shape[1] - off != lab.shape[0]:
            raise DoeiError(f"labels: {lab.shape[0]} classes given, the model has {cams.shape[1] - off}")
        up = F.interpolate(cams[:, off:], (h, w), mode="bilinear", align_corners=False) * lab
        for j in range(batch.shape[0]):
            if view_outputs is not None:
                view_outputs.append((logits_conv[j:j + 1].cpu(), logits_trans[j:j + 1].cpu(), cams[j:j + 1].cpu()))
            cam = up[j].flip(-1) if j == 1 else up[j]
            total = cam if total is None else total + cam
    assert total is not None, "at least one scale is required"
    return total.float().cpu()


def normalize_sum_cam(sum_cam: Tensor, normalization: Normalization = "minmax") -> Tensor:
    """Per-class normalisation of a summed CAM [K, H, W] (see the module docstring)."""
    s = sum_cam.float().clone()
    s[s < 0] = 0
    mx = s.amax(dim=(1, 2), keepdim=True)
    mn = s.amin(dim=(1, 2), keepdim=True)
    if normalization == "minmax":
        return (s - mn) / (mx - mn + EPS)
    if normalization == "official":
        s[s < mn + EPS] = 0
        return (s - mn - EPS) / (mx - mn + EPS)
    raise DoeiError(f"TransCAM normalization {normalization!r}: expected 'minmax' or 'official'")


def transcam_cams(model: torch.nn.Module, image: np.ndarray, labels: np.ndarray | Tensor,
                  scales: Sequence[int | tuple[int, int]] = OFFICIAL_SCALES, flip: bool = True,
                  method: str = "transcam", normalization: Normalization = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """The whole CAM step for one image: ``(classes int64 [K'], cams float32 [K', H, W])`` for the
    K' labelled classes (0-based foreground ids, ascending), ready for :func:`doei.cam.io.save_cam`
    (with ``"official"`` normalisation the values are not in [0, 1]; see the module docstring)."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    norm = normalize_sum_cam(transcam_sum_cam(model, image, labels, scales, flip, method), normalization)
    classes = np.flatnonzero(labels > 1e-5).astype(np.int64)
    return classes, norm[torch.from_numpy(classes)].numpy()


def crf_inference_label(image: np.ndarray, labels: np.ndarray, n_labels: int, iterations: int = 10,
                        gt_prob: float = 0.7) -> np.ndarray:
    """DenseCRF on a label map with the official TransCAM/PSA parameters -> int64 [H, W].

    image uint8 [H, W, 3]; labels int [H, W] in [0, n_labels). Needs ``pydensecrf2``.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DoeiError("CRF needs the 'pydensecrf2' package (pip install pydensecrf2)") from e
    h, w = image.shape[:2]
    if labels.shape != (h, w):
        raise DoeiError(f"CRF: label map {list(labels.shape)} does not match image {h}x{w}")
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
    q = np.array(d.inference(iterations)).reshape(n_labels, h, w)
    return np.argmax(q, axis=0)


def crf_seed_labels(image: np.ndarray, classes: np.ndarray, cams: np.ndarray, num_classes: int,
                    thresholds: Sequence[float] = OFFICIAL_CRF_THRESHOLDS) -> dict[float, np.ndarray]:
    """Official CRF seeds: for each threshold t, ``argmax([t; cams])`` then DenseCRF -> uint8 [H, W].

    classes [K'] 0-based foreground ids of ``cams`` [K', H, W]; the label space is
    ``num_classes + 1`` (background 0). Ties in the argmax go to the lower index (background).
    """
    image = check_image(image)
    cams = np.asarray(cams, dtype=np.float32)
    h, w = cams.shape[-2:]
    if (h, w) != image.shape[:2]:
        raise DoeiError(f"CRF: CAMs {h}x{w} do not match image {image.shape[0]}x{image.shape[1]}")
    tensor = np.zeros((num_classes + 1, h, w), np.float32)
    tensor[np.asarray(classes, dtype=np.int64) + 1] = cams
    out = {}
    for t in thresholds:
        tensor[0] = t
        seeds = np.argmax(tensor, axis=0).astype(np.uint8)
        out[t] = crf_inference_label(image, seeds, num_classes + 1).astype(np.uint8)
    return out
