"""The classification objective of each classifier family, asked of the model.

Each family provides ``classification_loss(outputs, target)`` and ``prediction_logits(outputs)`` as
methods (the contract in :class:`doei.models.registry.Classifier`):

* MCTformer-V2 (official engine.py): ``multilabel_soft_margin_loss(cls_logits, y) +
  multilabel_soft_margin_loss(patch_logits, y)``; the model returns ``(cls_logits, patch_logits)``
  (a model returning one tensor uses the first term only).
* TS-CAM: ``multilabel_soft_margin_loss(logits, y)`` on its one output (the GAP of the head map).
* TransCAM (Conformer): :func:`doei.models.conformer.transcam_loss`, the soft-margin loss on the SUM
  ``logits_conv + logits_trans`` (the official objective; not the sum of two per-branch losses).

Logits are cast to float32 (AMP-safe). A ``DistributedDataParallel`` / ``DataParallel`` wrapper is
looked through (``.module``). A model that does not provide the methods is a one-line DoeiError
(it never silently gets another family's objective).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
from torch import Tensor

from doei.errors import DoeiError

def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _family_method(model: nn.Module, name: str) -> Callable:
    m = _unwrap(model)
    fn = getattr(m, name, None)
    if fn is None:
        raise DoeiError(f"{type(m).__name__}: not a classifier family (it has no {name}(); a family provides "
                        "classification_loss, prediction_logits, cam_source and load_pretrained, see "
                        "doei.models.registry.Classifier)")
    return fn


def classification_loss(model: nn.Module, outputs: Tensor | tuple[Tensor, ...],
                        target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(total, first term, second term) of ``model``'s objective; ``target`` [B, K] multi-hot float.

    ``outputs`` is what ``model(x)`` returned: MCTformer ``(cls [B,K], patch [B,K])``, TS-CAM ``[B,K]``,
    TransCAM ``(conv [B,K], trans [B,K])``. The two terms are the class-token and patch-token losses for
    MCTformer-V2; for one-term objectives (TS-CAM, TransCAM) they are (total, 0) so that the training
    log keeps its ``loss_cls`` / ``loss_patch`` columns.
    """
    return _family_method(model, "classification_loss")(outputs, target)


def prediction_logits(model: nn.Module, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The image-level scores [B, K] each family predicts with: MCTformer's class-token logits,
    TS-CAM's logits, TransCAM's ``logits_conv + logits_trans`` (what its loss is computed on)."""
    return _family_method(model, "prediction_logits")(outputs)


__all__ = ["classification_loss", "prediction_logits"]
