"""Wide ResNet-38 ("resnet38d") and the three heads the WSSS baselines put on it.

* :class:`ResNet38` — the backbone of PSA / MCTformer / TransCAM refinement and segmentation
  (output stride 8, dilations 2 and 4 in the last stages, 4096 output channels).
* :class:`ResNet38Cls` — PSA's classification net (``network/resnet38_cls.py``): GAP + 1x1 ``fc8``.
* :class:`AffinityNet` — PSA's AffinityNet (``network/resnet38_aff.py``): three 1x1 reductions of
  conv4/conv5/conv6 (64+128+256 = 448 channels), a 1x1 ``f9``, ELU, and pair affinities
  ``exp(-mean_c |f_i - f_j|)`` within radius 5 (see :mod:`doei.models.affinity`).
* :class:`DeepLabResNet38` — DeepLab-v1 on ResNet38 (MCTformer ``seg/network/resnet38_seg.py``):
  two 3x3 convolutions with dilation 12 (4096→512, ReLU, 512→num_classes).

Parameter names are exactly the official ones (``../shared/reference/keys_psa_resnet38_{cls,aff}.json``,
``keys_seg_resnet38.json``), so official checkpoints and the converted ImageNet weights load with
``load_state_dict``. Shapes: input ``[B,3,H,W]`` normalised with the ImageNet mean/std; every
feature map is ``[B,C,ceil(H/8),ceil(W/8)]``.

Frozen BatchNorm (docs/reference-notes.md#resnet38-batchnorm): the official ``train()`` puts **every**
BatchNorm2d in eval mode (running statistics, no update) and freezes its affine parameters even
while training, and freezes ``conv1a`` (plus ``b2``, ``b2_1``, ``b2_2`` in the cls / aff nets).
Here this is the ``frozen_bn=True`` constructor option (the default for all these nets, as in the
baselines); the frozen parameters get ``requires_grad=False`` at construction, so
:func:`parameter_groups` leaves them out. Unlike the official override, ``train()`` returns ``self``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from doei.models.registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with an optional 1x1 projection.

    The projection (``conv_branch1``) takes the *pre-activated* input, as in the official net.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, bn_relu(input))``; the second is a tap used by AffinityNet."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        return shortcut + y, pre


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck (1x1 → 3x3 dilated → 1x1; widths out/4, out/2, out) with projection.

    ``dropout`` is the official channel dropout (``Dropout2d``) after each inner activation; it is
    inactive in eval mode.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        y = self.dropout_2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        y = self.dropout_2b2(F.relu(self.bn_branch2b2(self.conv_branch2b1(y))))
        return self.conv_branch1(pre) + self.conv_branch2b2(y), pre


class ResNet38(nn.Module):
    """Wide ResNet-38 "d" backbone; ``forward(x)`` returns conv6 ``[B,4096,ceil(H/8),ceil(W/8)]``.

    ``frozen_bn`` (default True) reproduces the official training behaviour (module docstring).
    Subclasses list their extra frozen modules in ``_frozen_names`` and their randomly initialised
    heads in ``from_scratch_names`` (10x learning rate in the official recipes).
    """

    _frozen_names: tuple[str, ...] = ("conv1a",)
    from_scratch_names: tuple[str, ...] = ()

    def __init__(self, frozen_bn: bool = True) -> None:
        super().__init__()
        self.frozen_bn = frozen_bn
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)
        self.b5 = ResBlock(512, 512, 1024, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = BottleneckBlock(1024, 2048, stride=1, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def _finish_init(self) -> None:
        """Apply the freezing policy once all submodules exist (called by every constructor)."""
        if self.frozen_bn:
            for name in self._frozen_names:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet38":
        """Standard ``train(mode)``, except that with ``frozen_bn`` every BatchNorm stays in eval mode."""
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features at stride 8: ``conv4`` [B,512] (input of b5, BN-ReLU'd), ``conv5`` [B,1024]
        (input of b6), ``conv6`` [B,4096] (ReLU(bn7(b7)))."""
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"):
            x, _ = getattr(self, name)(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return {"conv4": conv4, "conv5": conv5, "conv6": F.relu(self.bn7(x))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_as_dict(x)["conv6"]


class ResNet38Cls(ResNet38):
    """PSA classification net: ``forward`` → logits ``[B,num_classes]`` (GAP then 1x1 ``fc8``, no bias);
    ``forward_cam`` → ``relu(fc8 * conv6)`` ``[B,num_classes,h,w]``."""

    _frozen_names = ("conv1a", "b2", "b2_1", "b2_2")
    from_scratch_names = ("fc8",)

    def __init__(self, num_classes: int = 20, frozen_bn: bool = True) -> None:
        super().__init__(frozen_bn)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(4096, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self._finish_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.dropout7(super().forward(x))
        return self.fc8(f.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(super().forward(x), self.fc8.weight))


class AffinityNet(ResNet38):
    """PSA AffinityNet. ``features(x)`` → ``elu(f9(...))`` ``[B,448,h,w]``; ``forward(x)`` → sparse
    affinities ``[B,34,n_from]`` (radius 5); ``forward(x, to_dense=True)`` (batch 1) → ``[h*w,h*w]``."""

    _frozen_names = ("conv1a", "b2", "b2_1", "b2_2")
    from_scratch_names = ("f8_3", "f8_4", "f8_5", "f9")

    def __init__(self, radius: int = 5, frozen_bn: bool = True) -> None:
        super().__init__(frozen_bn)
        self.radius = radius
        self.f8_3 = nn.Conv2d(512, 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(1024, 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(4096, 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for m in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(m.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self._finish_init()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        d = self.forward_as_dict(x)
        f = torch.cat([F.elu(self.f8_3(d["conv4"])), F.elu(self.f8_4(d["conv5"])), F.elu(self.f8_5(d["conv6"]))], 1)
        return F.elu(self.f9(f))

    def forward(self, x: torch.Tensor, to_dense: bool = False) -> torch.Tensor:
        from doei.models.affinity import affinity_from_features, dense_affinity

        if to_dense and x.shape[0] != 1:
            raise ValueError(f"AffinityNet.forward(to_dense=True) needs batch 1, got {x.shape[0]}")
        f = self.features(x)
        aff = affinity_from_features(f, self.radius)
        if not to_dense:
            return aff
        return dense_affinity(aff[0], f.shape[2], f.shape[3], self.radius)


class DeepLabResNet38(ResNet38):
    """DeepLab-v1 (LargeFOV-style head) on ResNet38: logits ``[B,num_classes,ceil(H/8),ceil(W/8)]``."""

    from_scratch_names = ("fc8_seg_conv1", "fc8_seg_conv2")

    def __init__(self, num_classes: int = 21, frozen_bn: bool = True) -> None:
        super().__init__(frozen_bn)
        self.fc8_seg_conv1 = nn.Conv2d(4096, 512, 3, padding=12, dilation=12, bias=True)
        self.fc8_seg_conv2 = nn.Conv2d(512, num_classes, 3, padding=12, dilation=12, bias=True)
        nn.init.xavier_uniform_(self.fc8_seg_conv1.weight)
        nn.init.xavier_uniform_(self.fc8_seg_conv2.weight)
        self._finish_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8_seg_conv2(F.relu(self.fc8_seg_conv1(super().forward(x))))


def parameter_groups(model: ResNet38) -> tuple[list[nn.Parameter], ...]:
    """The official four SGD groups: (backbone conv weights, backbone conv biases, head weights,
    head biases) — the recipes use lr ×1, ×2, ×10, ×20 and weight decay on the weights only.

    Only convolution parameters with ``requires_grad`` are listed (BatchNorm parameters never are).
    """
    head = {id(getattr(model, n)) for n in model.from_scratch_names}
    groups: tuple[list[nn.Parameter], ...] = ([], [], [], [])
    for m in model.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        off = 2 if id(m) in head else 0
        if m.weight.requires_grad:
            groups[off].append(m.weight)
        if m.bias is not None and m.bias.requires_grad:
            groups[off + 1].append(m.bias)
    return groups


@register_model(role="psa_classifier")
def psa_resnet38_cls(num_classes: int = 20, frozen_bn: bool = True) -> ResNet38Cls:
    return ResNet38Cls(num_classes=num_classes, frozen_bn=frozen_bn)


@register_model(role="affinity")
def psa_resnet38_aff(frozen_bn: bool = True) -> AffinityNet:
    return AffinityNet(frozen_bn=frozen_bn)


@register_model(role="segmentation")
def deeplab_resnet38(num_classes: int = 21, frozen_bn: bool = True) -> DeepLabResNet38:
    return DeepLabResNet38(num_classes=num_classes, frozen_bn=frozen_bn)
