"""TS-CAM on a timm DeiT-III trunk (Touvron et al., ECCV 2022), with DOEI through the timm plug-in.

A classifier family added as one module (docs/models/tscam_timm.md): timm builds the trunk
(``deit3_small_patch16_224`` and friends, no weights fetched unless ``model.pretrained`` says
``timm:<name>``), :func:`doei.models.timm_plugin.plug` puts DOEI between its blocks, and TS-CAM's head
reads the patch tokens: a 3×3 conv on the patch grid whose global average is the logits, CAM = class→patch
attention summed over ALL blocks × that head map (:func:`doei.models.cam_source.semantic_cams`, the same
computation as :mod:`doei.models.tscam`; read by :class:`doei.models.cam_source.SemanticCamSource`).

Any input size: the trunk is built with timm's ``dynamic_img_size`` and ``dynamic_img_pad`` (a side
that its patch does not divide is padded at the right/bottom), so 37×45 gives a 3×3 grid.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from doei.core import DOEIConfig
from doei.errors import DoeiError
from doei.models.cam_source import SemanticCamSource, class_attention, semantic_cams
from doei.models.registry import register_model, register_prefix
from doei.models.timm_plugin import get_plug, plug


class TimmTSCAMOutput(NamedTuple):
    logits: Tensor        # [B, K]
    cams: Tensor          # [B, K, h, w] semantic-aware maps (no ReLU)
    head_out: Tensor      # [B, K, h, w]


class TimmTSCAM(nn.Module):
    """TS-CAM's conv head on a DOEI-plugged timm ViT trunk (``trunk``: built without a classifier)."""

    family = "tscam_timm"   # the classifier family (doei.models.registry.Classifier)
    cam_kinds = {"semantic": "class→patch attention summed over ALL blocks × the conv head map (ReLU'd)"}
    cam_options: dict = {}   # all blocks, no refinement: neither n_layers nor patch_refine
    num_cls_tokens = 1

    def __init__(self, trunk: nn.Module, num_classes: int, doei: DOEIConfig | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.num_classes = num_classes
        self.depth = len(trunk.blocks)
        self.head = nn.Conv2d(trunk.embed_dim, num_classes, kernel_size=3, stride=1, padding=1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        plug(trunk, doei if doei is not None else DOEIConfig(enabled=False))   # also the CAMs' attention reader
        if get_plug(trunk).num_cls != 1:
            raise DoeiError(f"{type(trunk).__name__}: TS-CAM needs one class token, the trunk has "
                            f"{get_plug(trunk).num_cls}")

    @property
    def doei_stats(self) -> list[dict] | None:
        """Per-block DOEI statistics of the plug (None = not recorded; set ``[]`` to record)."""
        return get_plug(self.trunk).stats

    @doei_stats.setter
    def doei_stats(self, value: list[dict] | None) -> None:
        get_plug(self.trunk).stats = value

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.trunk.forward_features(x)                    # [B, 1 + P, D], final norm applied
        ps = get_plug(self.trunk).patch_size
        h, w = -(-x.shape[-2] // ps), -(-x.shape[-1] // ps)          # the padded grid (dynamic_img_pad)
        b, _, d = tokens.shape
        head_out = self.head(tokens[:, 1:].reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous())
        return head_out.mean(dim=(2, 3)), head_out

    def forward(self, x: Tensor) -> Tensor:
        """Training forward: logits [B, K]."""
        return self._heads(x)[0]

    def forward_cams(self, x: Tensor) -> TimmTSCAMOutput:
        """Logits and TS-CAM maps (no ReLU) from the attention of every block, recorded by the plug."""
        p = get_plug(self.trunk)
        with p.recording(range(1, self.depth + 1)):
            logits, head_out = self._heads(x)
            attn = torch.stack([p.recorded[i] for i in range(1, self.depth + 1)])   # [L, B, T, T]
        cams = semantic_cams(class_attention(attn, tuple(head_out.shape[-2:]), num_cls=1), head_out.detach())
        return TimmTSCAMOutput(logits, cams, head_out)

    def cam_source(self, kind: str = "semantic", n_layers: None = None, patch_refine: None = None
                   ) -> SemanticCamSource:
        """The shared TS-CAM source (:class:`doei.models.cam_source.SemanticCamSource`); no options."""
        if kind not in self.cam_kinds or n_layers is not None or patch_refine is not None:
            raise DoeiError(f"{self.family} CAM source: kind {kind!r}, n_layers {n_layers!r}, patch_refine "
                            f"{patch_refine!r}: it has kind 'semantic' and no options")
        return SemanticCamSource(self)

    def classification_loss(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """TS-CAM's objective, soft-margin loss on the logits (float32), as (total, total, 0)."""
        total = F.multilabel_soft_margin_loss(outputs.float(), target)
        return total, total, torch.zeros_like(total)

    def prediction_logits(self, outputs: Tensor) -> Tensor:
        """The image-level scores [B, K]: its logits."""
        return outputs

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """ImageNet weights of the trunk (a file or ``timm:<name>``; its classifier dropped); returns the keys
        left at initialisation (TS-CAM's ``head.*``). A trunk key missing or of another shape is one line."""
        from doei.models.pretrained import read_pretrained

        sd = {k.removeprefix("trunk."): v for k, v in read_pretrained(source).items()    # a timm trunk or this model
              if not k.startswith(("head.", "head_dist."))}
        own = self.trunk.state_dict()
        bad = [k for k in own if k not in sd or tuple(sd[k].shape) != tuple(own[k].shape)]
        if bad:
            raise DoeiError(f"{source}: not weights of this trunk: {bad[0]!r} missing or of another shape "
                            f"({len(bad)} keys in all)")
        self.trunk.load_state_dict({k: sd[k] for k in own})
        return [f"head.{k}" for k in self.head.state_dict()]


def tscam_on_timm(name: str, num_classes: int = 20, doei: DOEIConfig | None = None, img_size: int | None = None,
                  drop_rate: float = 0.0, drop_path_rate: float = 0.0, **options) -> TimmTSCAM:
    """``model.name: timm:<name>`` — TS-CAM's head on ANY timm ViT of that name with one class token, DOEI
    through the plug-in (``options``: timm's own keyword arguments, e.g. ``depth``/``embed_dim``/``num_heads``
    to shrink it). No weights are fetched here: ``model.pretrained: timm:<name>`` loads ImageNet's."""
    import timm

    if not name:
        raise DoeiError("model name 'timm:': expected timm:<timm model name>, e.g. timm:deit_small_patch16_224")
    kw = {"pretrained": False, "num_classes": 0, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate,
          "dynamic_img_size": True, "dynamic_img_pad": True, **options}
    if img_size:
        kw["img_size"] = img_size
    try:
        trunk = timm.create_model(name, **kw)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError/TypeError/KeyError for unknown names/options
        raise DoeiError(f"model 'timm:{name}': timm cannot build it ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None
    return TimmTSCAM(trunk, num_classes, doei)


register_prefix("timm:", tscam_on_timm)


@register_model
def tscam_deit3_small(num_classes: int = 20, doei: DOEIConfig | None = None, img_size: int = 224,
                      drop_rate: float = 0.0, drop_path_rate: float = 0.1, depth: int = 12, embed_dim: int = 384,
                      num_heads: int = 6, mlp_ratio: float = 4.0) -> TimmTSCAM:
    """TS-CAM on timm's DeiT-III small (patch 16; ``depth``/``embed_dim``/``num_heads``/``mlp_ratio`` shrink it
    for tests). ``model.pretrained: timm:deit3_small_patch16_224.fb_in1k`` starts from ImageNet."""
    import timm

    trunk = timm.create_model("deit3_small_patch16_224", pretrained=False, num_classes=0, img_size=img_size,
                              depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate, dynamic_img_size=True,
                              dynamic_img_pad=True)
    return TimmTSCAM(trunk, num_classes, doei)
