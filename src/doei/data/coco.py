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
``root/SegmentationClass/<split>/<id>.png`` masks written by ``doei coco-masks`` (``gt_source="stuff"``:
``root/SegmentationClassStuff/<split>/``, COCO-Stuff's ground truth, :mod:`doei.data.coco_stuff`), and optionally a
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
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from doei.data.common import (IGNORE_INDEX, check_id, check_label, find_image_file, read_cls_labels_npy,
                              read_labels_json)
from doei.data.build import register_dataset
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rle_string_counts(s: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (``counts`` of ``{"size", "counts": str}``).

    Format (COCO mask API): each run length is written in 5-bit groups, low bits first, one character
    per group (``chr(48 + group)``); bit 0x20 of a group says another group follows, bit 0x10 of the
    last group is the sign; from the third run on, the value stored is the difference to the run two
    places earlier. Raises ``ValueError`` on a character outside ``chr(48)..chr(111)`` or a cut-off run.
    """
    counts: list[int] = []
    pos, n = 0, len(s)
    while pos < n:
        x, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise ValueError("string ends inside a run length")
            c = ord(s[pos]) - 48
            if not 0 <= c <= 63:
                raise ValueError(f"character {s[pos]!r} outside '0'..'o'")
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x -= 1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_segmentation(seg: Any, h: int, w: int, where: str) -> None:
    """Polygons ``[[x1, y1, x2, y2, x3, y3, ...], ...]`` or RLE ``{"size": [h, w], "counts": ...}``."""
    if isinstance(seg, list):
        if not seg:
            raise DoeiError(f"{where}: empty segmentation (expected a list of polygons or an RLE dict)")
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                raise DoeiError(f"{where}: polygon {j} has {n} coordinates (expected an even number >= 6: "
                                "x1,y1,x2,y2,x3,y3,...)")
            try:
                total = sum(poly)
            except TypeError:
                total = None
            if not _is_number(total):  # NaN/Inf anywhere makes the sum non-finite; str/None/list: TypeError
                bad = next((v for v in poly if not _is_number(v)), total)
                raise DoeiError(f"{where}: polygon {j} has coordinate {bad!r} (expected finite numbers)")
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise DoeiError(f"{where}: segmentation is neither a list of polygons nor an RLE dict with 'size' "
                        f"and 'counts' (got {type(seg).__name__})")
    size, counts = seg["size"], seg["counts"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size) or size != [h, w]:
        raise DoeiError(f"{where}: RLE size {size!r} differs from the image's [height, width] {[h, w]}")
    if isinstance(counts, str):
        try:
            runs = rle_string_counts(counts)
        except ValueError as e:
            raise DoeiError(f"{where}: malformed compressed RLE counts ({e})") from None
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = counts
    else:
        raise DoeiError(f"{where}: RLE counts must be a list of integers or a compressed string "
                        f"(got {type(counts).__name__})")
    if any(r < 0 for r in runs):
        raise DoeiError(f"{where}: RLE has a negative run length {min(runs)} (expected run lengths >= 0)")
    if sum(runs) != h * w:
        raise DoeiError(f"{where}: RLE run lengths sum to {sum(runs)}, expected height*width = {h}*{w} = {h * w}")


def check_instances(d: Any, ann_file: str | Path) -> None:
    """Validate a parsed instances JSON before pycocotools indexes or rasterises any of it.

    Checks the structure (``images``, ``annotations``, a non-empty ``categories`` list of the 80 COCO
    classes), every image (unique integer id, positive integer width/height) and every annotation
    (unique id, known ``image_id`` and ``category_id``, ``bbox`` = 4 finite numbers with width and
    height >= 0, finite ``area`` >= 0, ``iscrowd`` 0/1, a segmentation that pycocotools can rasterise
    exactly: polygons of >= 3 finite points, or an RLE of the image's size whose runs cover it).
    Raises a one-line :class:`DoeiError` naming the file, the image or annotation id and what was expected.
    """
    if not isinstance(d, dict):
        raise DoeiError(f"{ann_file}: top level is a {type(d).__name__}, expected a COCO instances JSON object")
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise DoeiError(f"{ann_file}: missing {key!r} (expected a COCO instances JSON with 'images', "
                            "'annotations' and 'categories')")
        if not isinstance(d[key], list):
            raise DoeiError(f"{ann_file}: {key!r} is a {type(d[key]).__name__}, expected a list")
    if not d["categories"]:
        raise DoeiError(f"{ann_file}: 'categories' is empty (expected the COCO categories the annotations use)")
    listed: set[int] = set()
    for cat in d["categories"]:
        cid, name = (cat.get("id"), cat.get("name")) if isinstance(cat, dict) else (None, None)
        if not isinstance(cat, dict) or not _is_int(cid) or cid not in CATEGORY_TO_INDEX:
            raise DoeiError(f"{ann_file}: category id {cid!r} ({name!r}) is not one of the 80 COCO classes")
        if name is not None and name != COCO_CLASSES[CATEGORY_TO_INDEX[cid]]:
            raise DoeiError(f"{ann_file}: category id {cid} is named {name!r}, expected "
                            f"{COCO_CLASSES[CATEGORY_TO_INDEX[cid]]!r}")
        listed.add(cid)
    sizes: dict[int, tuple[int, int]] = {}
    for img in d["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if not _is_int(iid):
            raise DoeiError(f"{ann_file}: image entry with id {iid!r} (expected an object with an integer 'id')")
        if iid in sizes:
            raise DoeiError(f"{ann_file}: image id {iid} appears twice in 'images'")
        h, w = img.get("height"), img.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise DoeiError(f"{ann_file}: image {iid} has height {h!r} and width {w!r} (expected positive integers)")
        sizes[iid] = (h, w)
    seen: set[Any] = set()
    for ann in d["annotations"]:
        if not isinstance(ann, dict):
            raise DoeiError(f"{ann_file}: annotation entry is a {type(ann).__name__}, expected an object")
        aid = ann.get("id")
        if not _is_int(aid):
            raise DoeiError(f"{ann_file}: annotation with id {aid!r} (expected an integer 'id')")
        if aid in seen:
            raise DoeiError(f"{ann_file}: annotation id {aid} appears twice")
        seen.add(aid)
        cid, iid = ann.get("category_id"), ann.get("image_id")
        if not _is_int(cid) or cid not in CATEGORY_TO_INDEX:
            raise DoeiError(f"{ann_file}: annotation {aid} has category_id {cid!r} outside the 80 COCO classes")
        if cid not in listed:
            raise DoeiError(f"{ann_file}: annotation {aid} has category_id {cid} that is not in the file's "
                            f"'categories' (listed: {sorted(listed)})")
        if not _is_int(iid) or iid not in sizes:
            raise DoeiError(f"{ann_file}: annotation {aid} refers to unknown image_id {iid!r}")
        where = f"{ann_file}: annotation {aid} (image {iid})"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise DoeiError(f"{where}: bbox {bbox!r} (expected [x, y, width, height], finite, width and height >= 0)")
        area = ann.get("area", 0.0)
        if not _is_number(area) or area < 0:
            raise DoeiError(f"{where}: area {area!r} (expected a finite number >= 0)")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DoeiError(f"{where}: iscrowd {ann.get('iscrowd')!r} (expected 0 or 1)")
        if "segmentation" not in ann:
            raise DoeiError(f"{where}: no 'segmentation' (expected polygons or an RLE dict)")
        _check_segmentation(ann["segmentation"], *sizes[iid], where)


def load_coco_api(ann_file: str | Path) -> Any:
    """``pycocotools.coco.COCO`` of an instances JSON, validated first by :func:`check_instances`."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DoeiError(f"{ann_file}: instances JSON not found")
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DoeiError("pycocotools is not installed (pip install 'doei[coco]')") from None
    import contextlib
    import io
    import json

    try:
        with open(ann_file, "rb") as f:
            d = json.load(f)
    except (ValueError, OSError, RecursionError) as e:
        raise DoeiError(f"{ann_file}: not a COCO instances JSON ({e.__class__.__name__}: {e})") from None
    check_instances(d, ann_file)
    api = COCO()
    api.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api.createIndex()
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


def check_mask_source(mask_dir: Path, gt_source: str) -> None:
    """A ``doei coco-masks`` folder's manifest must name ``gt_source`` (manifests before ``--source``:
    instances); a folder without a manifest is accepted as it is."""
    import json

    man = Path(mask_dir) / "manifest.json"
    if not man.is_file():
        return
    try:
        d = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DoeiError(f"{man}: unreadable ({type(e).__name__}); expected doei coco-masks' manifest") from None
    found = (d.get("source") or "instances") if isinstance(d, dict) else None
    if found != gt_source:
        raise DoeiError(f"{man}: the masks in {mask_dir} come from source {found!r}, the config asks for "
                        f"gt_source {gt_source!r} (doei coco-masks --source {gt_source})")


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


# config_options=(): a config's data.labels_file / data.mask_dir have never been passed to COCO (its
# loader finds root/cls_labels_<split>.json and root/SegmentationClass/<split>/ itself); kept so by #14's
# behaviour-preserving refactor. Dropping the argument would make a data section's options reach COCO.
@register_dataset("coco", options=("ids", "image_dir", "ann_file", "labels_file", "mask_dir", "id_list",
                                   "trust_pickle", "require_masks", "gt_source"),
                  config_options=("gt_source",), default_split="train2014", class_names=COCO_CLASSES)
def coco_dataset(root: str | Path, split: str = "train2014", *, transform: Transform | None = None,
                 ids: str = "annotated", image_dir: str | Path | None = None, ann_file: str | Path | None = None,
                 labels_file: str | Path | None = None, mask_dir: str | Path | None = None,
                 id_list: Sequence[str] | None = None, trust_pickle: bool = False,
                 require_masks: bool = False, gt_source: str | None = None) -> ClassificationDataset:
    """A :class:`ClassificationDataset` over COCO 2014 ``split`` (``train2014``/``val2014``, or ``train``/``val``).

    Labels come from ``labels_file`` if given, else ``root/cls_labels_<split>.json`` if it exists,
    else the instances JSON (parsed with pycocotools, ~20 s for train2014). Masks: ``mask_dir``, else
    ``root/SegmentationClass/<split>`` (``gt_source`` unset or ``"instances"``) or
    ``root/SegmentationClassStuff/<split>`` (``"stuff"``); with ``gt_source`` set, a ``manifest.json`` of
    ``doei coco-masks`` in the folder must name that source (one line otherwise).
    """
    root = Path(root)
    split = {"train": "train2014", "val": "val2014"}.get(split, split)
    check_id(split, "COCO split")
    image_dir = Path(image_dir) if image_dir is not None else root / split
    ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}.json"
    if labels_file is None and (root / f"cls_labels_{split}.json").is_file():
        labels_file = root / f"cls_labels_{split}.json"
    if gt_source not in (None, "instances", "stuff"):
        raise DoeiError(f"COCO gt_source {gt_source!r}: expected 'instances' or 'stuff'")
    sub = "SegmentationClassStuff" if gt_source == "stuff" else "SegmentationClass"
    if mask_dir is None and (root / sub / split).is_dir():
        mask_dir = root / sub / split
    if gt_source is not None and mask_dir is not None:
        check_mask_source(Path(mask_dir), gt_source)
    records, desc = coco_records(image_dir, ann_file if labels_file is None else None, ids=ids,
                                 labels_file=labels_file, id_list=id_list, trust_pickle=trust_pickle,
                                 mask_dir=mask_dir, require_masks=require_masks)
    return ClassificationDataset(records, COCO_CLASSES, transform=transform, name=f"coco:{split}",
                                 label_source=desc)
