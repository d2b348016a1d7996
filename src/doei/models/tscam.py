"""TS-CAM (Gao et al., ICCV 2021) on DeiT: one cls token, 3×3 conv semantic head on patch tokens.

Matches the official model (docs/reference-notes.md#ts-cam): standard DeiT with its
final LayerNorm, logits = global average of the head map, CAM = (cls→patch attention summed over ALL
blocks) × head map, with NO ReLU on the head map. Unlike the official code (224² only), any input
size works: position embeddings are interpolated as MCTformer does.
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
from doei.models.cam_source import SemanticCamSource, class_attention, semantic_cams
from doei.models.pretrained import load_deit_weights
from doei.models.registry import register_model
from doei.models.vit import VisionTransformer


class TSCAMOutput(NamedTuple):
    logits: Tensor        # [B, K]
    cams: Tensor          # [B, K, h, w] semantic-aware maps
    head_out: Tensor      # [B, K, h, w]
    patch_attn: Tensor | None  # [L, B, P, P] head-mean patch→patch attention of every block (None if not asked)


class TSCAM(VisionTransformer):
    """TS-CAM; ``doei`` (PPDO + HFA, C = 1) switches DOEI on between blocks."""

    family = "tscam"   # the classifier family (doei.models.registry.Classifier)
    cam_kinds = {"semantic": "class→patch attention summed over ALL blocks × the conv head map (ReLU'd)"}
    cam_options: dict = {}   # all blocks, no refinement: neither n_layers nor patch_refine

    def __init__(self, num_classes: int = 20, **kwargs) -> None:
        super().__init__(num_cls_tokens=1, **kwargs)
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.embed_dim, num_classes, kernel_size=3, stride=1, padding=1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def _heads(self, x: Tensor, keep_attn: bool | list[str] = True):
        feats = self.forward_features(x, keep_attn)
        tokens = self.norm(feats.tokens)
        b, _, d = tokens.shape
        h, w = feats.grid
        head_out = self.head(tokens[:, 1:].reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous())
        return feats, head_out.mean(dim=(2, 3)), head_out

    def forward(self, x: Tensor) -> Tensor:
        """Training forward: logits [B, K] (no CAM, so no block's attention is kept)."""
        return self._heads(x, keep_attn=False)[1]

    def forward_cams(self, x: Tensor, patch_attn: bool = True) -> TSCAMOutput:
        """Logits, CAMs, head map and (``patch_attn``) every block's patch→patch attention [L, B, P, P].
        ``patch_attn=False``: that field is None and the blocks keep only the class-token row the CAM
        reads (fused kernel + one row: :class:`doei.models.vit.Attention` ``read="rows"``)."""
        if patch_attn:
            feats, logits, head_out = self._heads(x)
            attn = torch.stack(feats.attn)                            # [L, B, T, T]
            return TSCAMOutput(logits, tscam_cams(attn, head_out), head_out, attn[:, :, 1:, 1:])
        feats, logits, head_out = self._heads(x, ["rows"] * self.depth)
        cls_attn = torch.stack([a.rows if isinstance(a, ClassAttention) else a[:, :1] for a in feats.attn])
        return TSCAMOutput(logits, tscam_cams(cls_attn, head_out), head_out, None)

    def cam_source(self, kind: str = "semantic", n_layers: None = None, patch_refine: None = None
                   ) -> SemanticCamSource:
        """Adapter for :class:`doei.cam.extractor.CamExtractor`: views [B, 3, h, w] -> ViewCams
        (:class:`doei.models.cam_source.SemanticCamSource` over :meth:`forward_cams`).

        TS-CAM's map sums ALL blocks and has no refinement, so it reads neither ``n_layers`` nor
        ``patch_refine`` (:func:`doei.models.cam_source.resolve_cam_settings` refuses them); negative
        values are cut (ReLU) before up-sampling (the official localisation code min-max normalises the
        raw map instead).
        """
        if kind not in self.cam_kinds or n_layers is not None or patch_refine is not None:
            raise DoeiError(f"TS-CAM CAM source: kind {kind!r}, n_layers {n_layers!r}, patch_refine "
                            f"{patch_refine!r}: it has kind 'semantic' and no options")
        return SemanticCamSource(self, patch_attn=False)   # the class rows only: no full attention kept

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """ImageNet DeiT/timm weights (a file or ``timm:<name>``) as they are (one class token), the
        position grid resized (:func:`doei.models.pretrained.load_deit_weights`); returns the keys left
        at their initialisation (``head.*``: TS-CAM's conv head replaces DeiT's linear one)."""
        return load_deit_weights(self, source)

    def classification_loss(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """TS-CAM's objective: ``multilabel_soft_margin_loss(logits, y)`` on its one output (the GAP of the
        head map; float32), as (total, total, 0) so that the training log keeps two loss columns."""
        if isinstance(outputs, Tensor):
            total = F.multilabel_soft_margin_loss(outputs.float(), target)
            return total, total, torch.zeros_like(total)
        raise TypeError("TS-CAM's forward returns one logits tensor, got a tuple")

    def prediction_logits(self, outputs: Tensor) -> Tensor:
        """The image-level scores [B, K] it predicts with: its logits."""
        return outputs if isinstance(outputs, Tensor) else outputs[0]


def tscam_cams(attn: Tensor, head_out: Tensor) -> Tensor:
    """TS-CAM maps [B, K, h, w]: Σ over all blocks of cls→patch attention [L, B, T, T] (or the class rows
    alone, [L, B, 1, T]) × head map (no ReLU): :func:`doei.models.cam_source.semantic_cams`."""
    return semantic_cams(class_attention(attn, tuple(head_out.shape[-2:]), num_cls=1), head_out.detach())


@register_model
def tscam_deit_small(num_classes: int = 20, doei: DOEIConfig | None = None, img_size: int = 224,
                     drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> TSCAM:
    """The paper's TS-CAM on DeiT-S (patch 16, width 384, depth 12, 6 heads)."""
    return TSCAM(num_classes=num_classes, img_size=img_size, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                 mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate, drop_path_rate=drop_path_rate, doei=doei)


@register_model
def tscam_tiny_conv(num_classes: int = 10, doei: DOEIConfig | None = None, img_size: int = 64, depth: int = 6,
                    embed_dim: int = 192, num_heads: int = 3, patch_size: int = 8, drop_rate: float = 0.0,
                    drop_path_rate: float = 0.0) -> TSCAM:
    """Small from-scratch variant for the synthetic benchmark on CPU (conv stem, depth 6, width 192)."""
    return TSCAM(num_classes=num_classes, img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                 depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate,
                 drop_path_rate=drop_path_rate, stem="conv", doei=doei)
