"""A context-managed CAM extractor in the shape of pytorch-grad-cam / torchcam.

.. code-block:: python

    with AttentionCAM(model, n_layers=3) as cam:
        maps = cam(images, targets)        # [B, K, H, W] in [0, 1], model's device and dtype
        gray = cam(images, [3, 7], output="numpy")   # numpy [B, H, W]: class 3 of image 0, 7 of image 1
        maps = cam(images)                 # targets=None: the classes the model predicts (cam.targets)

``targets``, as pytorch-grad-cam takes them: ``None`` (the model's predicted classes: sigmoid score
>= ``threshold``, and at least the top class), a flat list of B class indices (one class per image),
a list of B lists of 0-based class indices, or a multi-hot [B, K] tensor/array. Non-target classes
get all-zero maps. ``output="numpy"`` returns float32 ``[B, H, W]``: each image's target map (the
maximum over its targets when it has several), the shape grad-cam's ``grayscale_cam`` has.

Models:

* this project's MCTformer-V2 / TS-CAM (anything with ``forward_cams`` or ``cam_source``): their own
  CAM source (``doei.cam.extractor.cam_source_for``), which reads the attention the model returns;
  no hooks are needed;
* timm ViTs, plugged with DOEI (``doei.models.timm_plugin.plug``) or not: the extractor records the
  head-mean attention of the last ``n_layers`` blocks through the plug's hooks (plugging the model
  with DOEI off for the duration when it is not plugged) and reads the class→patch attention of
  DOEI's class tokens, summed over those blocks, as TS-CAM does (:class:`TimmAttentionSource`).

Both go through :class:`doei.cam.extractor.CamExtractor` (multi-scale, flip, up-sampling, label
mask, per-class min-max). On exit the recording stops, a plug the extractor made is removed, the
recorded tensors are released and the model's train/eval mode is restored.
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from doei.cam.extractor import CamExtractor, ViewCams, cam_source_for
from doei.core import DOEIConfig
from doei.errors import DoeiError
from doei.utils.checks import expect_int, expect_positive_floats, expect_type
from doei.models.cam_source import class_attention, refine_with_patch_affinity, semantic_cams
from doei.models.timm_plugin import DoeiPlug, get_plug, plug, unplug

TIMM_KINDS = ("attention", "semantic")
OUTPUTS = ("tensor", "numpy")
# None (predicted) | B class ids | B lists of class ids | multi-hot [B, K]
Targets = Union[None, Tensor, np.ndarray, Sequence[int], Sequence[Sequence[int]]]


class TimmAttentionSource:
    """CAM source for a DOEI-plugged timm ViT: views [B, 3, h, w] -> :class:`ViewCams` [B, K, h', w'].

    ``kind="attention"``: the class→patch attention of DOEI's class tokens summed over the last
    ``n_layers`` blocks ([B, C, h', w']); with one class token per class (C = K) each class has its
    own map, otherwise the C rows are averaged into one class-agnostic map repeated for the K classes
    (TS-CAM's attention term; distilled DeiT: mean of the class and distillation rows).
    ``kind="semantic"``: that map times ReLU of the model's classifier applied to every (final-norm)
    patch token — ``head(fc_norm(x_patch))`` [B, K, h', w'] — TS-CAM's semantic-aware reading for a
    timm head (distilled DeiT: mean of ``head`` and ``head_dist``). ``patch_refine`` applies
    MCTformer's patch-affinity refinement with the patch→patch attention of all blocks.
    Must run inside ``plug.recording(self.blocks)``.
    """

    def __init__(self, model: nn.Module, plugged: DoeiPlug, n_layers: int = 3, kind: str = "attention",
                 patch_refine: bool = False, num_classes: int | None = None) -> None:
        if not 1 <= n_layers <= plugged.depth:
            raise DoeiError(f"n_layers={n_layers}: expected 1..{plugged.depth} (the model's depth)")
        if kind not in TIMM_KINDS:
            raise DoeiError(f"CAM kind {kind!r} for a timm ViT: expected one of {', '.join(TIMM_KINDS)}")
        k = int(num_classes if num_classes is not None else getattr(model, "num_classes", 0) or 0)
        if k < 1:
            raise DoeiError(f"{type(model).__name__} has no classifier classes: pass num_classes=K")
        if kind == "semantic" and not (isinstance(getattr(model, "head", None), nn.Linear)
                                       and model.head.out_features == k):
            raise DoeiError(f"kind='semantic' needs model.head = Linear(D, {k}); use kind='attention'")
        if not hasattr(model, "forward_features"):
            raise DoeiError(f"{type(model).__name__}: no forward_features (expected a timm ViT)")
        self.model = model
        self.plug = plugged
        self.num_classes = k
        self.n_layers = n_layers
        self.kind = kind
        self.patch_refine = patch_refine
        last = range(plugged.depth - n_layers + 1, plugged.depth + 1)
        self.blocks = list(range(1, plugged.depth + 1)) if patch_refine else list(last)
        self._last = list(last)

    def __call__(self, x: Tensor) -> ViewCams:
        feats = self.model.forward_features(x)                        # [B, T, D] (timm: after final norm)
        rec, grid = self.plug.recorded, self.plug.grid
        if grid is None or any(i not in rec for i in self.blocks):
            raise DoeiError("no attention was recorded for this pass: call the source inside plug.recording()")
        b, (h, w) = x.shape[0], grid
        c, n, k = self.plug.num_cls, self.plug.num_prefix, self.num_classes
        attn = torch.stack([rec[i] for i in self._last]).float()    # [n_layers, B, T, T]
        maps = class_attention(attn, (h, w), num_cls=c, num_prefix=n)
        if c != k:
            maps = maps.mean(dim=1, keepdim=True).expand(b, k, h, w)
        if self.kind == "semantic":                               # TS-CAM's reading (doei.models.cam_source)
            maps = semantic_cams(maps, torch.relu(self._patch_logits(feats, h, w)))
        logits = self._logits(feats, b)
        refined = maps
        if self.patch_refine:
            patch_attn = torch.stack([rec[i] for i in self.blocks]).float()[:, :, n:, n:]
            refined = refine_with_patch_affinity(maps.contiguous(), patch_attn)
        return ViewCams(logits, maps, refined)

    def _patch_logits(self, feats: Tensor, h: int, w: int) -> Tensor:
        """The classifier on each patch token: [B, T, D] -> [B, K, h, w] float32."""
        m = self.model
        tokens = feats[:, self.plug.num_prefix:]
        tokens = m.fc_norm(tokens) if hasattr(m, "fc_norm") else tokens
        out = m.head(tokens)
        if isinstance(getattr(m, "head_dist", None), nn.Linear):
            out = (out + m.head_dist(tokens)) / 2
        return out.float().transpose(1, 2).reshape(feats.shape[0], -1, h, w)

    def _logits(self, feats: Tensor, b: int) -> Tensor:
        head = getattr(self.model, "forward_head", None)
        out = head(feats) if head is not None else None
        if isinstance(out, Tensor) and out.shape == (b, self.num_classes):
            return out.float()
        return torch.zeros(b, self.num_classes, device=feats.device)


class _CastSource:
    """Feeds a source its views in the model's dtype (CamExtractor hands over float32)."""

    def __init__(self, source, dtype: torch.dtype) -> None:
        self.source = source
        self.dtype = dtype
        self.num_classes = source.num_classes

    def __call__(self, x: Tensor) -> ViewCams:
        return self.source(x.to(self.dtype))


class AttentionCAM:
    """Context-managed CAM extractor: ``with AttentionCAM(model) as cam: maps = cam(images, targets)``.

    Options: ``n_layers`` (last blocks whose attention is summed; default 3, or the family's), ``kind``
    (project models: one of the model's ``cam_kinds``, default its first; timm: 'attention' (default) |
    'semantic'), ``scales`` / ``flip`` (multi-scale and mirrored views, summed), ``patch_refine``
    (default: on for MCTformer-V2 as the official code, off for timm), ``num_classes`` (timm models
    without a classifier), ``class_tokens`` (used only when the extractor plugs a timm model itself;
    see ``doei.models.timm_plugin``).
    ``threshold``: the sigmoid score from which a class counts as predicted when ``targets`` is None
    (default 0.5; the top class is always taken).
    ``images``: normalised [B, 3, H, W] (or a list of [3, H_i, W_i], giving a list back). Returns maps
    [B, K, H, W] in [0, 1] on the model's device, in the model's dtype (``output="numpy"``: float32
    numpy [B, H, W], see the module docstring); the model runs in eval mode without gradients inside the
    block and gets its previous mode back on exit. After each call ``cam.targets`` is the multi-hot
    [B, K] target actually used and ``cam.scores`` the sigmoid scores [B, K] when they were predicted
    (else None).
    """

    def __init__(self, model: nn.Module, n_layers: int | None = None, kind: str | None = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False, patch_refine: bool | None = None,
                 num_classes: int | None = None, class_tokens: str = "class", threshold: float = 0.5) -> None:
        f = "AttentionCAM"
        expect_type(f, "model", model, nn.Module, "a torch.nn.Module",
                    "build it first, e.g. timm.create_model(name)" if isinstance(model, str) else "")
        expect_int(f, "n_layers", n_layers, 1, optional=True)
        expect_positive_floats(f, "scales", scales)
        expect_type(f, "flip", flip, bool, "True or False")
        expect_int(f, "num_classes", num_classes, 1, optional=True)
        expect_type(f, "kind", kind, (str, type(None)), "a CAM kind name or None")
        expect_type(f, "class_tokens", class_tokens, str, "a string")
        expect_type(f, "threshold", threshold, (int, float), "a number in (0, 1)")
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold={threshold}: expected a sigmoid score strictly between 0 and 1")
        self.threshold = float(threshold)
        self.targets: Tensor | None = None
        self.scores: Tensor | None = None
        self.model = model
        self.n_layers = n_layers
        self.kind = kind
        self.scales = tuple(scales)
        self.flip = flip
        self.patch_refine = patch_refine
        self.num_classes = num_classes
        self.class_tokens = class_tokens
        self._stack: contextlib.ExitStack | None = None
        self._extractor: CamExtractor | None = None

    def __enter__(self) -> "AttentionCAM":
        if self._stack is not None:
            raise DoeiError("AttentionCAM is already open (it is not re-entrant)")
        stack = contextlib.ExitStack()
        model = self.model
        stack.callback(model.train, model.training)              # restore the mode last
        try:
            if hasattr(model, "forward_cams") or hasattr(model, "cam_source"):
                source = cam_source_for(model, self.n_layers, self.kind, self.patch_refine)
            else:
                plugged = get_plug(model)
                if plugged is None:
                    plug(model, DOEIConfig(enabled=False), class_tokens=self.class_tokens)
                    stack.callback(unplug, model)
                    plugged = get_plug(model)
                source = TimmAttentionSource(model, plugged, self.n_layers or 3, self.kind or "attention",
                                             bool(self.patch_refine), self.num_classes)
                stack.enter_context(plugged.recording(source.blocks))
            dtype = _param(model).dtype if _param(model) is not None else torch.float32
            self._extractor = CamExtractor(model, scales=self.scales, flip=self.flip,
                                           source=_CastSource(source, dtype))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release hooks, recorded tensors and any plug made here; restore the model's mode."""
        stack, self._stack, self._extractor = self._stack, None, None
        if stack is not None:
            stack.close()

    def __repr__(self) -> str:
        state = "open" if self._extractor is not None else "closed"
        return (f"AttentionCAM({type(self.model).__name__}, n_layers={self.n_layers}, kind={self.kind!r}, "
                f"scales={self.scales}, flip={self.flip}, patch_refine={self.patch_refine}, "
                f"threshold={self.threshold}, {state})")

    def __call__(self, images: Tensor | Sequence[Tensor], targets: Targets = None,
                 output: str = "tensor") -> Tensor | list[Tensor] | np.ndarray | list[np.ndarray]:
        if self._extractor is None:
            raise DoeiError("use AttentionCAM as a context manager: `with AttentionCAM(model) as cam: "
                            "maps = cam(images, targets)`")
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
        if not isinstance(images, Tensor) and not (isinstance(images, (list, tuple))
                                                   and all(isinstance(t, Tensor) for t in images)):
            raise TypeError(f"images: expected a [B, 3, H, W] tensor or a list of [3, H, W] tensors, "
                            f"got {type(images).__name__}")
        n = images.shape[0] if isinstance(images, Tensor) else len(images)
        k = self._extractor.num_classes
        self.scores = None
        if targets is None:
            self.scores = self.predict_scores(images)
            labels = predicted_targets(self.scores, self.threshold)
        else:
            labels = targets_to_multihot(targets, n, k)
        self.targets = labels
        out = self._extractor(images, labels)
        p = _param(self.model)
        dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
        if output == "numpy":
            maps = [out] if isinstance(out, Tensor) else [o.unsqueeze(0) for o in out]
            arrays = []
            for j, m in enumerate(maps):
                lab = labels[j: j + m.shape[0]] if isinstance(out, Tensor) else labels[j: j + 1]
                sel = m.float().cpu() * lab.view(*lab.shape, 1, 1)
                arrays.append(sel.amax(dim=1).numpy().astype(np.float32))
            return arrays[0] if isinstance(out, Tensor) else [a[0] for a in arrays]
        if isinstance(out, Tensor):
            return out.to(dev, dtype)
        return [o.to(dev, dtype) for o in out]

    @torch.no_grad()
    def predict_scores(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """The model's sigmoid class scores float32 [B, K] (CPU) for normalised ``images``."""
        model = self.model
        p = _param(model)
        dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
        batch = [images] if isinstance(images, Tensor) else [t.unsqueeze(0) for t in images]
        mode = model.training
        model.eval()
        try:
            rows = []
            for x in batch:
                outputs = model(x.to(dev, dtype))
                logits = model.prediction_logits(outputs) if hasattr(model, "prediction_logits") else outputs
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                rows.append(torch.sigmoid(logits.float()).cpu())
        finally:
            model.train(mode)
        scores = torch.cat(rows)
        if scores.shape[1] != self._extractor.num_classes:
            raise DoeiError(f"{type(model).__name__}: scores for {scores.shape[1]} classes, but its CAMs have "
                            f"{self._extractor.num_classes}; pass targets explicitly")
        return scores


def predicted_targets(scores: Tensor, threshold: float = 0.5) -> Tensor:
    """Multi-hot float32 [B, K] of the predicted classes: score >= ``threshold``, and each image's top class
    (so every image has at least one target, as pytorch-grad-cam's ``targets=None`` takes the top class)."""
    lab = (scores >= threshold).float()
    lab[torch.arange(scores.shape[0]), scores.argmax(dim=1)] = 1.0
    return lab


def targets_to_multihot(targets: Targets, batch: int, num_classes: int) -> Tensor:
    """Per-image targets -> multi-hot float32 [B, K]: a [B, K] tensor/array of 0/1 is taken as is;
    a list of B lists (or sets/tuples) of 0-based class indices is converted; a flat list of B ints (or a
    1-D integer tensor/array of length B) is one class per image."""
    flat = _flat_classes(targets)
    if flat is not None:
        if len(flat) != batch:
            raise DoeiError(f"targets: {len(flat)} class indices for {batch} images (one per image)")
        targets = [[c] for c in flat]
    if isinstance(targets, (list, tuple)) and all(isinstance(t, (list, tuple, set, range)) for t in targets):
        if len(targets) != batch:
            raise DoeiError(f"targets: {len(targets)} per-image class lists for {batch} images")
        out = torch.zeros(batch, num_classes)
        for i, ids in enumerate(targets):
            for c in ids:
                if not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num_classes:
                    raise DoeiError(f"targets[{i}]: class {c!r} outside 0..{num_classes - 1}")
                out[i, int(c)] = 1.0
        return out
    lab = targets if isinstance(targets, Tensor) else torch.as_tensor(np.asarray(targets))
    lab = lab.detach().float().cpu()
    if lab.shape != (batch, num_classes):
        raise DoeiError(f"targets: expected multi-hot [{batch}, {num_classes}] or {batch} lists of class "
                        f"indices, got shape {tuple(lab.shape)}")
    if not bool(((lab == 0) | (lab == 1)).all()):
        raise DoeiError("targets: a multi-hot target must hold only 0 and 1")
    return lab


def _flat_classes(targets: Targets) -> list[int] | None:
    """A flat sequence of class indices (one per image) as a list of ints; None for any other form."""
    if isinstance(targets, Tensor):
        ok = targets.ndim == 1 and not targets.dtype.is_floating_point and targets.dtype != torch.bool
        return [int(t) for t in targets.tolist()] if ok else None
    if isinstance(targets, np.ndarray):
        return [int(t) for t in targets.tolist()] if targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer) \
            else None
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, (int, np.integer))
                                                              and not isinstance(t, bool) for t in targets):
        return [int(t) for t in targets]
    return None


def _param(model: nn.Module) -> Tensor | None:
    return next(model.parameters(), None)


__all__ = ["AttentionCAM", "TimmAttentionSource", "targets_to_multihot", "predicted_targets"]
