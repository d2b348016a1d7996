"""Pictures of CAMs and seeds: jet heat-map overlays and label PNGs with the VOC colour palette.

* :func:`cam_overlay`: one class map [H, W] in [0, 1] as a jet heat map blended over the image.
* :func:`cam_panel`: the image followed by one overlay per labelled class, side by side, with the
  class name written in each panel (what ``doei cam --save-overlays`` writes).
* :func:`voc_palette` / :func:`label_to_pil` / :func:`save_label_png`: palette ("P" mode) PNGs whose
  pixel values ARE the labels (0 background, k + 1 class k, 255 ignore), so they read back as label
  maps and display in colour.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from doei.errors import DoeiError
from doei.utils.io import atomic_save_png


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: uint8 [n, 3]; colour of label i from the bits of i (255 = cream)."""
    i = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # 8 bit planes, vectorised over all labels
        for ch in range(3):
            bit = (i >> (3 * shift + ch)) & 1
            pal[:, ch] |= bit << (7 - shift)
    if n > 255:
        pal[255] = (224, 224, 192)
    return pal.astype(np.uint8)


def label_to_pil(label: np.ndarray) -> Image.Image:
    """uint8 [H, W] label map -> palette PIL image (values kept, VOC colours)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DoeiError(f"label map: expected uint8 [H, W], got {label.dtype} {tuple(label.shape)}")
    img = Image.fromarray(label)                       # mode "L"; putpalette turns it into "P", values kept
    img.putpalette(voc_palette(256).reshape(-1).tolist())
    return img


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a label map as a VOC-palette PNG, atomically."""
    atomic_save_png(path, label_to_pil(label))


def jet(values: np.ndarray) -> np.ndarray:
    """float [..] in [0, 1] -> uint8 [.., 3] jet colours (matplotlib's 'jet' lookup table, 256 entries)."""
    import matplotlib

    lut = (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)) * 255.0 + 0.5, 0, 255).astype(np.int64)
    return lut[idx]


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet heat map of ``cam`` [H, W] (values in [0, 1]) over ``image`` uint8 [H, W, 3].

    ``alpha`` is the heat map's weight. Returns uint8 [H, W, 3].
    """
    image = np.asarray(image)
    cam = np.asarray(cam)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DoeiError(f"overlay image: expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    if cam.shape != image.shape[:2]:
        raise DoeiError(f"overlay: CAM {tuple(cam.shape)} does not match image {tuple(image.shape[:2])}")
    heat = jet(cam).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cam_panel(image: np.ndarray, classes: Sequence[int], cams: np.ndarray,
              class_names: Sequence[str] | None = None, seeds: np.ndarray | None = None,
              alpha: float = 0.5) -> np.ndarray:
    """Image | overlay of each class in ``classes`` (cams [K, H, W]) | optional seed map, side by side.

    Each overlay panel is captioned with its class name (or id). Returns uint8 [H, W·(1+K(+1)), 3].
    """
    panels = [np.asarray(image)]
    for k, cam in zip(classes, np.asarray(cams)):
        name = class_names[int(k)] if class_names is not None and 0 <= int(k) < len(class_names) else str(int(k))
        panels.append(_caption(cam_overlay(image, cam, alpha), name))
    if seeds is not None:
        panels.append(np.asarray(label_to_pil(seeds).convert("RGB")))
    return np.concatenate(panels, axis=1)


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 6 * len(text) + 3, 11), fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(img)
