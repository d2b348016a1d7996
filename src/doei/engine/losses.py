"""The classification objective of each classifier family, picked from the model.

* MCTformer-V2 (official engine.py): ``multilabel_soft_margin_loss(cls_logits, y) +
  multilabel_soft_margin_loss(patch_logits, y)``; the model returns ``(cls_logits, patch_logits)``
  (a model returning one tensor uses the first term only).
* TS-CAM: ``multilabel_soft_margin_loss(logits, y)`` on its one output (the GAP of the head map).
* TransCAM (Conformer): :func:`doei.models.conformer.transcam_loss`, the soft-margin loss on the SUM
  ``logits_conv + logits_trans`` (the official objective; not the sum of two per-branch losses).

Logits are cast to float32 (AMP-safe). A ``DistributedDataParallel`` / ``DataParallel`` wrapper is
looked through (``.module``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LossKind = Literal["mctformer", "tscam", "transcam"]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def loss_kind(model: nn.Module) -> LossKind:
    """Which family's objective ``model`` trains with (``transcam`` for any Conformer, ``tscam`` for TS-CAM,
    else ``mctformer``)."""
    from doei.models.conformer import Conformer
    from doei.models.tscam import TSCAM

    m = _unwrap(model)
    if isinstance(m, Conformer):
        return "transcam"
    if isinstance(m, TSCAM):
        return "tscam"
    return "mctformer"


def classification_loss(model: nn.Module, outputs: Tensor | tuple[Tensor, ...],
                        target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(total, first term, second term) of ``model``'s objective; ``target`` [B, K] multi-hot float.

    ``outputs`` is what ``model(x)`` returned: MCTformer ``(cls [B,K], patch [B,K])``, TS-CAM ``[B,K]``,
    TransCAM ``(conv [B,K], trans [B,K])``. The two terms are the class-token and patch-token losses for
    MCTformer-V2; for one-term objectives (TS-CAM, TransCAM) they are (total, 0) so that the training
    log keeps its ``loss_cls`` / ``loss_patch`` columns.
    """
    kind = loss_kind(model)
    if kind == "transcam":
        from doei.models.conformer import transcam_loss

        conv, trans = outputs
        total = transcam_loss(conv.float(), trans.float(), target)
        return total, total, torch.zeros_like(total)
    if isinstance(outputs, Tensor):
        total = F.multilabel_soft_margin_loss(outputs.float(), target)
        return total, total, torch.zeros_like(total)
    if kind == "tscam":
        raise TypeError("TS-CAM's forward returns one logits tensor, got a tuple")
    cls = F.multilabel_soft_margin_loss(outputs[0].float(), target)
    pat = F.multilabel_soft_margin_loss(outputs[1].float(), target)
    return cls + pat, cls, pat


def prediction_logits(model: nn.Module, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The image-level scores [B, K] each family predicts with: MCTformer's class-token logits,
    TS-CAM's logits, TransCAM's ``logits_conv + logits_trans`` (what its loss is computed on)."""
    if isinstance(outputs, Tensor):
        return outputs
    if loss_kind(model) == "transcam":
        return outputs[0] + outputs[1]
    return outputs[0]


__all__ = ["classification_loss", "prediction_logits", "loss_kind", "LossKind"]
