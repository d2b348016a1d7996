"""Pictures a person can read alone: CAM, seed, pseudo-mask and segmentation overlays with class names,
a colour legend (and a colour bar for CAMs), at a readable size; label PNGs with the VOC palette.

* :func:`cam_overlay`: one class map [H, W] in [0, 1] as a jet heat map blended over the image. The image
  may be uint8 [H, W, 3], float [H, W, 3] in [0, 1] (pytorch-grad-cam's convention) or the network's
  input, a channels-first [3, H, W] tensor, with ``normalization`` ("imagenet" or ``(mean, std)``) undone.
* :func:`label_overlay`: a label map (0 background, k + 1 class k, 255 ignore) in VOC colours over the image.
* :func:`cam_figure`: the image, one titled overlay per class, optionally the seeds, in a grid of
  ``panel``-px cells, with the colour bar and the seeds' legend (what ``doei cam --save-overlays`` and
  ``doei predict --save-cams`` write).
* :func:`label_figure`: image | overlay of a label map, with a legend of the classes present (segmentations,
  pseudo masks, seeds: ``doei predict``, ``doei infer-seg``, ``doei refine infer``, ``doei compare``).
* :func:`voc_palette` / :func:`label_to_pil` / :func:`save_label_png`: palette ("P" mode) PNGs whose pixel
  values ARE the labels, so they read back as label maps and display in colour.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from doei.errors import DoeiError
from doei.utils.io import atomic_save_png

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PANEL = 256            # default cell side of the figures (px): readable, and a VOC image keeps its detail
FONT_PX = 14
WHITE, INK, GREY = (255, 255, 255), (20, 20, 20), (110, 110, 110)


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
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)) * 255.0 + 0.5, 0, 255).astype(np.int64)
    return _jet_lut()[idx]


@functools.lru_cache(maxsize=1)
def _jet_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def to_rgb_uint8(image, normalization: str | tuple | None = None) -> np.ndarray:
    """Any usual image form -> uint8 [H, W, 3].

    * uint8 [H, W, 3]: as is;
    * float [H, W, 3] in [0, 1] (pytorch-grad-cam's ``rgb_img``): × 255;
    * channels first [3, H, W] (a torch tensor or array, e.g. one image of the batch the model received):
      ``normalization`` undone first — ``"imagenet"`` (this project's transforms), ``(mean, std)``, or
      None when the values are already in [0, 1].
    """
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:           # channels first
        a = a.astype(np.float32)
        if normalization is not None:
            mean, std = IMAGENET if normalization == "imagenet" else normalization
            a = a * np.asarray(std, np.float32).reshape(3, 1, 1) + np.asarray(mean, np.float32).reshape(3, 1, 1)
        a = a.transpose(1, 2, 0)
    elif normalization is not None:
        raise ValueError("normalization: only for a channels-first [3, H, W] image (the network's input)")
    if a.ndim != 3 or a.shape[2] != 3:
        raise DoeiError(f"image: expected uint8 [H, W, 3], float [H, W, 3] in [0, 1] or [3, H, W], got "
                        f"{a.dtype} {tuple(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise DoeiError(f"image: expected uint8 or float values, got {a.dtype}")
    return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def cam_overlay(image, cam: np.ndarray, alpha: float = 0.5, normalization: str | tuple | None = None) -> np.ndarray:
    """Blend a jet heat map of ``cam`` [H, W] (values in [0, 1]) over ``image`` (see :func:`to_rgb_uint8`:
    uint8 or [0, 1] float [H, W, 3], or the network's [3, H, W] input with its ``normalization``).

    ``alpha`` is the heat map's weight. Returns uint8 [H, W, 3].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
    image = to_rgb_uint8(image, normalization)
    cam = np.asarray(cam.detach().cpu() if hasattr(cam, "detach") else cam)
    if cam.shape != image.shape[:2]:
        raise DoeiError(f"overlay: CAM {tuple(cam.shape)} does not match image {tuple(image.shape[:2])}")
    heat = jet(cam).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def label_overlay(image, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``label`` [H, W] in VOC colours blended over the image (background blended too; 255 = not blended)."""
    image = to_rgb_uint8(image)
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise DoeiError(f"overlay: label map {tuple(label.shape)} does not match image {tuple(image.shape[:2])}")
    colours = voc_palette(256)[label].astype(np.float32)
    a = np.where(label[..., None] == 255, 0.0, alpha).astype(np.float32)
    a = np.where(label[..., None] == 0, alpha * 0.5, a)                  # background: a lighter tint
    blend = image.astype(np.float32) * (1 - a) + colours * a
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def label_names(class_names: Sequence[str] | None, label: int) -> str:
    """Name of label value ``label`` (0 background, k + 1 foreground class k, 255 ignore)."""
    if label == 0:
        return "background"
    if label == 255:
        return "ignore"
    k = label - 1
    return class_names[k] if class_names is not None and 0 <= k < len(class_names) else f"class {k}"


# ---------------------------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=8)
def font(size: int = FONT_PX) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; PIL's default font when it is missing."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # pragma: no cover - no matplotlib font: PIL's own
        return ImageFont.load_default()


def _text_w(text: str, f) -> int:
    return int(np.ceil(f.getlength(text))) if hasattr(f, "getlength") else 6 * len(text)


def fit(image: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """Resize so the longer side is ``side`` px (label maps: ``nearest``)."""
    h, w = image.shape[:2]
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def titled(panel: np.ndarray, title: str, size: int = FONT_PX) -> np.ndarray:
    """``panel`` with a white title bar above it (text clipped to the width)."""
    f = font(size)
    w = panel.shape[1]
    while title and _text_w(title, f) > w - 6 and len(title) > 4:
        title = title[:-2].rstrip() + "…" if not title.endswith("…") else title[:-2] + "…"
    bar = Image.new("RGB", (w, size + 8), WHITE)
    ImageDraw.Draw(bar).text((3, 3), title, fill=INK, font=f)
    return np.concatenate([np.asarray(bar), panel], axis=0)


def legend(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int, size: int = FONT_PX,
           title: str = "") -> np.ndarray:
    """A white strip ``width`` px wide: colour swatches with names, wrapped into rows."""
    f = font(size)
    pad, sw, row_h = 6, size, size + 8
    x, y = pad, pad
    placed = []
    if title:
        placed.append((x, y, title, None))
        x += _text_w(title, f) + 10
    for name, colour in entries:
        need = sw + 4 + _text_w(name, f) + 14
        if x + need > width - pad and x > pad:
            x, y = pad, y + row_h
        placed.append((x, y, name, colour))
        x += need
    img = Image.new("RGB", (width, y + row_h + pad // 2), WHITE)
    d = ImageDraw.Draw(img)
    for x, y, name, colour in placed:
        if colour is None:
            d.text((x, y), name, fill=GREY, font=f)
            continue
        d.rectangle((x, y + 1, x + sw, y + 1 + sw), fill=tuple(int(c) for c in colour), outline=INK)
        d.text((x + sw + 4, y), name, fill=INK, font=f)
    return np.asarray(img)


def text_strip(text: str, width: int, size: int = FONT_PX, colour=GREY) -> np.ndarray:
    """``text`` wrapped at word boundaries into a white strip ``width`` px wide."""
    f = font(size)
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and _text_w(trial, f) > width - 12:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    lines.append(cur)
    img = Image.new("RGB", (width, len(lines) * (size + 4) + 8), WHITE)
    d = ImageDraw.Draw(img)
    for n, line in enumerate(lines):
        d.text((6, 4 + n * (size + 4)), line, fill=colour, font=f)
    return np.asarray(img)


def colorbar(width: int, label: str = "CAM value (each class min-max normalised)", size: int = FONT_PX) -> np.ndarray:
    """A jet colour bar 0 … 1 with ticks and a caption, ``width`` px wide."""
    f = font(size)
    pad = 8
    bar_w = max(40, width - 2 * pad)
    grad = jet(np.linspace(0, 1, bar_w, dtype=np.float32))[None].repeat(12, axis=0)
    img = Image.new("RGB", (width, 12 + 2 * size + 20), WHITE)
    img.paste(Image.fromarray(grad), (pad, 4))
    d = ImageDraw.Draw(img)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = pad + round(v * (bar_w - 1))
        d.line((x, 16, x, 19), fill=INK)
        t = f"{v:g}"
        d.text((min(max(0, x - _text_w(t, f) // 2), width - _text_w(t, f)), 20), t, fill=INK, font=f)
    d.text((pad, 22 + size), label, fill=GREY, font=f)
    return np.asarray(img)


def grid(panels: Sequence[np.ndarray], cols: int, gap: int = 6) -> np.ndarray:
    """Panels in rows of ``cols`` on white, each cell the size of the largest panel (top-left aligned)."""
    if not panels:
        raise ValueError("grid: no panels")
    ch = max(p.shape[0] for p in panels)
    cw = max(p.shape[1] for p in panels)
    cols = max(1, min(cols, len(panels)))
    rows = -(-len(panels) // cols)
    out = np.full((rows * ch + (rows + 1) * gap, cols * cw + (cols + 1) * gap, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        y, x = gap + r * (ch + gap), gap + c * (cw + gap)
        out[y:y + p.shape[0], x:x + p.shape[1]] = p
    return out


def stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Parts one under the other on white, left aligned, as wide as the widest."""
    w = max(p.shape[1] for p in parts)
    rows = [np.pad(p, ((0, 0), (0, w - p.shape[1]), (0, 0)), constant_values=255) for p in parts]
    return np.concatenate(rows, axis=0)


def label_legend(labels: Sequence[np.ndarray], class_names: Sequence[str] | None, width: int,
                 title: str = "") -> np.ndarray:
    """The legend of every label value present in ``labels`` (sorted; background and ignore included)."""
    present = sorted(set().union(*(set(np.unique(np.asarray(lab)).tolist()) for lab in labels)))
    pal = voc_palette(256)
    return legend([(label_names(class_names, int(v)), tuple(pal[int(v)])) for v in present], width, title=title)


# ---------------------------------------------------------------------------------------------- figures
def cam_figure(image, classes: Sequence[int], cams: np.ndarray, class_names: Sequence[str] | None = None,
               seeds: np.ndarray | None = None, scores: Sequence[float] | None = None, title: str = "",
               alpha: float = 0.5, panel: int = PANEL, cols: int = 4) -> np.ndarray:
    """The image | one overlay per class of ``classes`` (``cams`` [K, H, W] in [0, 1]) | the seeds, as a grid
    of ``panel``-px cells (``cols`` per row), each titled with its class name (and ``scores``, the
    classifier's probability, when given), then the colour bar and the seeds' legend. uint8 [H', W', 3]."""
    image = to_rgb_uint8(image)
    cams = np.asarray(cams)
    if cams.ndim != 3 or len(cams) != len(classes):
        raise DoeiError(f"cam_figure: {len(classes)} classes but CAMs of shape {tuple(cams.shape)}")
    cells = [titled(fit(image, panel), title or "image")]
    for j, (k, cam) in enumerate(zip(classes, cams)):
        name = class_names[int(k)] if class_names is not None and 0 <= int(k) < len(class_names) else f"class {k}"
        if scores is not None:
            name = f"{name}  p={float(scores[j]):.2f}"
        cells.append(titled(fit(cam_overlay(image, np.clip(cam, 0, 1), alpha), panel), f"CAM: {name}"))
    if seeds is not None:
        cells.append(titled(fit(label_overlay(image, seeds), panel, nearest=True), "seeds"))
    fig = grid(cells, cols)
    parts = [fig, colorbar(min(fig.shape[1], 2 * panel))]
    if seeds is not None:
        parts.append(label_legend([seeds], class_names, fig.shape[1], title="seeds:"))
    if not len(classes):
        parts.append(text_strip("no class to show (no label given or predicted)", fig.shape[1]))
    return stack(parts)


def cam_panel(image: np.ndarray, classes: Sequence[int], cams: np.ndarray,
              class_names: Sequence[str] | None = None, seeds: np.ndarray | None = None,
              alpha: float = 0.5) -> np.ndarray:
    """The figure ``doei cam --save-overlays`` writes: :func:`cam_figure` (kept under its former name)."""
    return cam_figure(image, classes, cams, class_names, seeds=seeds, alpha=alpha)


def label_figure(image, label: np.ndarray, class_names: Sequence[str] | None = None, title: str = "",
                 what: str = "segmentation", panel: int = 320, note: str = "") -> np.ndarray:
    """Image | ``label`` (0 background, k + 1 class k, 255 ignore) over the image, each ``panel`` px, with a
    legend of the classes present and an optional ``note`` line (e.g. where the labels came from)."""
    image = to_rgb_uint8(image)
    label = np.asarray(label)
    cells = [titled(fit(image, panel), title or "image"), titled(fit(label_overlay(image, label), panel), what)]
    fig = grid(cells, 2)
    parts = [fig, label_legend([label], class_names, fig.shape[1])]
    if note:
        parts.append(text_strip(note, fig.shape[1]))
    return stack(parts)


__all__ = ["voc_palette", "label_to_pil", "save_label_png", "jet", "to_rgb_uint8", "cam_overlay", "label_overlay",
           "cam_figure", "cam_panel", "label_figure", "legend", "text_strip", "colorbar", "label_legend", "grid", "stack", "titled",
           "fit", "font", "label_names", "IMAGENET"]
