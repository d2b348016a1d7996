"""Multi-scale, flip-augmented class activation maps in one call: ``cams = extractor(images, labels)``.

The pipeline is MCTformer's official CAM generation (docs/reference-notes.md#mctformer-cam-generation):

1. views ``[s0, flip(s0), s1, flip(s1), ...]`` of the image at each scale;
2. per view the raw low-resolution maps of a :class:`CamSource` (MCTformer-V2: fused class→patch
   attention of the last ``n_layers`` blocks × ReLU(head), then patch-affinity refinement with the
   patch→patch attention summed over ALL blocks);
3. bilinear upsampling to the image size (``align_corners=False``), × the image-level label vector,
   odd views flipped back, summed over views in float32 in view order;
4. per labelled class min–max normalisation ``(x - min) / (max - min + 1e-8)``; other classes 0.

The model-specific part is a :class:`CamSource` (a callable ``x [B,3,h,w] -> ViewCams``), so TS-CAM and
TransCAM plug in by providing their own source; :func:`cam_source_for` picks one for a model.

Scaled views: :func:`official_views` reproduces the official data pipeline exactly (PIL BICUBIC resize
of the uint8 image to ``(round(W·s), round(H·s))``, then ``ToTensor`` + ``Normalize``); the in-memory
``extractor(images, labels)`` call receives already-normalised tensors and resizes them with
``F.interpolate(mode='bicubic', antialias=True)`` — identical at scale 1.0, close but not bit-equal to
PIL at other scales. ``doei cam`` uses the exact path.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from doei.errors import DoeiError
from doei.models.cam_source import CamSource, ViewCams, resolve_cam_settings
from doei.models.registry import forward_errors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cam_source_for(model: nn.Module, n_layers: int | None = None, kind: str | None = None,
                   patch_refine: bool | None = None) -> CamSource:
    """The :class:`CamSource` of a model: its family's ``model.cam_source(kind=, n_layers=, patch_refine=)``
    for the request resolved against what the model declares (None = its default;
    :func:`doei.models.cam_source.resolve_cam_settings`: a kind it lacks or an option it does not read
    is a one-line DoeiError). A model without ``cam_source`` is a one-line DoeiError too (a
    ``forward_cams`` alone does not say how to read its maps)."""
    if hasattr(model, "cam_source"):
        s = resolve_cam_settings(model, kind, n_layers, patch_refine)
        return model.cam_source(kind=s.kind, n_layers=s.n_layers, patch_refine=s.patch_refine)
    raise DoeiError(f"{type(model).__name__}: no CAM source known for this model (a classifier family provides "
                    "cam_source(kind=, n_layers=, patch_refine=); see doei.models.registry.Classifier)")


def _bf16_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d weights and biases are bfloat16 (what CPU bfloat16 autocast
    casts them to); every other parameter (LayerNorm, position embeddings, class tokens) stays float32."""
    import copy

    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            mod.to(torch.bfloat16)
    return m


def normalize_image(image: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> normalised float32 [3, H, W], exactly ``ToTensor`` + ``Normalize`` (ImageNet)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DoeiError(f"image: expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) of a view at ``scale``: Python ``round`` of each side, as the official dataset does."""
    h, w = int(round(height * scale)), int(round(width * scale))
    if h < 1 or w < 1:
        raise DoeiError(f"scale {scale}: image {height}x{width} would become {h}x{w}")
    return h, w


def official_views(image: np.ndarray, scales: Sequence[float]) -> list[Tensor]:
    """The official per-scale inputs (unflipped) of one uint8 [H, W, 3] image: PIL BICUBIC resize to
    ``(round(W·s), round(H·s))`` (identity at 1.0), then ``normalize_image``. Returns [3, h_s, w_s] each."""
    from PIL import Image

    h, w = image.shape[:2]
    views = []
    for s in scales:
        sh, sw = scaled_size(h, w, s)
        if (sh, sw) == (h, w):
            views.append(normalize_image(image))
        else:
            pil = Image.fromarray(image).resize((sw, sh), resample=Image.BICUBIC)
            views.append(normalize_image(np.asarray(pil)))
    return views


def minmax_labelled(cams: Tensor, labels: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-class min–max ``(x - min) / (max - min + eps)`` over H, W for labelled classes; others 0.

    cams [B, C, H, W] float32, labels [B, C] multi-hot -> [B, C, H, W] in [0, 1].
    """
    flat = cams.flatten(2)
    mn = flat.amin(dim=2)[..., None, None]
    mx = flat.amax(dim=2)[..., None, None]
    out = (cams - mn) / (mx - mn + eps)
    return torch.where(labels[..., None, None] > 0, out, torch.zeros((), dtype=out.dtype, device=out.device))


class CamExtractor:
    """Callable CAM generator in the manner of the common CAM libraries.

    ``extractor = CamExtractor(model, scales=(1.0,), flip=True)`` then
    ``cams = extractor(images, labels)``:

    * ``images``: normalised float tensors, either [B, 3, H, W] (one size) or a list of [3, H_i, W_i];
    * ``labels``: multi-hot [B, C] (tensor, array or list); only labelled classes get a map;
    * returns [B, C, H, W] float32 in [0, 1] (a list of [C, H_i, W_i] for list input), on the images'
      device; the model runs on its own device (CPU or CUDA), without gradients, in eval mode.

    Options: ``kind``, ``n_layers``, ``patch_refine`` (None = the model's defaults; a kind it lacks or an
    option it does not read is refused: :func:`cam_source_for`), ``normalize=False`` returns the label-masked sum over views
    before min–max (the official ``sum_cam``), ``amp=True`` runs the model under CUDA fp16 autocast as
    the official code does on GPU (docs/reference-notes.md#mctformer-cam-generation; ignored on CPU), ``source`` overrides the model
    adapter (a :class:`CamSource`). Views of one scale (the image and its flip) run as one batch.
    """

    def __init__(self, model: nn.Module, scales: Sequence[float] = (1.0,), flip: bool = True,
                 n_layers: int | None = None, patch_refine: bool | None = None, kind: str | None = None,
                 normalize: bool = True, amp: bool = False,
                 source: CamSource | Callable[[Tensor], ViewCams] | None = None) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(not (s > 0) for s in scales):
            raise DoeiError(f"scales {list(scales)}: expected one or more positive numbers")
        self.model = model.eval()
        if source is None and amp and self.device.type == "cpu":
            # bfloat16 autocast casts every linear/conv weight at every forward; a copy holding those weights in
            # bfloat16 gives the same values (autocast rounds them the same way) without the per-forward casts
            source = cam_source_for(_bf16_weights(model), n_layers, kind, patch_refine)
        self.source = source if source is not None else cam_source_for(model, n_layers, kind, patch_refine)
        self.num_classes = int(getattr(self.source, "num_classes", getattr(model, "num_classes", 0)))
        self.scales = scales
        self.flip = flip
        self.normalize = normalize
        self.amp = amp

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def __call__(self, images: Tensor | Sequence[Tensor], labels) -> Tensor | list[Tensor]:
        if isinstance(images, Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise DoeiError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
            lab = self._labels(labels, images.shape[0])
            views = [self._resize(images, s) for s in self.scales]
            return self.from_views(views, lab, tuple(images.shape[-2:])).to(images.device)
        images = list(images)
        lab = self._labels(labels, len(images))
        out: list[Tensor] = []
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.ndim != 3 or img.shape[0] != 3:
                raise DoeiError(f"images[{i}]: expected a [3, H, W] tensor, got {getattr(img, 'shape', type(img))}")
            out.append(self(img[None], lab[i:i + 1])[0])
        return out

    def from_views(self, views: Sequence[Tensor], labels: Tensor, size: tuple[int, int]) -> Tensor:
        """CAMs from pre-scaled views: ``views[k]`` [B, 3, h_k, w_k] (or [3, h_k, w_k]) is the batch at
        the k-th scale, unflipped; ``labels`` [B, C]; ``size`` (H, W) of the output. -> [B, C, H, W]."""
        dev = self.device
        views = [v[None] if v.ndim == 3 else v for v in views]
        labels = labels.to(dev, torch.float32)
        b = views[0].shape[0]
        total: Tensor | None = None
        for v in views:
            if v.ndim != 4 or v.shape[0] != b or v.shape[1] != 3:
                raise DoeiError(f"views: expected [{b}, 3, h, w] per scale, got {tuple(v.shape)}")
            for m in self._view_maps(v.to(dev, torch.float32), size):   # [s, flip(s)] in official order
                m = m * labels[..., None, None]
                total = m if total is None else total + m
        assert total is not None
        return minmax_labelled(total, labels) if self.normalize else total

    def _view_maps(self, v: Tensor, size: tuple[int, int]) -> list[Tensor]:
        """Upsampled maps of a view and (with ``flip``) of its mirror image, flipped back."""
        b = v.shape[0]
        x = torch.cat([v, v.flip(-1)]) if self.flip else v
        with torch.no_grad(), self._autocast(), forward_errors(self.model, x):
            refined = self.source(x).refined
        up = F.interpolate(refined.float(), size=size, mode="bilinear", align_corners=False)
        if not self.flip:
            return [up]
        return [up[:b], up[b:].flip(-1)]

    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.amp and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _resize(self, images: Tensor, scale: float) -> Tensor:
        h, w = images.shape[-2:]
        sh, sw = scaled_size(h, w, scale)
        if (sh, sw) == (h, w):
            return images
        return F.interpolate(images.float(), size=(sh, sw), mode="bicubic", align_corners=False, antialias=True)

    def _labels(self, labels, batch: int) -> Tensor:
        lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).float()
        if lab.ndim == 1 and batch == 1:
            lab = lab[None]
        if lab.shape != (batch, self.num_classes):
            raise DoeiError(f"labels: expected multi-hot [{batch}, {self.num_classes}], got {tuple(lab.shape)}")
        return lab
