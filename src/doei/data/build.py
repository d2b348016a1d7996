"""One entry point for every dataset kind: ``build_dataset(kind, root, split, ...)``."""
from __future__ import annotations

from pathlib import Path

from doei.data.dataset import ClassificationDataset, Transform
from doei.errors import DoeiError

DATASET_KINDS: tuple[str, ...] = ("voc", "coco", "folder", "synth")


def build_dataset(kind: str, root: str | Path, split: str | None, *, transform: Transform | None = None,
                  **kwargs) -> ClassificationDataset:
    """A :class:`ClassificationDataset` of ``kind`` (``voc`` | ``coco`` | ``folder`` | ``synth``).

    ``split``: VOC/synth list name (``train_aug``, ``train``, ``val``; synth: ``train``, ``val``) or a
    ``.txt`` path; COCO ``train2014``/``val2014`` (or ``train``/``val``); folder: an id-list name or
    None for every labelled image. Extra keyword arguments go to the kind's loader
    (:func:`doei.data.voc.voc_dataset`, :func:`doei.data.coco.coco_dataset`,
    :func:`doei.data.folder.folder_dataset`), e.g. ``labels_file=``, ``mask_dir=``, ``require_masks=``.
    """
    if kind == "voc":
        from doei.data.voc import voc_dataset

        return voc_dataset(root, split or "train_aug", transform=transform, **kwargs)
    if kind == "synth":
        from doei.data.synth import synth_dataset

        return synth_dataset(root, split or "train", transform=transform, **kwargs)
    if kind == "coco":
        from doei.data.coco import coco_dataset

        return coco_dataset(root, split or "train2014", transform=transform, **kwargs)
    if kind == "folder":
        from doei.data.folder import folder_dataset

        return folder_dataset(root, split, transform=transform, **kwargs)
    raise DoeiError(f"dataset kind {kind!r} unknown (expected {', '.join(DATASET_KINDS)})")


def dataset_class_names(kind: str, root: str | Path | None = None) -> list[str]:
    """Foreground class names of a kind without building the dataset (synth/folder read them from ``root``)."""
    if kind == "voc":
        from doei.data.voc import VOC_CLASSES

        return list(VOC_CLASSES)
    if kind == "coco":
        from doei.data.coco import COCO_CLASSES

        return list(COCO_CLASSES)
    if kind == "synth":
        from doei.data.synth import read_meta

        return list(read_meta(root)["classes"])
    if kind == "folder":
        from doei.data.common import read_class_names

        root = Path(root)
        f = root / "classes.txt" if (root / "classes.txt").is_file() else root / "classes.json"
        return read_class_names(f)
    raise DoeiError(f"dataset kind {kind!r} unknown (expected {', '.join(DATASET_KINDS)})")
