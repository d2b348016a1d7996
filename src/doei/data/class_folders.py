"""Images sorted into one folder per class (the ImageNet / CUB layout), as dataset kind ``class_folders``.

Layout under ``root``::

    <split>/<class>/<image>.<ext>     one folder per class; an image's label is its folder (one class)
    classes.txt                       optional: the foreground names in index order (else the sorted
                                      folder names of the split); a folder not listed there is refused
    masks/<id>.png                    optional ground truth (0 background, k+1 class k, 255 ignore)

The id of an image is its file name without the extension; ids must be unique across the class
folders (two ``0001.jpg`` in different classes are refused, naming both). Options: ``classes_file``
(another names file), ``mask_dir`` (another mask folder), ``require_masks``. ``split`` names the
sub-folder (``train``, ``val``); the default is ``train``.
"""
from __future__ import annotations

from pathlib import Path

from doei.data.build import register_dataset
from doei.data.common import IMAGE_EXTENSIONS, check_id, read_class_names
from doei.data.dataset import ClassificationDataset, ImageRecord, Transform
from doei.errors import DoeiError


def class_folder_names(root: str | Path) -> list[str]:
    """The foreground names: ``root/classes.txt`` if present, else the sorted class folders of ``root/train``."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return read_class_names(root / "classes.txt")
    return _folders(root / "train")


def _folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DoeiError(f"{split_dir}: split folder not found (expected <root>/<split>/<class>/<image>)")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DoeiError(f"{split_dir}: no class folders (expected <root>/<split>/<class>/<image>)")
    return names


@register_dataset("class_folders", options=("classes_file", "mask_dir", "require_masks"), default_split="train",
                  class_names=class_folder_names)
def class_folders_dataset(root: str | Path, split: str = "train", *, transform: Transform | None = None,
                          classes_file: str | Path | None = None, mask_dir: str | Path | None = None,
                          require_masks: bool = False) -> ClassificationDataset:
    """A :class:`ClassificationDataset` over ``root/<split>/<class>/<image>`` (layout in the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DoeiError(f"{root}: dataset folder not found")
    split_dir = root / split
    folders = _folders(split_dir)
    names_file = Path(classes_file) if classes_file is not None else root / "classes.txt"
    names = read_class_names(names_file) if classes_file is not None or names_file.is_file() else folders
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DoeiError(f"{split_dir / unknown[0]}: class folder not listed in {names_file} "
                        f"({len(unknown)} such folders)")
    mdir = Path(mask_dir) if mask_dir is not None else root / "masks"
    if mask_dir is not None and not mdir.is_dir():
        raise DoeiError(f"{mdir}: mask folder not found")
    seen: dict[str, Path] = {}
    records = []
    for cls in folders:
        for f in sorted((split_dir / cls).iterdir()):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            image_id = check_id(f.stem, str(f))
            if image_id in seen:
                raise DoeiError(f"{f}: image id {image_id!r} also names {seen[image_id]} (ids must be unique "
                                "across the class folders)")
            seen[image_id] = f
            mask = mdir / f"{image_id}.png"
            if require_masks and not mask.is_file():
                raise DoeiError(f"{mask}: mask missing (require_masks)")
            records.append(ImageRecord(image_id, f, (index[cls],), mask if mask.is_file() else None))
    if not records:
        raise DoeiError(f"{split_dir}: no images in the class folders ({', '.join(IMAGE_EXTENSIONS)})")
    return ClassificationDataset(records, names, transform=transform, name=f"class_folders:{split}",
                                 label_source=f"class folders of {split_dir}")


__all__ = ["class_folders_dataset", "class_folder_names"]
