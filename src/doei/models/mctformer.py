"""MCTformer-V2 (Xu et al., CVPR 2022): one class token per class + a conv head on patch tokens.

Matches the official model (docs/reference-notes.md#mctformer-v2): tokens =
[C class tokens ; patches] + position embedding, pre-norm blocks, NO final LayerNorm (``norm`` is kept
only so checkpoints load), class logits = mean over channels of each class token, patch logits =
global average of the 3×3 conv head on the patch-token map, CAM = SUM (not mean) of the last
``n_layers`` blocks' class→patch attention × ReLU(head map), and patch→patch attention of ALL blocks
for the affinity refinement.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from doei.core import DOEIConfig
from doei.core.attention import ClassAttention
from doei.errors import DoeiError
from doei.models.cam_source import ViewCams, refine_with_patch_affinity, semantic_cams
from doei.models.pretrained import load_deit_weights
from doei.models.registry import register_model
from doei.models.vit import VisionTransformer


class CamOutput(NamedTuple):
    cls_logits: Tensor    # [B, C]
    patch_logits: Tensor  # [B, C]
    cams: Tensor          # [B, C, h, w] (fused / patchcam / mtatt, before any refinement)
    patch_attn: Tensor | None  # [L, B, P, P] head-mean patch→patch attention of every block (None if not asked)


class MCTformerV2(VisionTransformer):
    """MCTformer-V2 on a ViT backbone; ``doei`` switches DOEI on between blocks."""

    family = "mctformer"   # the classifier family (doei.models.registry.Classifier)
    cam_kinds = {"fused": "class→patch attention of the last n_layers blocks × ReLU(head map) (official)",
                 "patchcam": "ReLU of the conv head map on the patch tokens",
                 "mtatt": "class→patch attention of the last n_layers blocks"}
    cam_options = {"n_layers": 3, "patch_refine": True}

    def __init__(self, num_classes: int = 20, **kwargs) -> None:
        super().__init__(num_cls_tokens=num_classes, **kwargs)
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.embed_dim, num_classes, kernel_size=3, stride=1, padding=1)
        self.head.apply(_init_head)

    def _heads(self, x: Tensor, keep_attn: bool | list[str] = True):
        feats = self.forward_features(x, keep_attn)
        c = self.num_classes
        b, _, d = feats.tokens.shape
        h, w = feats.grid
        x_cls = feats.tokens[:, :c]
        x_patch = feats.tokens[:, c:].reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        head_out = self.head(x_patch)                                 # [B, C, h, w]
        return feats, x_cls.mean(dim=-1), head_out.mean(dim=(2, 3)), head_out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training forward: (class-token logits [B, C], patch-token logits [B, C]); no CAM, so no
        block's attention is kept."""
        _, cls_logits, patch_logits, _ = self._heads(x, keep_attn=False)
        return cls_logits, patch_logits

    def forward_cams(self, x: Tensor, n_layers: int = 3, kind: str = "fused",
                     patch_attn: bool | str = True) -> CamOutput:
        """Logits and raw CAMs. ``kind``: 'fused' (attention × ReLU(head)), 'patchcam' (ReLU(head)),
        'mtatt' (attention only). The attention term sums the last ``n_layers`` blocks.

        ``patch_attn=False`` (no affinity refinement): ``CamOutput.patch_attn`` is None and the blocks
        keep only what the CAM reads — the class rows of the last ``n_layers`` blocks (fused kernel
        otherwise); with it every block's full attention is kept (eager); ``"sum"``: their sum over the
        blocks only, [1, B, P, P] (all the refinement reads; no [L, B, P, P] stack)."""
        c = self.num_classes
        if not 1 <= n_layers <= self.depth:
            raise ValueError(f"n_layers must be in 1..{self.depth}, got {n_layers}")
        if patch_attn:
            reads = ["full"] * self.depth
        else:
            cam_read = "none" if kind == "patchcam" else "rows"
            reads = ["none"] * (self.depth - n_layers) + [cam_read] * n_layers
        feats, cls_logits, patch_logits, head_out = self._heads(x, reads)
        cams = _cams(class_patch_attention(feats.attn[-n_layers:], c), head_out, kind)
        if patch_attn == "sum":
            pa = feats.attn[0][:, c:, c:].to(torch.float32, copy=True)     # summed in float32 (also under AMP)
            for a in feats.attn[1:]:
                pa += a[:, c:, c:]
            pa = pa[None]                                                   # [1, B, P, P]
        else:
            pa = torch.stack([a[:, c:, c:] for a in feats.attn]) if patch_attn else None   # [L, B, P, P]
        return CamOutput(cls_logits, patch_logits, cams, pa)

    def cam_source(self, kind: str = "fused", n_layers: int = 3, patch_refine: bool = True) -> "MCTformerCamSource":
        """The adapter :class:`doei.cam.extractor.CamExtractor` uses (:class:`MCTformerCamSource`)."""
        return MCTformerCamSource(self, n_layers=n_layers, kind=kind, patch_refine=patch_refine)

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """ImageNet DeiT/timm weights (a file or ``timm:<name>``), the class token repeated per class and
        the position grid resized (:func:`doei.models.pretrained.load_deit_weights`); returns the keys
        left at their initialisation (``head.*``)."""
        return load_deit_weights(self, source)

    def classification_loss(self, outputs: Tensor | tuple[Tensor, ...], target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """MCTformer-V2's objective (official engine.py): (total, class-token term, patch-token term) with
        ``multilabel_soft_margin_loss(cls_logits, y) + multilabel_soft_margin_loss(patch_logits, y)``;
        ``outputs`` = ``self(x)``, ``target`` [B, C] multi-hot float, logits cast to float32 (AMP-safe).
        One tensor instead of the pair: its term only, (total, total, 0)."""
        if isinstance(outputs, Tensor):
            total = F.multilabel_soft_margin_loss(outputs.float(), target)
            return total, total, torch.zeros_like(total)
        cls = F.multilabel_soft_margin_loss(outputs[0].float(), target)
        pat = F.multilabel_soft_margin_loss(outputs[1].float(), target)
        return cls + pat, cls, pat

    def prediction_logits(self, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
        """The image-level scores [B, C] it predicts with: the class-token logits."""
        return outputs if isinstance(outputs, Tensor) else outputs[0]


def class_patch_attention(attn: list, num_cls: int) -> Tensor | None:
    """Σ over the given blocks of the class→patch attention [B, C, P], from per-block readings (head-mean
    [B, T, T] or :class:`doei.core.attention.ClassAttention`); None if every entry is None."""
    parts = [(a.rows if isinstance(a, ClassAttention) else a[:, :num_cls])[:, :, num_cls:]
             for a in attn if a is not None]
    return torch.stack(parts).sum(0) if parts else None


def mctformer_cams(attn: Tensor, head_out: Tensor, n_layers: int = 3, kind: str = "fused") -> Tensor:
    """MCTformer-V2 CAMs [B, C, h, w] from stacked head-mean attention [L, B, T, T] and head map [B, C, h, w]
    (the fused map is :func:`doei.models.cam_source.semantic_cams` of the two)."""
    c = head_out.shape[1]
    return _cams(attn[-n_layers:].sum(0)[:, :c, c:], head_out, kind)


def _cams(cls_patch: Tensor | None, head_out: Tensor, kind: str) -> Tensor:
    b, c, h, w = head_out.shape
    feature_map = F.relu(head_out.detach())
    if kind == "patchcam":
        return feature_map
    if kind not in ("fused", "mtatt"):
        raise ValueError(f"unknown CAM kind {kind!r} (fused, patchcam, mtatt)")
    mtatt = cls_patch.reshape(b, c, h, w)
    return semantic_cams(mtatt, feature_map) if kind == "fused" else mtatt


def _init_head(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        nn.init.zeros_(m.bias)


@register_model
def mctformer_v2_deit_small(num_classes: int = 20, doei: DOEIConfig | None = None, img_size: int = 224,
                            drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> MCTformerV2:
    """The paper's MCTformer-V2 on DeiT-S (patch 16, width 384, depth 12, 6 heads)."""
    return MCTformerV2(num_classes=num_classes, img_size=img_size, patch_size=16, embed_dim=384, depth=12,
                       num_heads=6, mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate,
                       drop_path_rate=drop_path_rate, doei=doei)


@register_model
def mctformer_v2_tiny_conv(num_classes: int = 10, doei: DOEIConfig | None = None, img_size: int = 64,
                           depth: int = 6, embed_dim: int = 192, num_heads: int = 3, patch_size: int = 8,
                           drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> MCTformerV2:
    """Small from-scratch variant for the synthetic benchmark on CPU: conv stem, depth 6, width 192."""
    return MCTformerV2(num_classes=num_classes, img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                       depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate,
                       drop_path_rate=drop_path_rate, stem="conv", doei=doei)


class MCTformerCamSource:
    """MCTformer-V2 maps: ``kind`` 'fused' | 'patchcam' | 'mtatt' over the last ``n_layers`` blocks,
    optionally refined with the patch→patch attention of all blocks (the official ``--patch-attn-refine``)."""

    def __init__(self, model: nn.Module, n_layers: int = 3, kind: str = "fused", patch_refine: bool = True) -> None:
        depth = getattr(model, "depth", None)
        if depth is not None and not 1 <= n_layers <= depth:
            raise DoeiError(f"n_layers={n_layers}: expected 1..{depth} (the model's depth)")
        if kind not in MCTformerV2.cam_kinds:
            raise DoeiError(f"CAM kind {kind!r}: expected one of {', '.join(MCTformerV2.cam_kinds)}")
        self.model = model
        self.num_classes = int(model.num_classes)
        self.n_layers = n_layers
        self.kind = kind
        self.patch_refine = patch_refine

    def __call__(self, x: Tensor) -> ViewCams:
        out = self.model.forward_cams(x, n_layers=self.n_layers, kind=self.kind,
                                      patch_attn="sum" if self.patch_refine else False)
        if not self.patch_refine:
            return ViewCams(out.cls_logits, out.cams, out.cams)
        dev = x.device.type
        if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.bfloat16:
            with torch.autocast(device_type=dev, enabled=False):   # bfloat16's 8-bit mantissa: refine in float32
                refined = refine_with_patch_affinity(out.cams.float(), out.patch_attn.float())
        else:                                                      # float32, or float16 autocast as the official code
            refined = refine_with_patch_affinity(out.cams, out.patch_attn)
        return ViewCams(out.cls_logits, out.cams, refined)
