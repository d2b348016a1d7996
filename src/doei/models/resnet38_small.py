"""Reduced-width ResNet38 nets for CPU tests and the synthetic benchmark.

The official wide ResNet-38 has ~100 M parameters (4096 channels at conv6): far too slow to train on
a laptop CPU on 64-px synthetic scenes. These variants keep the *structure* of
:mod:`doei.models.resnet38` exactly (same blocks, strides, dilations, frozen-BN policy, parameter
names, heads and parameter groups) and scale every channel count by ``width`` (at least 4
channels). ``width=1.0`` gives the official shapes (so official weights load, slowly).

* :func:`psa_resnet38_aff_small` — :class:`~doei.models.resnet38.AffinityNet` with scaled widths;
  the three reductions become ``c(64) + c(128) + c(256)`` channels.
* :func:`deeplab_resnet38_small` — :class:`~doei.models.resnet38.DeepLabResNet38` with scaled widths.

These factories register themselves when this module is imported (the registry imports every
module of ``doei.models``), with the roles ``affinity`` and ``segmentation``.
"""
from __future__ import annotations

import torch.nn as nn

from doei.models.registry import register_model
from doei.models.resnet38 import AffinityNet, BottleneckBlock, DeepLabResNet38, ResBlock


def _ch(n: int, width: float) -> int:
    """Channel count ``n`` scaled by ``width`` (at least 4, multiple of 4 so bottleneck /4 and /2 stay integral)."""
    return max(4, int(round(n * width / 4)) * 4)


def _build_backbone(m: nn.Module, width: float, frozen_bn: bool) -> None:
    """Create the ResNet38 trunk on ``m`` (already ``nn.Module.__init__``-ed) with scaled widths."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    c = lambda n: _ch(n, width)  # noqa: E731
    m.frozen_bn = frozen_bn
    m.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
    m.b2 = ResBlock(c(64), c(128), c(128), stride=2)
    m.b2_1 = ResBlock(c(128), c(128), c(128))
    m.b2_2 = ResBlock(c(128), c(128), c(128))
    m.b3 = ResBlock(c(128), c(256), c(256), stride=2)
    m.b3_1 = ResBlock(c(256), c(256), c(256))
    m.b3_2 = ResBlock(c(256), c(256), c(256))
    m.b4 = ResBlock(c(256), c(512), c(512), stride=2)
    for k in range(1, 6):
        setattr(m, f"b4_{k}", ResBlock(c(512), c(512), c(512)))
    m.b5 = ResBlock(c(512), c(512), c(1024), stride=1, first_dilation=1, dilation=2)
    m.b5_1 = ResBlock(c(1024), c(512), c(1024), dilation=2)
    m.b5_2 = ResBlock(c(1024), c(512), c(1024), dilation=2)
    m.b6 = BottleneckBlock(c(1024), c(2048), stride=1, dilation=4, dropout=0.3)
    m.b7 = BottleneckBlock(c(2048), c(4096), dilation=4, dropout=0.5)
    m.bn7 = nn.BatchNorm2d(c(4096))


class SmallAffinityNet(AffinityNet):
    """:class:`AffinityNet` with every width scaled by ``width`` (features ``[B, c(64)+c(128)+c(256), h, w]``)."""

    def __init__(self, width: float = 0.125, radius: int = 5, frozen_bn: bool = True) -> None:
        nn.Module.__init__(self)
        _build_backbone(self, width, frozen_bn)
        c = lambda n: _ch(n, width)  # noqa: E731
        self.width = width
        self.radius = radius
        self.f8_3 = nn.Conv2d(c(512), c(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(c(1024), c(128), 1, bias=False)
        self.f8_5 = nn.Conv2d(c(4096), c(256), 1, bias=False)
        nf = c(64) + c(128) + c(256)
        self.f9 = nn.Conv2d(nf, nf, 1, bias=False)
        for mod in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(mod.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self._finish_init()


class SmallDeepLabResNet38(DeepLabResNet38):
    """:class:`DeepLabResNet38` with every width scaled by ``width``; logits ``[B, num_classes, ceil(H/8), ceil(W/8)]``."""

    def __init__(self, num_classes: int = 21, width: float = 0.125, frozen_bn: bool = True) -> None:
        nn.Module.__init__(self)
        _build_backbone(self, width, frozen_bn)
        c = lambda n: _ch(n, width)  # noqa: E731
        self.width = width
        self.fc8_seg_conv1 = nn.Conv2d(c(4096), c(512), 3, padding=12, dilation=12, bias=True)
        self.fc8_seg_conv2 = nn.Conv2d(c(512), num_classes, 3, padding=12, dilation=12, bias=True)
        nn.init.xavier_uniform_(self.fc8_seg_conv1.weight)
        nn.init.xavier_uniform_(self.fc8_seg_conv2.weight)
        self._finish_init()


@register_model(role="affinity")
def psa_resnet38_aff_small(width: float = 0.125, frozen_bn: bool = True) -> SmallAffinityNet:
    return SmallAffinityNet(width=width, frozen_bn=frozen_bn)


@register_model(role="segmentation")
def deeplab_resnet38_small(num_classes: int = 21, width: float = 0.125, frozen_bn: bool = True) -> SmallDeepLabResNet38:
    return SmallDeepLabResNet38(num_classes=num_classes, width=width, frozen_bn=frozen_bn)
