"""Reading and validating the raw pieces every dataset is made of: ids, images, masks, labels.

Every reader here turns bad input into a one-line :class:`doei.errors.DoeiError` that names the file
(and the id, line or value) at fault, so the loaders built on top never crash deep inside PIL or
numpy with a message nobody can act on.

Conventions (shared with the rest of the project):

* image: ``uint8`` array ``[H, W, 3]`` RGB. Grayscale, palette, RGBA/LA (alpha dropped), CMYK,
  YCbCr and 16/32-bit images are converted, never rejected (see :func:`to_rgb_array`).
* mask: ``uint8`` array ``[H, W]``: 0 = background, ``k + 1`` = foreground class ``k``, 255 = ignore.
* image-level label: sorted tuple of 0-based FOREGROUND class indices, or its multi-hot
  ``float32 [C]`` vector (:func:`multi_hot`).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from doei.errors import DoeiError
from doei.utils.io import atomic_write_json, read_text

IGNORE_INDEX = 255
# Extensions looked for, in this order, when an id names an image without an extension.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABELS_FORMAT = "doei-image-labels-v1"

_BAD_ID_CHARS = re.compile(r"[/\\\x00-\x1f]")


# ----------------------------------------------------------------------------------------- ids
def check_id(image_id: str, where: str) -> str:
    """Return ``image_id`` if it is a safe file stem, else raise naming ``where``.

    An id becomes part of file paths (``JPEGImages/<id>.jpg``, ``<cam_dir>/<id>.npz``), so it must not
    contain a path separator, a control character, be ``.``/``..`` or start with ``.`` (hidden and
    temporary files), or have surrounding whitespace; otherwise a list could make us read or
    write outside the dataset folder.
    """
    if not isinstance(image_id, str) or not image_id:
        raise DoeiError(f"{where}: empty image id")
    if image_id != image_id.strip() or _BAD_ID_CHARS.search(image_id) or image_id.startswith("."):
        raise DoeiError(f"{where}: image id {image_id!r} is not a plain file name (no '/', '\\', '..', "
                        "leading '.', spaces at the ends or control characters)")
    return image_id


def check_unique(ids: Sequence[str], where: str) -> None:
    """Raise naming the first id that occurs twice in ``ids``."""
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DoeiError(f"{where}: duplicate image id {i!r}")
        seen.add(i)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Read an id list: one id per line, blank lines skipped, order kept.

    Also accepts the PSA/MCTformer list form ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``
    (the first field's file stem is the id). Raises on a missing/empty file, a duplicate id or an
    unsafe id.
    """
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: id list not found")
    text = read_text(path, what="id list")
    ids: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        if first.startswith("/JPEGImages/"):
            first = Path(first).stem
        ids.append(check_id(first, f"{path}:{n}"))
    if not ids:
        raise DoeiError(f"{path}: id list is empty (expected one image id per line)")
    check_unique(ids, str(path))
    return ids


def find_image_file(folder: Path, image_id: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path:
    """``folder/<image_id><ext>`` for the first extension that exists; raise naming the id if none."""
    for ext in extensions:
        p = folder / f"{image_id}{ext}"
        if p.is_file():
            return p
    raise DoeiError(f"{folder}/{image_id}{extensions[0]}: image file not found for id {image_id!r} "
                    f"(tried {', '.join(extensions)})")


# -------------------------------------------------------------------------------------- images
# the largest image any reader decodes: Pillow's decompression-bomb guard (89.5 megapixels), or the
# environment's DOEI_MAX_IMAGE_PIXELS; a larger one is one line naming it (Pillow's warning silenced into it)
MAX_IMAGE_PIXELS = int(os.environ.get("DOEI_MAX_IMAGE_PIXELS", "0") or 0) or 89_478_485


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """``Image.open`` (header only) with the size limit: an image that declares more than
    :data:`MAX_IMAGE_PIXELS` is a one-line DoeiError (no Pillow warning on stderr); the caller decodes."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None    # our limit, checked below
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise DoeiError(f"{path}: {what} declares {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                        f"{MAX_IMAGE_PIXELS / 1e6:.1f} (set DOEI_MAX_IMAGE_PIXELS to allow larger images)")
    return img


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DoeiError(f"{path}: {what} file not found")
    try:
        img = open_image(path, what)
        img.load()  # decode now: truncated/corrupt files fail here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DoeiError(f"{path}: unreadable {what} ({e.__class__.__name__}: {e})") from None
    return img


def _scale_wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float gray pixels -> uint8 (16-bit range 0..65535 is divided by 257)."""
    a = arr.astype(np.float64)
    if mode == "F":
        a = a * 255.0 if (a.size and np.nanmax(a) <= 1.0) else a
    else:  # 'I;16*' and 'I' (how Pillow opens 16-bit grayscale PNG/TIFF)
        a = a / 257.0
    return np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image -> ``uint8 [H, W, 3]`` RGB.

    Palette/L/1/CMYK/YCbCr/LAB/HSV use PIL's conversion; RGBA, LA and PA drop the alpha channel (no
    compositing, so the colour under a transparent pixel is kept as stored); 16-bit and 32-bit
    grayscale are scaled from 0..65535 to 0..255 (PIL's own conversion would clip them at 255).
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        g = _scale_wide_to_uint8(np.asarray(img), mode)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("LA", "La"):
        g = np.asarray(img, dtype=np.uint8)[..., 0]
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "PA":
        img = img.convert("RGBA")
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB; raise a one-line error if missing/unreadable.

    EXIF orientation is NOT applied (as in the official VOC/COCO loaders), so masks drawn on the
    stored pixel grid stay aligned.
    """
    path = Path(path)
    return to_rgb_array(_open(path, "image"))


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` from the file header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: image file not found")
    try:
        with open_image(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DoeiError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
    return h, w


# --------------------------------------------------------------------------------------- masks
def voc_palette() -> np.ndarray:
    """The standard PASCAL VOC colour map, ``uint8 [256, 3]`` (index 255 = (224, 224, 192))."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):  # 8 iterations over bit planes, vectorised over the 256 indices
        for ch in range(3):
            pal[:, ch] |= ((idx >> (3 * bit + ch)) & 1) << (7 - bit)
    return pal.astype(np.uint8)


def decode_colour_mask(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map a VOC-palette-coloured RGB mask ``[H, W, 3]`` back to indices ``[H, W]``; unknown colours raise."""
    pal = voc_palette().astype(np.int64)
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = np.full(1 << 24, -1, dtype=np.int16)
    lut[pal_key[::-1]] = np.arange(255, -1, -1)  # first index wins for (impossible) duplicates
    out = lut[key]
    if (out < 0).any():
        y, x = np.argwhere(out < 0)[0]
        raise DoeiError(f"{path}: RGB mask colour {tuple(int(v) for v in rgb[y, x])} at (y={y}, x={x}) "
                        "is not a VOC palette colour (expected a single-channel index PNG)")
    return out.astype(np.uint8)


def read_mask(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Read a ground-truth label map as ``uint8 [H, W]`` and check its values.

    Accepts palette ('P') and grayscale ('L') PNGs (the stored index is the label), 16-bit grayscale
    (values must fit 0..255) and RGB/RGBA masks coloured with the VOC palette. With ``num_classes``
    (foreground classes) every value must be in ``0..num_classes`` or 255.
    """
    path = Path(path)
    img = _open(path, "mask")
    if img.mode in ("P", "L", "1"):
        m = np.asarray(img if img.mode != "1" else img.convert("L"), dtype=np.uint8)
        if img.mode == "1":
            m = (m > 0).astype(np.uint8)
    elif img.mode.startswith("I"):
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 255):
            raise DoeiError(f"{path}: mask value {int(a.max() if a.max() > 255 else a.min())} does not fit 0..255")
        m = a.astype(np.uint8)
    elif img.mode in ("RGB", "RGBA"):
        m = decode_colour_mask(np.asarray(img.convert("RGB"), dtype=np.uint8), path)
    else:
        raise DoeiError(f"{path}: mask mode {img.mode!r} not supported (expected a single-channel PNG)")
    if num_classes is not None:
        check_mask_values(m, num_classes, str(path))
    return np.ascontiguousarray(m)


def check_mask_values(mask: np.ndarray, num_classes: int, where: str) -> None:
    """Raise if ``mask`` holds a value outside ``0..num_classes`` and not 255."""
    bad = (mask > num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        v = int(mask[bad].max())
        raise DoeiError(f"{where}: label {v} outside 0..{num_classes} (or {IGNORE_INDEX})")


def classes_in_mask(mask: np.ndarray) -> tuple[int, ...]:
    """Sorted 0-based foreground classes present in a label map (values 1.. minus 1; 0 and 255 skipped)."""
    present = np.flatnonzero(np.bincount(mask.reshape(-1), minlength=256))
    return tuple(int(v) - 1 for v in present if 0 < v < IGNORE_INDEX)


# -------------------------------------------------------------------------------------- labels
def multi_hot(classes: Iterable[int], num_classes: int) -> np.ndarray:
    """0-based class indices -> ``float32 [num_classes]`` vector with ones at those indices."""
    v = np.zeros(num_classes, dtype=np.float32)
    idx = np.fromiter(classes, dtype=np.int64)
    v[idx] = 1.0
    return v


def check_label(classes: Iterable, num_classes: int, where: str) -> tuple[int, ...]:
    """Validate one image's class list -> sorted unique tuple of ints in ``0..num_classes-1``."""
    out = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise DoeiError(f"{where}: class index {c!r} is not an integer")
        if not 0 <= int(c) < num_classes:
            raise DoeiError(f"{where}: class index {int(c)} outside 0..{num_classes - 1}")
        out.append(int(c))
    return tuple(sorted(set(out)))


def read_labels_json(path: str | os.PathLike, num_classes: int,
                     class_names: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Read an image-level labels JSON -> ``{id: sorted 0-based fg classes}``.

    Two forms are accepted: the bare mapping ``{"2007_000032": [0, 14], ...}`` and the project's file
    ``{"format": "doei-image-labels-v1", "classes": [...names...], "labels": {...}}`` written by
    :func:`write_labels_json` (``doei labels``). When both the file and the caller name the classes,
    they must agree.
    """
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: labels file not found")
    text = read_text(path, what="labels file")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DoeiError(f"{path}: not a readable JSON file ({e.__class__.__name__}: {e})") from None
    if isinstance(obj, dict) and "labels" in obj and isinstance(obj.get("labels"), dict):
        names = obj.get("classes")
        if names is not None and class_names is not None and list(names) != list(class_names):
            raise DoeiError(f"{path}: class names {list(names)[:3]}... differ from the dataset's "
                            f"{list(class_names)[:3]}...")
        mapping = obj["labels"]
    elif isinstance(obj, dict):
        mapping = obj
    else:
        raise DoeiError(f"{path}: expected a JSON object {{id: [class indices]}}")
    out: dict[str, tuple[int, ...]] = {}
    for k, v in mapping.items():
        check_id(k, str(path))
        if not isinstance(v, list):
            raise DoeiError(f"{path}: labels of {k!r} must be a list of class indices, got {v!r}")
        out[k] = check_label(v, num_classes, f"{path}: {k}")
    return out


def write_labels_json(path: str | os.PathLike, labels: Mapping[str, Sequence[int]],
                      class_names: Sequence[str], source: str) -> None:
    """Write the project's labels file atomically (ids sorted, classes 0-based foreground)."""
    atomic_write_json(path, {
        "format": LABELS_FORMAT,
        "source": source,
        "classes": list(class_names),
        "labels": {k: [int(c) for c in labels[k]] for k in sorted(labels)},
    })


def read_cls_labels_npy(path: str | os.PathLike, num_classes: int,
                        trust_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Read the official ``cls_labels.npy`` (a pickled dict ``id -> float [C]`` vector).

    Loading it unpickles arbitrary objects, so it is refused unless ``trust_pickle=True`` (CLI:
    ``--trust-pickle``). Keys ending in ``.jpg`` (MCTformer's COCO files) are stripped.
    """
    path = Path(path)
    if not trust_pickle:
        raise DoeiError(f"{path}: reading a .npy label dict needs pickle; pass trust_pickle=True "
                        "(--trust-pickle) only for a file you trust, or convert it once with `doei labels`")
    if not path.is_file():
        raise DoeiError(f"{path}: labels file not found")
    try:
        obj = np.load(path, allow_pickle=True)
        d = obj.item() if obj.dtype == object and obj.shape == () else None
    except (OSError, ValueError, EOFError) as e:
        raise DoeiError(f"{path}: unreadable .npy ({e.__class__.__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DoeiError(f"{path}: expected a dict {{id: {num_classes}-vector}} saved with np.save")
    out: dict[str, tuple[int, ...]] = {}
    for k, v in d.items():
        key = str(k)[:-4] if str(k).endswith(".jpg") else str(k)
        check_id(key, str(path))
        vec = np.asarray(v).reshape(-1)
        if vec.shape[0] != num_classes:
            raise DoeiError(f"{path}: label vector of {key!r} has {vec.shape[0]} entries, expected {num_classes}")
        out[key] = tuple(int(c) for c in np.flatnonzero(vec > 0.5))
    return out


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped), or a JSON list; must be unique and non-empty.

    The names are FOREGROUND classes (do not list 'background').
    """
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: class names file not found")
    text = read_text(path, what="class names file")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise DoeiError(f"{path}: not valid JSON ({e})") from None
        if isinstance(names, dict) and "classes" in names:
            names = names["classes"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DoeiError(f"{path}: expected a JSON list of class-name strings")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise DoeiError(f"{path}: no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DoeiError(f"{path}: duplicate class name {dup!r}")
    if len(names) > 254:
        raise DoeiError(f"{path}: {len(names)} classes do not fit a uint8 mask (at most 254)")
    return names
