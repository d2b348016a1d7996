"""The types a classifier family's CAM source speaks (shared by ``doei.models`` and ``doei.cam``).

A *CAM source* turns a batch of normalised views into low-resolution maps; each classifier family
provides one through its ``cam_source(n_layers=..., kind=..., patch_refine=...)`` method (see
:class:`doei.models.registry.Classifier`) and :class:`doei.cam.extractor.CamExtractor` runs it over
scales and flips. The types live here, below ``doei.cam``, so that models never import the CAM layer.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor


class ViewCams(NamedTuple):
    """What a source returns for one batch of views."""

    logits: Tensor        # [B, C] image-level scores (class-token logits for MCTformer)
    cams: Tensor          # [B, C, h, w] raw maps before refinement
    refined: Tensor       # [B, C, h, w] the maps the pipeline upsamples (== cams without refinement)


class CamSource(Protocol):
    """Model adapter: normalised views [B, 3, h, w] -> :class:`ViewCams` at the model's resolution."""

    num_classes: int

    def __call__(self, x: Tensor) -> ViewCams: ...


__all__ = ["ViewCams", "CamSource"]
