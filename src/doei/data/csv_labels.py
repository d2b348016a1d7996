"""Image-level labels in one CSV file, as dataset kind ``csv``: ``image,labels[,mask]`` rows.

Layout under ``root`` (the CSV's name and columns are options)::

    labels.csv            header row naming the columns; one row per image:
                          image,labels,mask
                          photos/cat_01.jpg,cat;dog,masks/cat_01.png
                          photos/street.jpg,car,
    classes.txt           optional: the foreground names in index order (else the sorted names the
                          labels column uses)

``image`` and ``mask`` are paths relative to ``root`` (the mask column and each mask are optional;
masks: 0 background, k+1 class k, 255 ignore); ``labels`` holds class names separated by ``;`` (an
empty cell: no foreground class). The id of an image is its file name without the extension and must
be unique. ``split``: None (every row) or an id-list name (``root/<split>.txt``) or ``.txt`` path.
Options: ``csv_file`` (default ``labels.csv``), ``classes_file``, ``require_masks``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from doei.data.build import register_dataset
from doei.data.common import check_id, read_class_names, read_id_list
from doei.data.dataset import ClassificationDataset, ImageRecord, Transform
from doei.errors import DoeiError
from doei.utils.io import read_text


def _rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The CSV's rows as {column: cell} (header names lower-cased) and the header."""
    if not path.is_file():
        raise DoeiError(f"{path}: labels CSV not found")
    rows = list(csv.reader(io.StringIO(read_text(path, what="labels CSV"))))
    if not rows:
        raise DoeiError(f"{path}: empty labels CSV (expected a header 'image,labels[,mask]')")
    header = [h.strip().lower() for h in rows[0]]
    if "image" not in header or "labels" not in header:
        raise DoeiError(f"{path}: header {rows[0]} must name the columns 'image' and 'labels' (and optionally 'mask')")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) > len(header) or len(row) < header.index("labels") + 1:
            raise DoeiError(f"{path}:{n}: expected {len(header)} columns, got {len(row)}")
        out.append({"_line": str(n), **{h: c.strip() for h, c in zip(header, row)}})
    if not out:
        raise DoeiError(f"{path}: no label rows")
    return out, header


def _names_in(cell: str) -> list[str]:
    return [t.strip() for t in cell.split(";") if t.strip()]


def csv_class_names(root: str | Path) -> list[str]:
    """``root/classes.txt`` if present, else the sorted class names used in ``root/labels.csv``."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return read_class_names(root / "classes.txt")
    rows, _ = _rows(root / "labels.csv")
    return sorted({n for r in rows for n in _names_in(r["labels"])})


@register_dataset("csv", options=("csv_file", "classes_file", "require_masks"), class_names=csv_class_names)
def csv_dataset(root: str | Path, split: str | None = None, *, transform: Transform | None = None,
                csv_file: str | Path | None = None, classes_file: str | Path | None = None,
                require_masks: bool = False) -> ClassificationDataset:
    """A :class:`ClassificationDataset` from a labels CSV (format in the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DoeiError(f"{root}: dataset folder not found")
    path = Path(csv_file) if csv_file is not None else root / "labels.csv"
    rows, _ = _rows(path)
    cf = Path(classes_file) if classes_file is not None else root / "classes.txt"
    if classes_file is not None or cf.is_file():
        names = read_class_names(cf)
    else:
        names = sorted({n for r in rows for n in _names_in(r["labels"])})
    index = {n: i for i, n in enumerate(names)}
    by_id: dict[str, ImageRecord] = {}
    for r in rows:
        where = f"{path}:{r['_line']}"
        if not r["image"]:
            raise DoeiError(f"{where}: empty image path")
        image = root / r["image"]
        image_id = check_id(Path(r["image"]).stem, where)
        if image_id in by_id:
            raise DoeiError(f"{where}: image id {image_id!r} (file name without extension) given twice")
        if not image.is_file():
            raise DoeiError(f"{where}: image {image} not found")
        bad = [n for n in _names_in(r["labels"]) if n not in index]
        if bad:
            raise DoeiError(f"{where}: class {bad[0]!r} is not one of the {len(names)} class names ({cf if cf.is_file() else 'the CSV'})")
        mask = root / r["mask"] if r.get("mask") else None
        if mask is not None and not mask.is_file():
            raise DoeiError(f"{where}: mask {mask} not found")
        if require_masks and mask is None:
            raise DoeiError(f"{where}: no mask for {image_id!r} (require_masks)")
        classes = tuple(sorted({index[n] for n in _names_in(r["labels"])}))
        by_id[image_id] = ImageRecord(image_id, image, classes, mask)
    if split is None:
        ids = list(by_id)
    else:
        sf = Path(split) if Path(split).suffix == ".txt" else root / f"{split}.txt"
        ids = read_id_list(sf)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DoeiError(f"{sf}: image id {missing[0]!r} has no row in {path} ({len(missing)} missing)")
    return ClassificationDataset([by_id[i] for i in ids], names, transform=transform, name=f"csv:{split or 'all'}",
                                 label_source=str(path))


__all__ = ["csv_dataset", "csv_class_names"]
