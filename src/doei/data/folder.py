"""A user's own data: a folder of images, a labels file, a class-names list, optional masks.

Layout under ``root`` (every name overridable)::

    images/<id>.<ext>        any PIL-readable image (.jpg .jpeg .png .bmp .tif .tiff .webp)
    classes.txt              foreground class names, one per line (or classes.json: a JSON list)
    labels.csv | labels.json image-level labels
    masks/<id>.png           optional ground truth (0 background, k+1 class k, 255 ignore)
    <split>.txt              optional id lists (``split=None`` uses every id of the labels file)

``labels.csv``: a header row with an id column (``id``, ``image`` or ``filename``; a file name's
extension is dropped) and a ``labels`` column holding class names or 0-based indices separated by
``;`` or spaces (names are matched first; an empty cell = no foreground class)::

    id,labels
    img_001,cat;dog
    img_002,2

``labels.json``: ``{"img_001": [0, 1], ...}`` or the project's labels file (``doei labels``).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from doei.data.common import (check_id, check_label, check_unique, find_image_file, read_class_names,
                              read_id_list, read_labels_json)
from doei.data.build import register_dataset
from doei.data.dataset import ClassificationDataset, ImageRecord, Transform
from doei.errors import DoeiError
from doei.utils.io import read_text

_ID_COLUMNS = ("id", "image", "filename", "file_name", "image_id")


def _parse_cell(cell: str, index: dict[str, int], num_classes: int, where: str) -> list[int]:
    """Class names or 0-based indices separated by ';' (or by spaces when there is no ';')."""
    toks = cell.split(";") if ";" in cell else cell.split()
    out = []
    for tok in (t.strip() for t in toks if t.strip()):
        if tok in index:
            out.append(index[tok])
        elif tok.lstrip("-").isdigit():
            k = int(tok)
            if not 0 <= k < num_classes:
                raise DoeiError(f"{where}: class index {k} outside 0..{num_classes - 1}")
            out.append(k)
        else:
            raise DoeiError(f"{where}: {tok!r} is neither a class name nor a 0-based class index")
    return out


def read_labels_csv(path: str | Path, class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``{id: sorted classes}`` from a labels CSV (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: labels file not found")
    index = {n: i for i, n in enumerate(class_names)}
    rows = list(csv.reader(io.StringIO(read_text(path, what="labels CSV"))))   # BOM, CRLF, not UTF-8: one rule
    if not rows:
        raise DoeiError(f"{path}: empty labels CSV (expected a header 'id,labels')")
    header = [h.strip().lower() for h in rows[0]]
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    if id_col is None or "labels" not in header:
        raise DoeiError(f"{path}: header {rows[0]} must name an id column ({'/'.join(_ID_COLUMNS)}) and 'labels'")
    lab_col = header.index("labels")
    out: dict[str, tuple[int, ...]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{n}"
        if len(row) <= max(id_col, lab_col):
            raise DoeiError(f"{where}: expected {len(header)} columns, got {len(row)}")
        raw = row[id_col].strip()
        key = check_id(Path(raw).stem if Path(raw).suffix.lower() in
                       (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") else raw, where)
        if key in out:
            raise DoeiError(f"{where}: duplicate image id {key!r}")
        classes = _parse_cell(row[lab_col], index, len(class_names), where)
        out[key] = check_label(classes, len(class_names), where)
    if not out:
        raise DoeiError(f"{path}: no label rows")
    return out


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def folder_class_names(root: str | Path) -> list[str]:
    """The foreground names of ``root/classes.txt`` (else ``root/classes.json``), as the loader reads them."""
    root = Path(root)
    f = root / "classes.txt" if (root / "classes.txt").is_file() else root / "classes.json"
    return read_class_names(f)


@register_dataset("folder", options=("image_dir", "labels_file", "classes_file", "mask_dir", "require_masks"),
                  class_names=folder_class_names)
def folder_dataset(root: str | Path, split: str | None = None, *, transform: Transform | None = None,
                   image_dir: str | Path | None = None, labels_file: str | Path | None = None,
                   classes_file: str | Path | None = None, mask_dir: str | Path | None = None,
                   require_masks: bool = False) -> ClassificationDataset:
    """A :class:`ClassificationDataset` over a user's folder (layout in the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DoeiError(f"{root}: dataset folder not found")
    cf = Path(classes_file) if classes_file is not None else _first_existing(root, ("classes.txt", "classes.json"))
    if cf is None:
        raise DoeiError(f"{root}: no classes.txt or classes.json (foreground class names, one per line)")
    names = read_class_names(cf)
    lf = Path(labels_file) if labels_file is not None else _first_existing(root, ("labels.csv", "labels.json"))
    if lf is None:
        raise DoeiError(f"{root}: no labels.csv or labels.json (image-level labels)")
    table = read_labels_csv(lf, names) if lf.suffix.lower() == ".csv" else read_labels_json(lf, len(names), names)
    if split is not None:
        sf = Path(split) if Path(split).suffix == ".txt" else root / f"{split}.txt"
        ids = read_id_list(sf)
        missing = [i for i in ids if i not in table]
        if missing:
            raise DoeiError(f"{lf}: no labels for image id {missing[0]!r} of {sf} ({len(missing)} missing)")
    else:
        ids = sorted(table)
    check_unique(ids, str(lf))
    idir = Path(image_dir) if image_dir is not None else root / "images"
    if not idir.is_dir():
        raise DoeiError(f"{idir}: image folder not found")
    mdir = Path(mask_dir) if mask_dir is not None else (root / "masks" if (root / "masks").is_dir() else None)
    if mdir is not None and not mdir.is_dir():
        raise DoeiError(f"{mdir}: mask folder not found")
    records = []
    for i in ids:
        mp = mdir / f"{i}.png" if mdir is not None else None
        if mp is not None and not mp.is_file():
            mp = None
        if mp is None and require_masks:
            raise DoeiError(f"{(mdir or root / 'masks')}/{i}.png: ground-truth mask not found for id {i!r}")
        records.append(ImageRecord(i, find_image_file(idir, i), table[i], mp))
    return ClassificationDataset(records, names, transform=transform, name=f"{root}:{split or 'all'}",
                                 label_source=f"file {lf}")
