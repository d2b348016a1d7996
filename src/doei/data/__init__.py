"""Datasets: PASCAL VOC 2012, MS COCO 2014, a user's folder, and the synthetic benchmark.

Start with :func:`build_dataset` (-> :class:`ClassificationDataset`: ``ds[i]`` is
``(image [3, H, W], multi-hot label [C], id)``; ``ds.sample(id)`` the raw image and mask).
Each kind is registered by its own module with :func:`register_dataset` (:mod:`doei.data.build`).
See docs/datasets.md.

The dataset classes are imported on first use, so ``doei.data.build`` (the registry, and
:data:`~doei.data.build.DatasetKind` used by the config classes) loads without torch.
"""
from doei.data.build import (DatasetSpec, build_dataset, dataset_class_names, dataset_kinds, dataset_options,
                             get_dataset_spec, register_dataset)

_LAZY = {"ClassificationDataset": "doei.data.dataset", "ImageRecord": "doei.data.dataset",
         "SegmentationSample": "doei.data.dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_dataset", "dataset_class_names", "dataset_kinds", "dataset_options", "get_dataset_spec",
           "register_dataset", "DatasetSpec", "ClassificationDataset", "ImageRecord", "SegmentationSample"]
