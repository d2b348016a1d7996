"""Starting a classifier from pretrained weights: :func:`load_pretrained` asks the model's family
(``model.load_pretrained(source)``, the contract in :class:`doei.models.registry.Classifier`); the ViT
families read DeiT/timm weights with :func:`load_deit_weights` (what MCTformer's ``--finetune`` does).

A DeiT-S checkpoint has ONE class token; MCTformer has one per class. Adapting it (facts from the
official main.py):

* ``cls_token`` [1, 1, D] → [1, C, D] by repetition;
* ``pos_embed`` [1, 1 + g·g, D]: the class position repeated C times, the patch grid resized to the
  model's grid with bicubic interpolation (``size=``, ``align_corners=False``);
* ``head.*`` (the 1000-way ImageNet classifier) and ``head_dist.*`` / ``dist_token`` dropped (distilled
  DeiT: its second extra position is dropped from ``pos_embed`` too).

A checkpoint that already has C class tokens (an MCTformer checkpoint) is only resized. Weights whose
shape still differs from the model's (e.g. ``patch_embed.*`` of the demo's conv stem) are an error,
except ``head.*``: the model keeps its own initialisation there.

The number of class tokens is the model's ``num_cls_tokens`` (MCTformer: C; TS-CAM: 1, so a DeiT
checkpoint loads as is, its linear ``head.*`` replaced by TS-CAM's conv head). MCTformer-V2 and TS-CAM
call :func:`load_deit_weights` from their ``load_pretrained`` method; a TransCAM Conformer takes an
ImageNet Conformer checkpoint instead (:meth:`doei.models.conformer.Conformer.load_pretrained`).

Sources: a file path, or ``timm:<name>`` (e.g. ``timm:deit_small_patch16_224``): then
``timm.create_model(name, pretrained=True)`` fetches the weights through timm's own mechanism (network or
timm's cache; only when a training starts, never at import) and its state dict is adapted as above.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from doei.errors import DoeiError

DROP_PREFIXES = ("head.", "head_dist.")
DROP_KEYS = ("dist_token",)
TIMM_PREFIX = "timm:"


def adapt_deit_state_dict(sd: Mapping[str, Tensor], num_classes: int, grid: tuple[int, int],
                          where: str = "checkpoint") -> dict[str, Tensor]:
    """DeiT/timm (or MCTformer) state dict → a state dict with ``num_classes`` CLASS TOKENS (MCTformer:
    the number of classes; TS-CAM: 1) and the patch ``grid``: cls_token [1, n, D], pos_embed [1, n + g·g, D]."""
    out = {k: v for k, v in sd.items() if not k.startswith(DROP_PREFIXES) and k not in DROP_KEYS}
    if "cls_token" not in out or "pos_embed" not in out:
        raise DoeiError(f"{where}: no 'cls_token'/'pos_embed' (not a ViT/DeiT checkpoint)")
    cls, pos = out["cls_token"], out["pos_embed"]
    n_cls = cls.shape[1]
    n_extra_pos = n_cls + (1 if "dist_token" in sd else 0)
    if n_cls not in (1, num_classes):
        raise DoeiError(f"{where}: cls_token has {n_cls} tokens, expected 1 (DeiT) or {num_classes} (MCTformer)")
    n_patch = pos.shape[1] - n_extra_pos
    g = int(round(n_patch ** 0.5))
    if g * g != n_patch:
        raise DoeiError(f"{where}: pos_embed has {n_patch} patch positions, not a square grid")
    extra = pos[:, :n_cls]
    patch = pos[:, n_extra_pos:]
    if n_cls == 1:
        extra = extra.repeat(1, num_classes, 1)
        out["cls_token"] = cls.repeat(1, num_classes, 1)
    if (g, g) != tuple(grid):
        d = pos.shape[-1]
        p = patch.reshape(1, g, g, d).permute(0, 3, 1, 2).float()
        p = F.interpolate(p, size=tuple(grid), mode="bicubic", align_corners=False)
        patch = p.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d).to(pos.dtype)
    out["pos_embed"] = torch.cat([extra, patch], dim=1)
    return out


def timm_state_dict(name: str) -> dict[str, Tensor]:
    """``timm.create_model(name, pretrained=True).state_dict()``; a one-line DoeiError when timm cannot
    provide the weights (unknown name, no network and no cache)."""
    import timm

    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as e:  # timm raises RuntimeError, OSError, HF hub errors... on a missing download
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DoeiError(f"model.pretrained = '{TIMM_PREFIX}{name}': timm could not provide the weights ({msg})") from None
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def read_pretrained(source: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of ``source``: ``timm:<name>`` or a checkpoint file (``doei.models.weights``)."""
    if isinstance(source, str) and source.startswith(TIMM_PREFIX):
        name = source[len(TIMM_PREFIX):]
        if not name:
            raise DoeiError(f"model.pretrained = {source!r}: expected 'timm:<model name>', e.g. timm:deit_small_patch16_224")
        return timm_state_dict(name)
    from doei.models.weights import read_state_dict

    return read_state_dict(source)


def load_deit_weights(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load DeiT/timm weights from ``path`` (a file or ``timm:<name>``) into a ViT classifier ``model``
    (a :class:`doei.models.vit.VisionTransformer`: MCTformer-V2, TS-CAM; in place), adapted to its
    ``num_cls_tokens`` and ``base_grid`` (the patch grid its position embedding is built for).

    Returns the model keys left at their initialisation (``head.*`` for DeiT weights). Any other
    missing key or a shape mismatch raises a one-line DoeiError.
    """
    sd = read_pretrained(path)
    n_tokens = int(model.num_cls_tokens)
    adapted = adapt_deit_state_dict(sd, n_tokens, tuple(model.base_grid), where=str(path))
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in adapted.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise DoeiError(f"{path}: shape mismatch after DeiT adaptation: {bad[0]}"
                        + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    missing = [k for k in own if k not in adapted]
    if any(not k.startswith("head.") for k in missing):
        other = [k for k in missing if not k.startswith("head.")]
        raise DoeiError(f"{path}: pretrained weights lack {other[0]}" + (f" (+{len(other) - 1} more)" if len(other) > 1 else ""))
    model.load_state_dict({k: v for k, v in adapted.items() if k in own}, strict=False)
    return missing


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


__all__ = ["load_pretrained", "adapt_deit_state_dict", "timm_state_dict", "read_pretrained", "load_deit_weights", "TIMM_PREFIX",
           "DROP_PREFIXES", "DROP_KEYS"]
