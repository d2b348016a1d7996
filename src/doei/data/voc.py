"""PASCAL VOC 2012 (and anything written in its layout, e.g. the synthetic benchmark).

Layout under ``root`` (the ``VOC2012`` folder)::

    JPEGImages/<id>.jpg                 images (``<id>.png`` is accepted too; the synthetic set uses it)
    SegmentationClassAug/<id>.png       masks, preferred when the folder exists (SBD-augmented set)
    SegmentationClass/<id>.png          masks otherwise (official 2,913)
    ImageSets/Segmentation/<split>.txt  id lists: train (1,464), val (1,449), trainval, ...
    ImageSets/SegmentationAug/<split>.txt   also searched (train_aug, 10,582, is often kept here)
    Annotations/<id>.xml                object annotations (one source of image-level labels)
    cls_labels.json                     image-level labels written once by ``doei labels``

Image-level labels (``labels=``): ``"auto"`` (default) takes the first that exists of an explicit
``labels_file``, ``root/cls_labels.json``, ``Annotations/`` XML, the masks; ``"xml"``, ``"masks"`` or
``"file"`` force one source. XML labels are every ``<object><name>`` in the file (difficult and
truncated objects included, as PSA's ``make_cls_labels.py`` does); mask labels are the mask values
other than 0 and 255, minus one.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from doei.data.common import (check_label, classes_in_mask, find_image_file, read_cls_labels_npy,
                              read_id_list, read_labels_json, read_mask)
from doei.data.build import register_dataset
from doei.data.dataset import ClassificationDataset, ImageRecord, Transform
from doei.errors import DoeiError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_SPLIT_SIZES: dict[str, int] = {"train_aug": 10582, "train": 1464, "val": 1449}
VOC_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".png")
LABELS_FILENAME = "cls_labels.json"
_SPLIT_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug")


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DoeiError(f"{root}: dataset folder not found")
    if not (root / "JPEGImages").is_dir():
        raise DoeiError(f"{root}: no JPEGImages/ folder (expected the VOC2012 layout)")
    return root


def available_splits(root: str | Path) -> list[str]:
    """Names of the split lists found under ``ImageSets/Segmentation{,Aug}/``."""
    root = Path(root)
    return sorted({p.stem for d in _SPLIT_DIRS if (root / d).is_dir() for p in (root / d).glob("*.txt")})


def split_file(root: str | Path, split: str) -> Path:
    """The id-list file of ``split`` (a split name, or a path to a ``.txt`` list)."""
    root = Path(root)
    p = Path(split)
    if p.suffix == ".txt" and p.is_file():
        return p
    for d in _SPLIT_DIRS:
        f = root / d / f"{split}.txt"
        if f.is_file():
            return f
    avail = available_splits(root)
    raise DoeiError(f"{root}: split {split!r} not found in {' or '.join(_SPLIT_DIRS)} "
                    f"(available: {', '.join(avail) if avail else 'none'})")


def default_mask_dir(root: str | Path) -> Path | None:
    """``SegmentationClassAug/`` if present, else ``SegmentationClass/``, else None."""
    root = Path(root)
    for name in ("SegmentationClassAug", "SegmentationClass"):
        if (root / name).is_dir():
            return root / name
    return None


def labels_from_xml(path: str | Path, class_names: Sequence[str] = VOC_CLASSES) -> tuple[int, ...]:
    """Sorted 0-based classes of every ``<object><name>`` in a VOC annotation XML."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: annotation XML not found")
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise DoeiError(f"{path}: unreadable annotation XML ({e})") from None
    index = {n: i for i, n in enumerate(class_names)}
    out = set()
    for obj in tree.getroot().iter("object"):
        el = obj.find("name")
        name = (el.text or "").strip() if el is not None else ""
        if name not in index:
            raise DoeiError(f"{path}: object name {name!r} is not a class ({', '.join(class_names[:3])}, ...)")
        out.add(index[name])
    return tuple(sorted(out))


def labels_from_masks(mask_dir: Path, ids: Sequence[str], num_classes: int) -> dict[str, tuple[int, ...]]:
    """``{id: classes in mask_dir/<id>.png}`` (reads every mask; slow for 10k images, write a labels file)."""
    return {i: classes_in_mask(read_mask(mask_dir / f"{i}.png", num_classes)) for i in ids}


def load_labels(root: Path, ids: Sequence[str], *, source: str = "auto", labels_file: str | Path | None = None,
                trust_pickle: bool = False, mask_dir: Path | None = None,
                class_names: Sequence[str] = VOC_CLASSES) -> tuple[dict[str, tuple[int, ...]], str]:
    """Image-level labels of ``ids`` from the chosen source -> (``{id: classes}``, description of the source)."""
    c = len(class_names)
    if source == "auto":
        if labels_file is not None or (root / LABELS_FILENAME).is_file():
            source = "file"
        elif (root / "Annotations").is_dir():
            source = "xml"
        else:
            source = "masks"
    if source == "file":
        f = Path(labels_file) if labels_file is not None else root / LABELS_FILENAME
        if f.suffix == ".npy":
            table = read_cls_labels_npy(f, c, trust_pickle=trust_pickle)
        else:
            table = read_labels_json(f, c, class_names)
        missing = [i for i in ids if i not in table]
        if missing:
            raise DoeiError(f"{f}: no labels for image id {missing[0]!r} ({len(missing)} ids missing)")
        return {i: table[i] for i in ids}, f"file {f}"
    if source == "xml":
        return {i: labels_from_xml(root / "Annotations" / f"{i}.xml", class_names) for i in ids}, "xml"
    if source == "masks":
        if mask_dir is None:
            raise DoeiError(f"{root}: labels from masks requested but no SegmentationClass(Aug)/ folder")
        return labels_from_masks(mask_dir, ids, c), f"masks {mask_dir}"
    raise DoeiError(f"labels source {source!r} unknown (expected auto, file, xml or masks)")


def voc_records(root: str | Path, split: str, *, labels: str = "auto", labels_file: str | Path | None = None,
                trust_pickle: bool = False, mask_dir: str | Path | None = None,
                class_names: Sequence[str] = VOC_CLASSES,
                require_masks: bool = False) -> tuple[list[ImageRecord], str]:
    """Validated records of one split + the label-source description (see module docstring)."""
    root = _check_root(Path(root))
    ids = read_id_list(split_file(root, split))
    mdir = Path(mask_dir) if mask_dir is not None else default_mask_dir(root)
    if mask_dir is not None and not mdir.is_dir():
        raise DoeiError(f"{mdir}: mask folder not found")
    table, desc = load_labels(root, ids, source=labels, labels_file=labels_file, trust_pickle=trust_pickle,
                              mask_dir=mdir, class_names=class_names)
    img_dir = root / "JPEGImages"
    records = []
    for i in ids:
        mp = mdir / f"{i}.png" if mdir is not None else None
        if mp is not None and not mp.is_file():
            if require_masks:
                raise DoeiError(f"{mp}: ground-truth mask not found for id {i!r}")
            mp = None
        elif mp is None and require_masks:
            raise DoeiError(f"{root}: no SegmentationClass(Aug)/ folder but masks are required")
        records.append(ImageRecord(i, find_image_file(img_dir, i, VOC_IMAGE_EXTENSIONS),
                                   check_label(table[i], len(class_names), i), mp))
    return records, desc


@register_dataset("voc", options=("labels", "labels_file", "trust_pickle", "mask_dir", "class_names", "require_masks"),
                  default_split="train_aug", class_names=VOC_CLASSES)
def voc_dataset(root: str | Path, split: str, *, transform: Transform | None = None, labels: str = "auto",
                labels_file: str | Path | None = None, trust_pickle: bool = False,
                mask_dir: str | Path | None = None, class_names: Sequence[str] = VOC_CLASSES,
                require_masks: bool = False) -> ClassificationDataset:
    """A :class:`ClassificationDataset` over a VOC-layout split (``train_aug``, ``train``, ``val``, ...)."""
    records, desc = voc_records(root, split, labels=labels, labels_file=labels_file, trust_pickle=trust_pickle,
                                mask_dir=mask_dir, class_names=class_names, require_masks=require_masks)
    return ClassificationDataset(records, class_names, transform=transform, name=f"{root}:{split}",
                                 label_source=desc)
