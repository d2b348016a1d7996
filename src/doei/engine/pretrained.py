"""Starting a classifier from pretrained weights: ``load_pretrained(model, source)`` (``model.pretrained``).

Each classifier family says how it loads its pretrained start with its ``load_pretrained(source)``
method (the contract in :class:`doei.models.registry.Classifier`):

* MCTformer-V2 and TS-CAM: ImageNet DeiT/timm weights (a file or ``timm:<name>``), adapted to the
  model's class tokens and patch grid — what MCTformer's ``--finetune`` does
  (:func:`doei.models.pretrained.load_deit_weights`, which documents the adaptation);
* TransCAM Conformer: an ImageNet Conformer checkpoint file, its two classifier heads dropped
  (:meth:`doei.models.conformer.Conformer.load_pretrained`).

The DeiT helpers (:func:`adapt_deit_state_dict`, :func:`timm_state_dict`, :func:`read_pretrained`)
live in :mod:`doei.models.pretrained` and are re-exported here.
"""
from __future__ import annotations

import os

import torch

from doei.errors import DoeiError
from doei.models.pretrained import (DROP_KEYS, DROP_PREFIXES, TIMM_PREFIX, adapt_deit_state_dict,  # noqa: F401
                                    load_deit_weights, read_pretrained, timm_state_dict)


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load the pretrained weights ``path`` (a file or ``timm:<name>``) into ``model`` (in place) the way
    its family does (``model.load_pretrained``; a ``DistributedDataParallel`` wrapper is looked through).

    Returns the model keys left at their initialisation (the classifier heads). A bad source, a missing
    key or a shape mismatch raises a one-line DoeiError; so does a model whose family does not say how
    it loads pretrained weights.
    """
    m = getattr(model, "module", model)
    fn = getattr(m, "load_pretrained", None)
    if fn is None:
        raise DoeiError(f"model.pretrained = {str(path)!r}: {type(m).__name__} does not say how it loads pretrained "
                        "weights (a classifier family provides load_pretrained(source); see doei.models.registry)")
    return fn(path)


__all__ = ["load_pretrained", "load_deit_weights", "adapt_deit_state_dict", "timm_state_dict", "read_pretrained",
           "TIMM_PREFIX"]
