"""COCO ground truth as the paper evaluates it: from COCO-Stuff's ``stuffthingmaps`` PNGs.

The DOEI paper (Supplementary §1) follows Lee et al. (2021c, EPS): only images containing target
classes, ground-truth labels extracted from COCO-Stuff (Caesar et al., CVPR 2018). COCO-Stuff's
``stuffthingmaps_trainval2017.zip`` holds one single-channel PNG per COCO 2017 train/val image
(``train2017/<12-digit id>.png``, ``val2017/...``; COCO 2014 train + val are the same 123,287 images,
split differently), whose pixel values are COCO-Stuff's label ids minus one (the COCO-Stuff README,
"Caffe-compatible stuff-thing maps": "thing+stuff labels cover indices 0-181 and 255 indicates the
'unlabeled' or void class"; ``labels.txt``: 0 unlabeled, 1-91 the COCO thing ids, 92-182 stuff):

* value ``v`` in 0..90 — thing id ``v + 1``, a COCO category id: our class index + 1 (1..80,
  :data:`doei.data.coco.CATEGORY_TO_INDEX`). The 11 ids COCO never annotated (:data:`UNUSED_THING_IDS`)
  cannot occur and are refused;
* 91..181 — the 91 stuff classes: background (0);
* 255 — unlabeled: ignore (255);
* anything else is refused (not a stuffthingmap).

Against the instance rasteriser (:func:`doei.data.coco.render_mask`): here *unlabeled* pixels (neither a
thing nor a stuff class) are 255 and not scored, while the rasteriser makes every pixel no polygon
covers background and marks only crowd regions 255; where the two disagree on a pixel's class, the
scores differ (docs/datasets.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from doei.data.coco import CATEGORY_TO_INDEX, COCO_CATEGORY_IDS
from doei.data.common import IGNORE_INDEX
from doei.errors import DoeiError

# COCO-Stuff labels.txt: the thing ids 1..91 that have no COCO segmentation annotation (the README's list)
UNUSED_THING_IDS: dict[int, str] = {12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate",
                                    66: "mirror", 68: "window", 69: "desk", 71: "door", 83: "blender",
                                    91: "hair brush"}
THING_VALUES = range(0, 91)         # PNG value = thing id - 1
STUFF_VALUES = range(91, 182)       # PNG value = stuff id - 1 (ids 92..182)
UNLABELED = 255


def stuff_lut() -> np.ndarray:
    """uint8 [256]: stuffthingmap value -> our label (0 background, 1..80, 255 ignore); values that must
    not occur (unused thing ids, 182..254) map to 254, which :func:`convert_stuffthingmap` refuses."""
    assert set(COCO_CATEGORY_IDS) | set(UNUSED_THING_IDS) == set(range(1, 92))
    lut = np.full(256, 254, dtype=np.uint8)
    for cid, idx in CATEGORY_TO_INDEX.items():
        lut[cid - 1] = idx + 1
    lut[STUFF_VALUES.start:STUFF_VALUES.stop] = 0
    lut[UNLABELED] = IGNORE_INDEX
    return lut


_LUT = stuff_lut()


def convert_stuffthingmap(values: np.ndarray, where: str = "stuffthingmap") -> np.ndarray:
    """uint8 [H, W] label map (0 background, 1..80 class index + 1, 255 ignore) of a stuffthingmap's
    values ``[H, W]``; a one-line DoeiError naming ``where`` for a value that is not a COCO-Stuff label."""
    v = np.asarray(values)
    if v.ndim != 2 or v.dtype.kind not in "ui":
        raise DoeiError(f"{where}: expected a single-channel integer label map, got shape {v.shape} dtype {v.dtype}")
    if v.size and (int(v.min()) < 0 or int(v.max()) > 255):
        raise DoeiError(f"{where}: value {int(v.min()) if int(v.min()) < 0 else int(v.max())} outside 0..255")
    out = _LUT[v.astype(np.uint8)]
    bad = out == 254
    if bad.any():
        val = int(v[bad].flat[0])
        what = (f"thing id {val + 1} ({UNUSED_THING_IDS[val + 1]}) has no COCO annotation"
                if val + 1 in UNUSED_THING_IDS else "not a COCO-Stuff label (0..181, 255)")
        raise DoeiError(f"{where}: value {val} at {int(bad.sum())} pixels: {what}; is this a COCO-Stuff "
                        "stuffthingmaps PNG?")
    return out


def read_stuffthingmap(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read and convert one stuffthingmap PNG (mode L or P); ``size`` ``(H, W)`` is checked when given."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DoeiError(f"{path}: mode {im.mode}, expected a single-channel (L or P) stuffthingmap PNG")
            values = np.asarray(im)
    except DoeiError:
        raise
    except (OSError, ValueError) as e:
        raise DoeiError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if size is not None and values.shape != tuple(size):
        raise DoeiError(f"{path}: size {values.shape[1]}x{values.shape[0]} differs from the instances JSON's "
                        f"{size[1]}x{size[0]} for this image")
    return convert_stuffthingmap(values, str(path))


def find_stuffthingmap(stuff_dir: str | Path, image_id: int) -> Path:
    """``<stuff_dir>/{train2017,val2017,.}/<12-digit id>.png`` (COCO 2014 ids are COCO 2017 ids)."""
    stuff_dir = Path(stuff_dir)
    name = f"{int(image_id):012d}.png"
    tried = [stuff_dir / sub / name for sub in ("train2017", "val2017", ".")]
    for p in tried:
        if p.is_file():
            return p
    raise DoeiError(f"{stuff_dir}: no stuffthingmap for COCO image {image_id} (looked for train2017/{name}, "
                    f"val2017/{name} and {name})")


__all__ = ["UNUSED_THING_IDS", "THING_VALUES", "STUFF_VALUES", "UNLABELED", "stuff_lut", "convert_stuffthingmap",
           "read_stuffthingmap", "find_stuffthingmap"]
