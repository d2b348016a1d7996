"""The Conformer's building blocks (Peng et al., ICCV 2021) as TransCAM uses them.

A Conformer stage unit couples a CNN bottleneck and a transformer block through feature-coupling
units: :class:`FCUDown` turns a CNN map into patch tokens, :class:`FCUUp` turns tokens back into a
CNN map. :class:`doei.models.conformer.Conformer` stacks these units; parameter names match the
official checkpoints (BatchNorm eps 1e-6, LayerNorm eps 1e-6, nearest up-sampling in FCUUp).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from doei.models.vit import Block  # pre-norm block returning head-mean attention, eps 1e-6

# A hook applied to the transformer tokens right after a block: (tokens [B,T,D], head-mean
# attention [B,T,T]) -> tokens [B,T,D].
TokenHook = Callable[[Tensor, Tensor], Tensor]


class ConvBlock(nn.Module):
    """Bottleneck (1×1 -> 3×3 -> 1×1, BatchNorm eps 1e-6) whose 3×3 conv can take an added map.

    ``forward(x [B,Cin,H,W], x_t=None)`` -> (out [B,Cout,H/s,W/s], x2 [B,Cout/4,H/s,W/s]); x2 is the
    activation after the 3×3 conv, which FCUDown turns into tokens; ``x_t`` (the FCUUp output) is
    added to the 3×3 conv's input.
    """

    expansion = 4

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        med = outplanes // self.expansion
        self.conv1 = nn.Conv2d(inplanes, med, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(med, eps=1e-6)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(med, med, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(med, eps=1e-6)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(med, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes, eps=1e-6)
        self.act3 = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False)
            self.residual_bn = nn.BatchNorm2d(outplanes, eps=1e-6)

    def forward(self, x: Tensor, x_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        residual = x
        h = self.act1(self.bn1(self.conv1(x)))
        x2 = self.act2(self.bn2(self.conv2(h if x_t is None else h + x_t)))
        out = self.bn3(self.conv3(x2))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return self.act3(out + residual), x2


class FCUDown(nn.Module):
    """CNN map -> patch tokens: 1×1 conv, ``dw_stride`` average pooling, LayerNorm (1e-6), GELU;
    the cls token of ``x_t`` is put in front. [B,C,H,W], [B,T,D] -> [B, 1 + (H/s)(W/s), D]."""

    def __init__(self, inplanes: int, outplanes: int, dw_stride: int) -> None:
        super().__init__()
        self.conv_project = nn.Conv2d(inplanes, outplanes, kernel_size=1)
        self.sample_pooling = nn.AvgPool2d(kernel_size=dw_stride, stride=dw_stride)
        self.ln = nn.LayerNorm(outplanes, eps=1e-6)
        self.act = nn.GELU()

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        tokens = self.sample_pooling(self.conv_project(x)).flatten(2).transpose(1, 2)
        return torch.cat([x_t[:, :1], self.act(self.ln(tokens))], dim=1)


class FCUUp(nn.Module):
    """Patch tokens -> CNN map: 1×1 conv, BatchNorm (1e-6), ReLU, nearest up-sampling by
    ``up_stride``. [B, 1+h·w, D] (cls dropped), grid (h, w) -> [B, C, h·s, w·s]."""

    def __init__(self, inplanes: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(inplanes, outplanes, kernel_size=1)
        self.bn = nn.BatchNorm2d(outplanes, eps=1e-6)
        self.act = nn.ReLU()

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, d = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(b, d, h, w)
        y = self.act(self.bn(self.conv_project(grid)))
        return F.interpolate(y, size=(h * self.up_stride, w * self.up_stride))


class ConvTransBlock(nn.Module):
    """One Conformer stage unit: CNN bottleneck -> FCUDown -> transformer block -> (hook) -> FCUUp ->
    fusion bottleneck. ``forward(x, x_t, hook, read)`` -> (CNN map, tokens, what was read of the
    attention: head-mean [B, T, T] for ``read="full"``, see :class:`doei.models.vit.Attention`)."""

    def __init__(self, inplanes: int, outplanes: int, res_conv: bool, stride: int, dw_stride: int,
                 embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 last_fusion: bool = False) -> None:
        super().__init__()
        med = outplanes // ConvBlock.expansion
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        # TransCAM keeps stride 1 in the last fusion block (the original Conformer used 2).
        self.fusion_block = ConvBlock(outplanes, outplanes, stride=1, res_conv=last_fusion)
        self.squeeze_block = FCUDown(med, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, med, dw_stride)
        self.trans_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                 drop_path_rate)
        self.dw_stride = dw_stride

    def forward(self, x: Tensor, x_t: Tensor, hook: TokenHook | None = None,
                read: str = "full") -> tuple[Tensor, Tensor, Tensor]:
        x, x2 = self.cnn_block(x)
        h, w = x2.shape[-2:]
        x_t, attn = self.trans_block(self.squeeze_block(x2, x_t) + x_t, read=read, num_cls=1)
        if hook is not None:
            x_t = hook(x_t, attn)
        x_up = self.expand_block(x_t, h // self.dw_stride, w // self.dw_stride)
        x, _ = self.fusion_block(x, x_up)
        return x, x_t, attn


__all__ = ["ConvBlock", "FCUDown", "FCUUp", "ConvTransBlock", "TokenHook"]
