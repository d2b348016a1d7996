"""Datasets: PASCAL VOC 2012, MS COCO 2014, a user's folder, and the synthetic benchmark.

Start with :func:`build_dataset` (-> :class:`ClassificationDataset`: ``ds[i]`` is
``(image [3, H, W], multi-hot label [C], id)``; ``ds.sample(id)`` the raw image and mask).
See docs/datasets.md.
"""
from doei.data.build import DATASET_KINDS, build_dataset, dataset_class_names
from doei.data.dataset import ClassificationDataset, ImageRecord, SegmentationSample

__all__ = ["DATASET_KINDS", "build_dataset", "dataset_class_names", "ClassificationDataset", "ImageRecord",
           "SegmentationSample"]
