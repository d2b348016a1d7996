"""One dataset type for every source: a validated list of records + image-level labels.

The format-specific modules (:mod:`doei.data.voc`, :mod:`~doei.data.coco`, :mod:`~doei.data.folder`,
:mod:`~doei.data.synth`) only find files and labels and build :class:`ImageRecord` lists; loading,
transforms and the raw (image, mask) access live here once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from doei.data.common import check_unique, multi_hot, read_image, read_mask
from doei.errors import DoeiError

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id, where its pixels (and optional mask) are, and its 0-based fg classes."""

    id: str
    image_path: Path
    classes: tuple[int, ...]
    mask_path: Path | None = None


@dataclass(frozen=True)
class SegmentationSample:
    """Raw access for CAM generation, CRF and evaluation.

    ``image`` uint8 [H, W, 3] RGB; ``mask`` uint8 [H, W] (0 = background, k+1 = fg class k,
    255 = ignore) or None when the dataset has no mask for this id; ``label`` float32 [C] multi-hot;
    ``classes`` the same label as sorted 0-based indices.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    label: np.ndarray
    classes: tuple[int, ...]


class ClassificationDataset(Dataset):
    """Multi-label classification view of a WSSS dataset.

    ``ds[i]`` -> ``(image float32 [3, H, W] after ``transform``, label float32 [C] multi-hot, id)``.
    ``transform`` receives a PIL RGB image; the default is :func:`doei.data.transforms.cam_transform`
    (ToTensor + ImageNet normalisation, no resize), so images keep their own size and a DataLoader
    needs ``batch_size=1`` or a resizing transform. ``ds.sample(id_or_index)`` gives the raw
    :class:`SegmentationSample`.
    """

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str], *,
                 transform: Transform | None = None, name: str = "dataset", label_source: str = "") -> None:
        if not records:
            raise DoeiError(f"{name}: no images (empty split)")
        ids = [r.id for r in records]
        check_unique(ids, name)
        c = len(class_names)
        for r in records:
            if any(not 0 <= k < c for k in r.classes):
                bad = next(k for k in r.classes if not 0 <= k < c)
                raise DoeiError(f"{name}: {r.id}: class index {bad} outside 0..{c - 1}")
        self.records: list[ImageRecord] = list(records)
        self.class_names: list[str] = list(class_names)
        self.name = name
        self.label_source = label_source
        if transform is None:
            from doei.data.transforms import cam_transform

            transform = cam_transform()
        self.transform: Transform = transform
        self._index = {r.id: i for i, r in enumerate(self.records)}

    # --------------------------------------------------------------------------- basic access
    @property
    def num_classes(self) -> int:
        """Number of FOREGROUND classes C (masks use 0..C plus 255)."""
        return len(self.class_names)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def has_masks(self) -> bool:
        """True when every record has a ground-truth mask file."""
        return all(r.mask_path is not None for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def index_of(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise DoeiError(f"{self.name}: no image with id {image_id!r}") from None

    def label(self, i: int) -> np.ndarray:
        """float32 [C] multi-hot label of record ``i``."""
        return multi_hot(self.records[i].classes, self.num_classes)

    def label_matrix(self) -> np.ndarray:
        """float32 [N, C] multi-hot labels of all records (for class statistics, mAP, samplers)."""
        out = np.zeros((len(self.records), self.num_classes), dtype=np.float32)
        rows = np.repeat(np.arange(len(self.records)), [len(r.classes) for r in self.records])
        cols = np.fromiter((k for r in self.records for k in r.classes), dtype=np.int64)
        out[rows, cols] = 1.0
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        r = self.records[i]
        img = Image.fromarray(read_image(r.image_path))
        x = self.transform(img)
        return x, torch.from_numpy(self.label(i)), r.id

    # --------------------------------------------------------------------------- raw access
    def sample(self, key: int | str, *, with_mask: bool = True) -> SegmentationSample:
        """Raw image (+ mask) of an id or index; checks mask values and that sizes agree."""
        i = self.index_of(key) if isinstance(key, str) else int(key)
        r = self.records[i]
        image = read_image(r.image_path)
        mask = None
        if with_mask and r.mask_path is not None:
            mask = read_mask(r.mask_path, self.num_classes)
            if mask.shape != image.shape[:2]:
                raise DoeiError(f"{r.mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                                f"{r.image_path.name} size {image.shape[1]}x{image.shape[0]}")
        return SegmentationSample(r.id, image, mask, self.label(i), r.classes)

    def mask(self, key: int | str) -> np.ndarray:
        """uint8 [H, W] ground truth of an id or index; raises if this record has no mask."""
        i = self.index_of(key) if isinstance(key, str) else int(key)
        r = self.records[i]
        if r.mask_path is None:
            raise DoeiError(f"{self.name}: no ground-truth mask for {r.id!r}")
        return read_mask(r.mask_path, self.num_classes)

    def subset(self, ids: Sequence[str]) -> "ClassificationDataset":
        """A new dataset with only ``ids`` (in that order), same classes and transform."""
        return ClassificationDataset([self.records[self.index_of(i)] for i in ids], self.class_names,
                                     transform=self.transform, name=self.name, label_source=self.label_source)

    def __repr__(self) -> str:
        return (f"ClassificationDataset({self.name!r}, {len(self)} images, {self.num_classes} classes, "
                f"labels from {self.label_source or '?'}, masks={'yes' if self.has_masks else 'partial/no'})")
