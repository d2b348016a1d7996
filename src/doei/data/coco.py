"""MS COCO 2014 for WSSS: 80 classes, image-level labels from the instances JSON, PNG ground truth.

Class indices: COCO's 80 category ids (1..90 with 11 gaps) map to 0-based foreground indices 0..79 in
ascending id order (:data:`COCO_CATEGORY_IDS`); masks store ``index + 1`` (1..80), 0 background,
255 ignore.

Image ids are the image file stems (``COCO_train2014_000000000009``), as in MCTformer's
``coco/train_id.txt``. Which images (see :func:`coco_image_ids`):

* ``ids="annotated"`` - images with at least one annotation of the 80 classes (82,081 train2014 /
  40,137 val2014): the ones that have an image-level label.
* ``ids="all"`` - every image in the JSON (82,783 / 40,504; MCTformer's lists), unannotated images
  with an empty label and an all-background mask.

Layout (all overridable): ``root/{train2014,val2014}/`` images, ``root/annotations/instances_<split>.json``,
``root/SegmentationClass/<split>/<id>.png`` masks written by ``doei coco-masks``, and optionally a
labels file written by ``doei labels`` (``root/cls_labels_<split>.json``) which avoids parsing the big
JSON on every start.

Mask rasterisation rule (``render_mask``): instances are painted from the largest area to the
smallest, so where instances overlap the SMALLER one wins (it is usually the one in front, e.g. a
remote on a couch); ties keep annotation order (later wins). Crowd regions (``iscrowd=1``) are
``255`` (ignore) wherever no non-crowd instance covers them (``crowd="ignore"``, default), or painted
with their class like the others (``crowd="class"``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from doei.data.common import (IGNORE_INDEX, check_id, check_label, find_image_file, read_cls_labels_npy,
                              read_labels_json)
from doei.data.dataset import ClassificationDataset, ImageRecord, Transform
from doei.errors import DoeiError

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# The 80 category ids used by the instances JSON (91 ids were defined, 11 never annotated).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
CATEGORY_TO_INDEX: dict[int, int] = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
COCO_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "train2014": {"all": 82783, "annotated": 82081},
    "val2014": {"all": 40504, "annotated": 40137},
}


def category_lut() -> np.ndarray:
    """int64 [91]: COCO category id -> 0-based class index, -1 for the 11 unused ids (vectorised mapping)."""
    lut = np.full(91, -1, dtype=np.int64)
    lut[list(COCO_CATEGORY_IDS)] = np.arange(80)
    return lut


def load_coco_api(ann_file: str | Path) -> Any:
    """``pycocotools.coco.COCO`` of an instances JSON, with its categories checked against the 80 classes."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DoeiError(f"{ann_file}: instances JSON not found")
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DoeiError("pycocotools is not installed (pip install 'doei[coco]')") from None
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            api = COCO(str(ann_file))
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DoeiError(f"{ann_file}: not a COCO instances JSON ({e.__class__.__name__}: {e})") from None
    if "images" not in api.dataset or "annotations" not in api.dataset:
        raise DoeiError(f"{ann_file}: missing 'images' or 'annotations' (expected a COCO instances JSON)")
    for cat in api.dataset.get("categories", []):
        cid, name = cat.get("id"), cat.get("name")
        if cid not in CATEGORY_TO_INDEX:
            raise DoeiError(f"{ann_file}: category id {cid!r} ({name!r}) is not one of the 80 COCO classes")
        if name is not None and name != COCO_CLASSES[CATEGORY_TO_INDEX[cid]]:
            raise DoeiError(f"{ann_file}: category id {cid} is named {name!r}, expected "
                            f"{COCO_CLASSES[CATEGORY_TO_INDEX[cid]]!r}")
    for ann in api.dataset["annotations"]:
        if ann.get("category_id") not in CATEGORY_TO_INDEX:
            raise DoeiError(f"{ann_file}: annotation {ann.get('id')} has category_id "
                            f"{ann.get('category_id')!r} outside the 80 COCO classes")
        if ann.get("image_id") not in api.imgs:
            raise DoeiError(f"{ann_file}: annotation {ann.get('id')} refers to unknown image_id {ann.get('image_id')!r}")
    return api


def image_key(img: dict, ann_file: Path | str) -> str:
    """The project's id of a COCO image entry: its file-name stem (checked to be a safe id)."""
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        raise DoeiError(f"{ann_file}: image {img.get('id')!r} has no file_name")
    return check_id(Path(name).stem if "/" not in name else name, f"{ann_file}: image {img.get('id')}")


def coco_image_ids(api: Any, ids: str = "annotated") -> list[int]:
    """Numeric image ids in ascending order: ``"annotated"`` (>=1 annotation) or ``"all"``."""
    if ids == "all":
        return sorted(api.imgs)
    if ids == "annotated":
        return sorted(i for i in api.imgs if api.imgToAnns.get(i))
    raise DoeiError(f"ids {ids!r} unknown (expected 'annotated' or 'all')")


def coco_labels(api: Any, image_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """``{numeric image id: sorted 0-based classes}`` (crowd annotations count: the class is present)."""
    return {i: tuple(sorted({CATEGORY_TO_INDEX[a["category_id"]] for a in api.imgToAnns.get(i, [])}))
            for i in image_ids}


def render_mask(api: Any, image_id: int, crowd: str = "ignore") -> np.ndarray:
    """uint8 [H, W] label map of one image (0 background, 1..80, 255 crowd) - rule in the module docstring."""
    if crowd not in ("ignore", "class"):
        raise DoeiError(f"crowd {crowd!r} unknown (expected 'ignore' or 'class')")
    img = api.imgs[image_id]
    h, w = int(img["height"]), int(img["width"])
    mask = np.zeros((h, w), dtype=np.uint8)
    anns = list(api.imgToAnns.get(image_id, []))
    if crowd == "ignore":
        for a in (a for a in anns if a.get("iscrowd", 0)):
            mask[api.annToMask(a).astype(bool)] = IGNORE_INDEX
        anns = [a for a in anns if not a.get("iscrowd", 0)]
    order = sorted(range(len(anns)), key=lambda k: (-float(anns[k].get("area", 0.0)), k))
    for k in order:
        a = anns[k]
        m = api.annToMask(a)
        if m.shape != (h, w):
            raise DoeiError(f"annotation {a.get('id')}: mask {m.shape} differs from image size {(h, w)}")
        mask[m.astype(bool)] = CATEGORY_TO_INDEX[a["category_id"]] + 1
    return mask


def mask_content_hash(image_id: str, mask: np.ndarray) -> bytes:
    """sha256 of ``id``, shape and raw pixels: identical for identical masks whatever the PNG encoder."""
    h = hashlib.sha256()
    h.update(image_id.encode("utf-8") + b"\0")
    h.update(np.asarray(mask.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.digest()


def coco_records(image_dir: str | Path, ann_file: str | Path | None = None, *, ids: str = "annotated",
                 labels_file: str | Path | None = None, id_list: Sequence[str] | None = None,
                 trust_pickle: bool = False, mask_dir: str | Path | None = None,
                 require_masks: bool = False) -> tuple[list[ImageRecord], str]:
    """Records from a labels file (fast) or the instances JSON; see :func:`coco_dataset`."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DoeiError(f"{image_dir}: COCO image folder not found")
    if labels_file is not None:
        lf = Path(labels_file)
        table = (read_cls_labels_npy(lf, 80, trust_pickle) if lf.suffix == ".npy"
                 else read_labels_json(lf, 80, COCO_CLASSES))
        keys = list(id_list) if id_list is not None else sorted(
            table, key=lambda k: (0, int(k.rsplit("_", 1)[-1])) if k.rsplit("_", 1)[-1].isdigit() else (1, k))
        if ids == "annotated" and id_list is None:
            keys = [k for k in keys if table[k]]
        missing = [k for k in keys if k not in table]
        if missing:
            raise DoeiError(f"{lf}: no labels for image id {missing[0]!r} ({len(missing)} ids missing)")
        entries = [(k, table[k]) for k in keys]
        desc = f"file {lf}"
    elif ann_file is not None:
        api = load_coco_api(ann_file)
        nums = coco_image_ids(api, ids)
        lab = coco_labels(api, nums)
        entries = [(image_key(api.imgs[n], ann_file), lab[n]) for n in nums]
        if id_list is not None:
            by_key = dict(entries)
            missing = [k for k in id_list if k not in by_key]
            if missing:
                raise DoeiError(f"{ann_file}: image id {missing[0]!r} of the id list is not in the JSON"
                                f"{' (or has no annotation)' if ids == 'annotated' else ''}")
            entries = [(k, by_key[k]) for k in id_list]
        desc = f"instances {ann_file} ({ids} ids)"
    else:
        raise DoeiError("COCO needs an instances JSON (ann_file) or a labels file")
    mdir = Path(mask_dir) if mask_dir is not None else None
    if mdir is not None and not mdir.is_dir():
        if require_masks:
            raise DoeiError(f"{mdir}: mask folder not found (run `doei coco-masks`)")
        mdir = None
    records = []
    for k, classes in entries:
        mp = mdir / f"{k}.png" if mdir is not None else None
        if mp is not None and not mp.is_file():
            mp = None
        if mp is None and require_masks:
            raise DoeiError(f"{mdir}/{k}.png: ground-truth mask not found for id {k!r}")
        records.append(ImageRecord(k, find_image_file(image_dir, k), check_label(classes, 80, k), mp))
    return records, desc


def coco_dataset(root: str | Path, split: str = "train2014", *, transform: Transform | None = None,
                 ids: str = "annotated", image_dir: str | Path | None = None, ann_file: str | Path | None = None,
                 labels_file: str | Path | None = None, mask_dir: str | Path | None = None,
                 id_list: Sequence[str] | None = None, trust_pickle: bool = False,
                 require_masks: bool = False) -> ClassificationDataset:
    """A :class:`ClassificationDataset` over COCO 2014 ``split`` (``train2014``/``val2014``, or ``train``/``val``).

    Labels come from ``labels_file`` if given, else ``root/cls_labels_<split>.json`` if it exists,
    else the instances JSON (parsed with pycocotools, ~20 s for train2014).
    """
    root = Path(root)
    split = {"train": "train2014", "val": "val2014"}.get(split, split)
    check_id(split, "COCO split")
    image_dir = Path(image_dir) if image_dir is not None else root / split
    ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}.json"
    if labels_file is None and (root / f"cls_labels_{split}.json").is_file():
        labels_file = root / f"cls_labels_{split}.json"
    if mask_dir is None and (root / "SegmentationClass" / split).is_dir():
        mask_dir = root / "SegmentationClass" / split
    records, desc = coco_records(image_dir, ann_file if labels_file is None else None, ids=ids,
                                 labels_file=labels_file, id_list=id_list, trust_pickle=trust_pickle,
                                 mask_dir=mask_dir, require_masks=require_masks)
    return ClassificationDataset(records, COCO_CLASSES, transform=transform, name=f"coco:{split}",
                                 label_source=desc)
