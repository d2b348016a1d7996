"""Conformer (Peng et al., ICCV 2021) as TransCAM (Li et al., 2023) uses it, with an optional DOEI hook.

A dual-branch network: a ResNet-like CNN branch and a ViT-like transformer branch that exchange
features after every block through feature-coupling units (FCUDown: CNN map -> tokens, FCUUp:
tokens -> CNN map). TransCAM's variant keeps the last CNN stage at stride 16 (its last fusion
block has a 1×1 residual projection but stride 1) and replaces the CNN classifier by a 3×3 conv
head whose map ``x_conv`` is average-pooled into logits; the transformer classifier reads the
LayerNorm'd cls token. Both heads have ``num_classes + 1`` outputs when ``background_channel``
is set (the official layout: channel 0 is a never-supervised background channel).

Parameter names and shapes equal the official TransCAM / Conformer checkpoints (718 keys for
Conformer-S; see ``../shared/reference/keys_transcam_conformer_small.json``), so those weights load
with :func:`load_transcam_weights`. Numerics follow the official code (LayerNorm eps 1e-6 in
blocks and FCUDown, 1e-5 in ``trans_norm``; BatchNorm eps 1e-6 in ConvBlocks/FCUUp, 1e-5 in the
stem; nearest up-sampling in FCUUp; attention ``softmax(q kᵀ · scale)``: eager where the CAM reads it,
fused elsewhere, float rounding apart; ``doei.models.vit.set_attention_impl(model, "eager")`` pins the
official eager formula everywhere).

Differences from the official code (documented in docs/models/transcam.md):

* Non-square inputs work (grids come from the feature maps, never from ``int(sqrt(P))``); both
  sides must be multiples of the total stride (16, or 8 with ``stem_pool=False``) so that the two
  branches' grids agree — anything else raises :class:`doei.errors.DoeiError` instead of a shape
  error deep inside the network.
* ``forward`` returns the foreground logits of both branches for training; ``forward_all`` a
  :class:`ConformerOutput` (logits, conv map, attention); :meth:`Conformer.cam_forward` the
  official ``(logits_conv, logits_trans, cams)``.
* ``stem_pool=False`` (not in the official code) drops the stem max-pool for the small CPU variant
  (total stride 8), so that 64-96 px images still give an 8×8-12×12 token grid.
* DOEI (``doei``): after each transformer block i (``trans_1``, ``conv_trans_2..L``), before its
  tokens reach the next block and the FCUUp, ``x_t = doei_update(x_t, A_i, 1, i, L, cfg, Ĝ)``; Ĝ
  comes from the normalised image and the transformer branch's patch embedding
  (``trans_patch_conv``). The CNN branch is not touched. With ``doei=None`` or disabled and the
  eager attention pinned the forward pass is the official one, bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doei.core.config import DOEIConfig
from doei.core.doei import doei_update
from doei.core.hfa import hfa_affinity
from doei.errors import DoeiError
from doei.models.cam_source import ViewCams
from doei.models.weights import load_model_weights, read_state_dict, unwrap_state_dict
from doei.models.pretrained import TIMM_PREFIX
from doei.models.registry import register_model
from doei.models.conformer_blocks import ConvBlock, ConvTransBlock, TokenHook
from doei.models.vit import Block  # pre-norm block returning head-mean attention, eps 1e-6

CamMethod = Literal["transcam", "convcam", "clsattn", "attnagg"]
CAM_METHODS: tuple[str, ...] = ("transcam", "convcam", "clsattn", "attnagg")

@dataclass
class ConformerOutput:
    """What one forward pass returns (K = number of outputs incl. the background channel).

    logits_conv [B,K] (avg-pooled ``x_conv``), logits_trans [B,K] (head on the normed cls token),
    x_conv [B,K,h,w] (3×3 conv head map), feature [B,C,h,w] (last CNN map), tokens [B,1+h·w,D]
    (``trans_norm`` output), grid (h, w), attn_sum [B,T,T] (Σ over blocks of head-mean attention;
    only with ``need_attn``), attn_layers (list of L [B,T,T]; only with ``all_attn``).
    """

    logits_conv: Tensor
    logits_trans: Tensor
    x_conv: Tensor
    feature: Tensor
    tokens: Tensor
    grid: tuple[int, int]
    attn_sum: Tensor | None = None
    attn_layers: list[Tensor] | None = None
    doei_stats: list[dict] = field(default_factory=list)


class Conformer(nn.Module):
    """TransCAM's Conformer with both classifiers; see the module docstring.

    Constructor arguments follow the official ``Net`` (``patch_size`` 16: the transformer branch
    patchifies the stride-4 stem map with a ``patch_size/4`` conv). ``num_classes`` counts the
    FOREGROUND classes; with ``background_channel`` the heads get one more output in front
    (official: 20 + 1 = 21). ``doei``: a :class:`DOEIConfig` (None = off).
    """

    family = "transcam"   # the classifier family (doei.models.registry.Classifier)
    num_cls_tokens = 1    # one class token in front of the transformer branch's patch tokens
    cam_kinds = {"transcam": "conv head map refined by the patch→patch attention of all blocks (official)",
                 "clsattn": "class→patch attention of all blocks × the conv head map",
                 "attnagg": "conv head map aggregated with the transposed patch→patch attention",
                 "convcam": "the conv head map alone"}
    cam_options = {"patch_refine": True}   # off: the plain conv head map whatever the kind

    def __init__(self, num_classes: int = 20, background_channel: bool = True, patch_size: int = 16,
                 in_chans: int = 3, stem_channels: int = 64, base_channel: int = 64, channel_ratio: int = 4,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, stem_pool: bool = True, doei: DOEIConfig | None = None) -> None:
        super().__init__()
        if depth % 3 or depth < 3:
            raise ValueError(f"depth must be a positive multiple of 3, got {depth}")
        if patch_size % 16:
            raise ValueError(f"patch_size must be a multiple of 16 (three stage strides p/4, p/8, p/16), got {patch_size}")
        if doei is not None:
            doei.validate_depth(depth)
            doei.refuse_readings("the Conformer (TransCAM)")
        self.num_classes = num_classes
        self.background_channel = background_channel
        self.fg_offset = int(background_channel)
        self.num_outputs = num_classes + self.fg_offset
        self.embed_dim = embed_dim
        self.depth = depth
        self.stem_pool = stem_pool
        self.total_stride = patch_size if stem_pool else patch_size // 2
        self.doei = doei
        self.doei_stats: list[dict] | None = None  # set to [] to record per-block DOEI statistics (as the ViT)
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, depth)]
        c1, c2, c3 = base_channel * channel_ratio, base_channel * channel_ratio * 2, base_channel * channel_ratio * 4
        dw = patch_size // 4

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.trans_norm = nn.LayerNorm(embed_dim)                                   # eps 1e-5 (official)
        self.trans_cls_head = nn.Linear(embed_dim, self.num_outputs)
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head = nn.Conv2d(c3, self.num_outputs, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(in_chans, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)                                    # eps 1e-5 (official)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        self.conv_1 = ConvBlock(stem_channels, c1, stride=1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(stem_channels, embed_dim, kernel_size=dw, stride=dw)
        self.trans_1 = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[0])
        per = depth // 3
        for i in range(2, depth + 1):
            stage = (i - 1) // per                     # 0: blocks 2..per, 1: next per, 2: last per
            first = i == stage * per + 1 and stage > 0
            cin = (c1, c1 if first else c2, c2 if first else c3)[stage]
            cout = (c1, c2, c3)[stage]
            self.add_module(f"conv_trans_{i}", ConvTransBlock(
                cin, cout, res_conv=first, stride=2 if first else 1, dw_stride=dw >> stage, embed_dim=embed_dim,
                num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[i - 1], last_fusion=i == depth))
        self._init_weights()

    def _init_weights(self) -> None:
        """Fresh-model initialisation as the official code (trunc-normal 0.02 linears, Kaiming convs)."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def check_input(self, x: Tensor) -> None:
        """Raise DoeiError unless x is [B, 3, H, W] with H, W multiples of the total stride."""
        s = self.total_stride
        if x.dim() != 4 or x.shape[1] != self.conv1.in_channels:
            raise DoeiError(f"Conformer input: expected [B, {self.conv1.in_channels}, H, W], got {list(x.shape)}")
        if x.shape[-2] % s or x.shape[-1] % s or x.shape[-2] < s or x.shape[-1] < s:
            raise DoeiError(f"Conformer input size {x.shape[-2]}x{x.shape[-1]}: both sides must be positive "
                            f"multiples of {s} (the two branches' grids disagree otherwise); resize or pad")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training forward: FOREGROUND logits (conv branch [B, num_classes], transformer branch
        [B, num_classes]); the background channel, if any, is dropped. TransCAM's loss is the
        multi-label soft-margin loss of their SUM (:func:`transcam_loss`)."""
        out = self.forward_all(x, with_stats=self.doei_stats is not None)   # no per-block host syncs otherwise
        o = self.fg_offset
        return out.logits_conv[:, o:], out.logits_trans[:, o:]

    def forward_all(self, x: Tensor, need_attn: bool = False, all_attn: bool = False,
                    with_stats: bool = True) -> ConformerOutput:
        """x [B, 3, H, W] normalised image -> :class:`ConformerOutput` (all K outputs).

        ``need_attn`` accumulates Σ_blocks head-mean attention (for the CAMs); ``all_attn`` also
        keeps every block's head-mean attention (L × [B, T, T]: large at big inputs). ``with_stats``:
        fill ``doei_stats`` (two norms and a host sync per DOEI block; the training forward skips it
        unless ``model.doei_stats`` is set, as the ViT does).
        """
        self.check_input(x)
        b = x.shape[0]
        x_base = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x_cnn, _ = self.conv_1(x_base)
        embed_map = self.trans_patch_conv(x_base)                         # [B, D, h, w]
        grid = (embed_map.shape[-2], embed_map.shape[-1])
        embed = embed_map.flatten(2).transpose(1, 2)                      # [B, P, D]
        x_t = torch.cat([self.cls_token.expand(b, -1, -1), embed], dim=1)

        stats: list[dict] = []
        attn_sum: Tensor | None = None
        layers: list[Tensor] | None = [] if all_attn else None
        hook_for = self._doei_hooks(x, embed, grid, stats if with_stats or self.doei_stats is not None else None)

        def record(a: Tensor) -> None:
            nonlocal attn_sum
            if need_attn or all_attn:
                attn_sum = a if attn_sum is None else attn_sum + a
            if layers is not None:
                layers.append(a)

        keep = need_attn or all_attn      # else: fused attention, DOEI blocks read only the class rows/columns
        hook = hook_for(1)
        x_t, attn = self.trans_1(x_t, read="full" if keep else "class" if hook is not None else "none", num_cls=1)
        record(attn)
        if hook is not None:
            x_t = hook(x_t, attn)
        for i in range(2, self.depth + 1):
            hook = hook_for(i)
            read = "full" if keep else "class" if hook is not None else "none"
            x_cnn, x_t, attn = getattr(self, f"conv_trans_{i}")(x_cnn, x_t, hook, read)
            record(attn)

        x_conv = self.conv_cls_head(x_cnn)
        tokens = self.trans_norm(x_t)
        if self.doei_stats is not None:
            self.doei_stats.extend(stats)
        return ConformerOutput(
            logits_conv=self.pooling(x_conv).flatten(1), logits_trans=self.trans_cls_head(tokens[:, 0]),
            x_conv=x_conv, feature=x_cnn, tokens=tokens, grid=grid, attn_sum=attn_sum, attn_layers=layers,
            doei_stats=stats)

    def _doei_hooks(self, image: Tensor, embed: Tensor, grid: tuple[int, int],
                    stats: list[dict] | None) -> Callable[[int], TokenHook | None]:
        """Per-block DOEI hooks (None where DOEI does not act). Ĝ is built once per forward. ``stats``
        None: no per-block statistics (no norms, no host sync)."""
        cfg = self.doei
        if cfg is None or not cfg.enabled:
            return lambda i: None
        g_hat = hfa_affinity(image, embed, grid, self.total_stride) if cfg.uses_hfa else None
        depth = self.depth

        def hook_for(i: int) -> TokenHook | None:
            if not cfg.applies_to(i, depth):
                return None

            def hook(x_t: Tensor, attn: Tensor) -> Tensor:
                if stats is None:
                    return doei_update(x_t, attn, 1, i, depth, cfg, g_hat, None)
                s: dict = {"block": i}
                out = doei_update(x_t, attn, 1, i, depth, cfg, g_hat, s)
                stats.append(s)
                return out
            return hook
        return hook_for

    def cam_source(self, kind: str = "transcam", n_layers: None = None, patch_refine: bool = True
                   ) -> "ConformerCamSource":
        """The adapter :class:`doei.cam.extractor.CamExtractor` uses. TransCAM sums the attention of all
        blocks, so it reads no ``n_layers`` (refused)."""
        if n_layers is not None:
            raise DoeiError(f"TransCAM CAM source: n_layers {n_layers!r}: it sums the attention of all blocks")
        return ConformerCamSource(self, kind=kind, patch_refine=patch_refine)

    def cam_forward(self, x: Tensor, method: CamMethod = "transcam") -> tuple[Tensor, Tensor, Tensor]:
        """The official ``Net.forward(method, x)``: (logits_conv [B,K], logits_trans [B,K], cams [B,K,h,w])."""
        out = self.forward_all(x, need_attn=method in ("transcam", "clsattn", "attnagg"))
        return out.logits_conv, out.logits_trans, transcam_maps(out.x_conv, out.attn_sum, method)

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """TransCAM's start: an ImageNet Conformer checkpoint FILE (timm has no Conformer), its two
        classifier heads dropped (:func:`load_transcam_weights` with ``imagenet=True``); returns the
        head keys (left at their initialisation)."""
        if isinstance(source, str) and source.startswith(TIMM_PREFIX):
            raise DoeiError(f"model.pretrained = {source!r}: a TransCAM Conformer loads an ImageNet Conformer "
                            "checkpoint file (timm has no Conformer)")
        load_transcam_weights(self, source, imagenet=True)
        return [k for k in self.state_dict() if k in HEAD_KEYS]

    def classification_loss(self, outputs: tuple[Tensor, Tensor], target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """TransCAM's objective (:func:`transcam_loss`: the soft-margin loss on the SUM ``logits_conv +
        logits_trans``, float32; not the sum of two per-branch losses) as (total, total, 0)."""
        conv, trans = outputs
        total = transcam_loss(conv.float(), trans.float(), target)
        return total, total, torch.zeros_like(total)

    def prediction_logits(self, outputs: tuple[Tensor, Tensor]) -> Tensor:
        """The image-level scores [B, num_classes] it predicts with: ``logits_conv + logits_trans`` (what
        its loss is computed on)."""
        if isinstance(outputs, Tensor):
            return outputs
        return outputs[0] + outputs[1]


class ConformerCamSource:
    """Adapter for :class:`doei.cam.extractor.CamExtractor` (the project's generic multi-scale CAM
    step): views [B, 3, h, w] -> ``ViewCams(logits, cams, refined)`` over the FOREGROUND classes,
    with logits = ``logits_conv + logits_trans`` (what TransCAM trains), cams = the conv head map
    and refined = the TransCAM map (``kind`` 'transcam', or 'clsattn'/'attnagg'/'convcam').
    TransCAM sums the attention of ALL blocks (it reads no ``n_layers``). The generic extractor
    resizes by scale factors (view sides must stay multiples of the total stride) and min-max
    normalises without ReLU; :mod:`doei.cam.transcam` is TransCAM's own pipeline."""

    def __init__(self, model: "Conformer", kind: str = "transcam", patch_refine: bool = True) -> None:
        method = kind
        if method not in CAM_METHODS:
            raise DoeiError(f"TransCAM CAM kind {kind!r}: expected one of {', '.join(CAM_METHODS)}")
        self.model, self.method, self.patch_refine = model, method, patch_refine
        self.num_classes = int(model.num_classes)

    def __call__(self, x: Tensor) -> ViewCams:
        o = self.model.fg_offset
        out = self.model.forward_all(x, need_attn=self.patch_refine and self.method != "convcam")
        cams = out.x_conv[:, o:]
        refined = transcam_maps(out.x_conv, out.attn_sum, self.method)[:, o:] if self.patch_refine else cams
        return ViewCams((out.logits_conv + out.logits_trans)[:, o:], cams, refined)


def transcam_maps(x_conv: Tensor, attn_sum: Tensor | None, method: CamMethod = "transcam") -> Tensor:
    """TransCAM's CAM variants from the conv head map and the summed attention.

    x_conv [B,K,h,w]; attn_sum [B,1+P,1+P] = Σ_blocks head-mean attention (P = h·w, cls first).
    ``transcam``: cam[:, c, i] = Σ_j A_pp[i, j] · x_conv[:, c, j] (patch-to-patch refinement);
    ``attnagg``: the same with A_ppᵀ; ``clsattn``: A[0, 1:] · x_conv; ``convcam``: x_conv.
    Returns [B, K, h, w].
    """
    if method == "convcam":
        return x_conv
    if method not in CAM_METHODS:
        raise DoeiError(f"TransCAM CAM method {method!r}: expected one of {', '.join(CAM_METHODS)}")
    if attn_sum is None:
        raise DoeiError(f"TransCAM CAM method {method!r} needs the summed attention (forward(need_attn=True))")
    b, k, h, w = x_conv.shape
    if method == "clsattn":
        return attn_sum[:, 0, 1:].reshape(b, 1, h, w) * x_conv
    a_pp = attn_sum[:, 1:, 1:]
    if method == "attnagg":
        a_pp = a_pp.transpose(1, 2)
    return (x_conv.flatten(2) @ a_pp.transpose(1, 2)).reshape(b, k, h, w)


def transcam_loss(logits_conv: Tensor, logits_trans: Tensor, labels: Tensor) -> Tensor:
    """TransCAM's training objective: multi-label soft-margin loss on ``logits_conv + logits_trans``
    (foreground logits [B, num_classes] as :meth:`Conformer.forward` returns them; labels
    [B, num_classes] in {0, 1})."""
    logits = logits_conv + logits_trans
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


# --------------------------------------------------------------------------- registry and loading

@register_model
def transcam_conformer_small(num_classes: int = 20, doei: DOEIConfig | None = None, img_size: int | None = None,
                             drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> Conformer:
    """Conformer-S as TransCAM's ``Net_sm`` (36.5 M parameters, 718 state-dict keys at 20 classes).
    ``img_size`` is accepted for registry uniformity and unused (no position embedding)."""
    return Conformer(num_classes=num_classes, patch_size=16, channel_ratio=4, embed_dim=384, depth=12,
                     num_heads=6, mlp_ratio=4.0, qkv_bias=True, drop_rate=drop_rate,
                     drop_path_rate=drop_path_rate, doei=doei)


@register_model
def transcam_conformer_synth(num_classes: int = 10, doei: DOEIConfig | None = None, img_size: int | None = None,
                             drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> Conformer:
    """A 1.4 M-parameter Conformer for CPU training on the 64-96 px synthetic benchmark: no stem
    max-pool (total stride 8: an 8×8 token grid at 64 px), narrow CNN (64/128/256 channels),
    128-wide 4-head transformer, 6 blocks (2 per stage). Same structure and key pattern as
    Conformer-S. ``img_size`` is unused."""
    return Conformer(num_classes=num_classes, patch_size=16, stem_channels=32, base_channel=32, channel_ratio=2,
                     embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, qkv_bias=True, drop_rate=drop_rate,
                     drop_path_rate=drop_path_rate, stem_pool=False, doei=doei)


HEAD_KEYS = ("trans_cls_head.weight", "trans_cls_head.bias", "conv_cls_head.weight", "conv_cls_head.bias")


def load_transcam_weights(model: Conformer, source: str | os.PathLike | Mapping[str, Tensor],
                          imagenet: bool = False) -> Conformer:
    """Load official weights into ``model`` (in place) and return it.

    ``source``: a checkpoint path (read with ``torch.load(weights_only=True)``) or a state dict, as
    a plain dict, ``{'model': sd}`` or ``{'state_dict': sd}``, keys optionally prefixed ``module.``.
    Default: a TransCAM checkpoint, loaded strictly (every key, every shape; a one-line DoeiError
    names the offenders). ``imagenet=True``: an ImageNet Conformer (e.g. ``Conformer_small_patch16.pth``)
    as TransCAM's training starts from — its two classifier heads are dropped (the official training
    script deletes them too) and every other key must match.
    """
    if isinstance(source, Mapping):
        sd = unwrap_state_dict(source, "state dict")
    else:
        sd = read_state_dict(source)
    if not imagenet:
        return load_model_weights(model, sd, strict=True)
    sd = {k: v for k, v in sd.items() if k not in HEAD_KEYS}
    missing = [k for k in model.state_dict() if k not in sd and k not in HEAD_KEYS]
    if missing:
        raise DoeiError(f"{source if not isinstance(source, Mapping) else 'state dict'}: not an ImageNet "
                        f"Conformer of this size: missing {missing[0]!r} ({len(missing)} missing in all)")
    return load_model_weights(model, sd, strict=False)
