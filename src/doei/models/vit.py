"""A Vision Transformer whose blocks expose their attention, with DOEI between blocks.

Parameter names equal timm/DeiT's (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), so DeiT and official
MCTformer/TS-CAM checkpoints load. ``num_cls_tokens`` class tokens come first in the sequence (1 for
DeiT/TS-CAM, one per class for MCTformer). Each block computes only what is read of its attention
(:class:`Attention`): the fused kernel where nobody reads it, the class rows/columns without the T×T
matrix for DOEI (:func:`doei.core.attention.class_attention`), the eager T×T probabilities for CAM
readers of the whole matrix and for DOEI's non-default readings.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor

from doei.core import DOEIConfig, doei_update, hfa_affinity
from doei.core.attention import ClassAttention, class_attention, fused_attention
from doei.core.hfa import block_attention_hfa, raw_rgb
from doei.core.selection import image_keys


READS = ("none", "rows", "class", "full")
ATTENTION_IMPLS = ("auto", "eager")


class Attention(nn.Module):
    """Multi-head self-attention [B, T, D] -> (output [B, T, D], what the caller reads of the attention).

    ``read`` says what of the head-mean softmax attention the caller needs, and so which kernel runs
    (``impl="auto"``, the default):

    * ``"none"``: nothing -> fused ``F.scaled_dot_product_attention``, returns ``(out, None)``;
    * ``"rows"``: the class-token rows ``A[:C, :]`` -> fused output + a :class:`ClassAttention` with
      ``rows`` only (``num_cls`` = C);
    * ``"class"``: rows and class-key columns ``A[C:, :C]`` (what DOEI reads) -> :func:`class_attention`;
    * ``"full"``: the head-mean [B, T, T] -> eager ``softmax(q kᵀ·scale)``.

    ``impl="eager"`` pins the official eager formula for every ``read`` (always returning the full
    head-mean [B, T, T]): bit-for-bit the code before fused attention (parity tests use it; see
    :func:`set_attention_impl`). Attention dropout in training (``attn_drop.p > 0``) keeps "rows"/"class"
    eager too (DOEI reads the probabilities before dropout). Fused and eager outputs agree to float
    rounding (float32: ~1e-6 absolute at unit-scale activations; tests/test_attention_paths.py).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl = "auto"

    def forward(self, x: Tensor, doei_view: tuple | None = None, read: str = "full",
                num_cls: int = 1) -> tuple[Tensor, Tensor | ClassAttention | None] | tuple[Tensor, Tensor, Tensor]:
        """``doei_view`` (a DOEI block under a non-default reading, always eager): ``(g_hat, alpha,
        num_cls, source, heads[, target])``; with ``g_hat`` set the probabilities the block uses are
        changed by HFA (:func:`doei.core.hfa.block_attention_hfa`, ``target`` "attention" (default) or
        "additive"), and a third output is what DOEI scores: the softmax
        probabilities or (``source="logits"``) QKᵀ/√d_k, head-mean [B, T, T] or (``heads="each"``)
        per head [B, H, T, T]. Otherwise ``read`` (see the class docstring) and ``num_cls`` (C)."""
        b, t, d = x.shape
        # q, k, v [B, H, T, d]: views of the projection (the official code's values); unbind + transpose
        # (rather than indexing a permuted [3, B, H, T, d]) makes backward one stack of the three gradients
        # straight into the projection's [B, T, 3, H, d] layout, instead of three zero-filled buffers added up
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = (z.transpose(1, 2) for z in qkv.unbind(2))
        if doei_view is None:
            if read not in READS:
                raise ValueError(f"read must be one of {list(READS)}, got {read!r}")
            dropping = self.training and self.attn_drop.p > 0
            if self.impl == "eager" or (read != "none" and dropping):    # the official formula, bit for bit
                attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
                out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, t, d)
                return self.proj_drop(self.proj(out)), attn.mean(dim=1)
            if read == "full":     # the scale folded into q: one [B, H, T, T] pass less (float rounding apart)
                attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, t, d)
                return self.proj_drop(self.proj(out)), attn.mean(dim=1)
            if read == "none":
                out = fused_attention(q, k, v, self.scale, self.attn_drop.p if self.training else 0.0)
                return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, d))), None
            out, part = class_attention(q, k, v, self.scale, num_cls, cols=read == "class")
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, d))), part
        g_hat, alpha, num_cls, source, heads, *target = doei_view
        logits = (q @ k.transpose(-2, -1)) * self.scale
        attn = logits.softmax(dim=-1)
        if g_hat is not None:
            attn = block_attention_hfa(attn, g_hat, alpha, num_cls, target[0] if target else "attention")
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, t, d)
        mean = attn.mean(dim=1)
        src = logits if source == "logits" else attn
        scores = src if heads == "each" else (mean if source != "logits" else logits.mean(dim=1))
        return self.proj_drop(self.proj(out)), mean, scores


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Set every :class:`Attention` of ``model`` to ``impl``: ``"auto"`` (fused kernels where the
    probabilities are not read, the default) or ``"eager"`` (the official formula everywhere, bit for
    bit the code before fused attention). Returns ``model``."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {list(ATTENTION_IMPLS)}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.impl = impl
    return model


def merge_reads(*reads: str) -> str:
    """The widest of several ``read`` requests ("none" < "rows" < "class" < "full")."""
    return max(reads, key=READS.index)


class Block(nn.Module):
    """Pre-norm transformer block: returns (tokens [B, T, D], what was read of its attention)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor, doei_view: tuple | None = None, read: str = "full",
                num_cls: int = 1) -> tuple[Tensor, Tensor | ClassAttention | None] | tuple[Tensor, Tensor, Tensor]:
        """``doei_view``, ``read``, ``num_cls``: see :meth:`Attention.forward`; with ``doei_view`` a third
        output, DOEI's scores source. ``read="full"`` (the default) returns the head-mean [B, T, T]."""
        if doei_view is None:
            out, attn = self.attn(self.norm1(x), read=read, num_cls=num_cls)
        else:
            out, attn, scores = self.attn(self.norm1(x), doei_view)
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if doei_view is None else (x, attn, scores)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a stride-``patch`` conv); any input size, remainder dropped."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class ConvStem(nn.Module):
    """Convolutional stem for small from-scratch models: log2(patch) stride-2 3×3 conv+BN+ReLU, then 1×1.

    A ViT trained from scratch on a few thousand small images learns far faster with a conv stem than
    with a linear patch projection (docs/demo.md); paper-scale models keep ``PatchEmbed``.
    """

    def __init__(self, patch_size: int = 8, in_chans: int = 3, embed_dim: int = 192) -> None:
        super().__init__()
        n = int(math.log2(patch_size))
        if 2 ** n != patch_size:
            raise ValueError(f"conv stem needs a power-of-two patch size, got {patch_size}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        ch = in_chans
        for i in range(n):
            out = embed_dim // 2 ** (n - i) if embed_dim // 2 ** (n - i) >= 16 else 16
            layers += [nn.Conv2d(ch, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(ch, embed_dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        x = self.proj(self.stem(x[:, :, : h * self.patch_size, : w * self.patch_size]))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class Features(NamedTuple):
    tokens: Tensor          # [B, C + P, D] output of the last block (after DOEI, before any final norm)
    attn: list              # per block what was read: [B, T, T] head-mean ("full"), ClassAttention
                            # ("rows"), or None ("none"); [] with keep_attn=False
    grid: tuple[int, int]   # (h, w) patch grid


def interpolate_pos_embed(pos_embed: Tensor, num_extra: int, base_grid: tuple[int, int],
                          grid: tuple[int, int]) -> Tensor:
    """Resize the patch part of ``pos_embed`` [1, E + gh·gw, D] to ``grid`` (the MCTformer convention).

    Bicubic with ``scale_factor = (h + 0.1) / gh, (w + 0.1) / gw`` (not ``size=``: the official
    models do it this way and the two differ), identity only when ``grid == base_grid`` and square.
    Extra (class) token positions are kept as they are.
    """
    gh, gw = base_grid
    h, w = grid
    if (h, w) == (gh, gw) and h == w:
        return pos_embed
    extra, patch = pos_embed[:, :num_extra], pos_embed[:, num_extra:]
    dim = pos_embed.shape[-1]
    patch = patch.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic",
                          align_corners=False)
    if patch.shape[-2:] != (h, w):  # pragma: no cover - guards float surprises
        raise RuntimeError(f"position interpolation gave {tuple(patch.shape[-2:])}, wanted {(h, w)}")
    return torch.cat([extra, patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


class VisionTransformer(nn.Module):
    """ViT backbone with exposed attention and DOEI; subclasses add the heads of each baseline."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 num_cls_tokens: int = 1, stem: str = "patch", norm_eps: float = 1e-6,
                 doei: DOEIConfig | None = None) -> None:
        super().__init__()
        self.num_cls_tokens = num_cls_tokens
        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = patch_size
        self.base_grid = (img_size // patch_size, img_size // patch_size)
        if stem == "patch":
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        elif stem == "conv":
            self.patch_embed = ConvStem(patch_size, in_chans, embed_dim)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        num_patches = self.base_grid[0] * self.base_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, num_cls_tokens, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_cls_tokens + num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.doei = doei or DOEIConfig(enabled=False)
        self.doei.validate_depth(depth)
        self.doei_stats: list[dict] | None = None  # set to [] to record per-block DOEI statistics
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Position embedding [1, C + h·w, D] for a patch grid (interpolated as MCTformer does)."""
        return interpolate_pos_embed(self.pos_embed, self.num_cls_tokens, self.base_grid, grid)

    def forward_features(self, x: Tensor, keep_attn: bool | Sequence[str] = True) -> Features:
        """Image [B, 3, H, W] -> tokens of the last block, per-block attention readings, grid.

        ``keep_attn``: True keeps every block's head-mean attention [B, T, T] (eager); False (training
        forwards, which need no CAM) keeps none, so blocks DOEI does not read run the fused kernel and
        DOEI blocks compute only the class rows/columns it reads; a sequence of one ``read`` per block
        ("none", "rows", "full"; :class:`Attention`) keeps exactly that (a CAM reading class→patch
        attention asks "rows"). ``attn`` then holds per block what was kept (None for "none")."""
        if isinstance(keep_attn, bool):
            reads = ["full" if keep_attn else "none"] * self.depth
        else:
            reads = list(keep_attn)
            if len(reads) != self.depth or any(r not in READS for r in reads):
                raise ValueError(f"keep_attn: expected a bool or {self.depth} reads of {list(READS)}, got {reads}")
        keep = keep_attn is not False
        b = x.shape[0]
        embed, grid = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), embed], dim=1)
        tokens = self.pos_drop(tokens + self.pos_embed_for(grid))
        cfg = self.doei
        g_hat = None
        if cfg.uses_hfa:
            g_hat = hfa_affinity(raw_rgb(x) if cfg.rgb == "raw" else x, embed, grid, self.patch_embed.patch_size)
        # readings other than today's need the block's own attention tensors (docs/doei-method.md, variants)
        special = cfg.needs_full_attention
        keys = image_keys(x) if cfg.enabled and cfg.select == "random" else None   # control: random selection
        attns: list = []
        for i, blk in enumerate(self.blocks, start=1):
            doei_here = cfg.applies_to(i, self.depth)
            if special and doei_here:
                view = (g_hat if cfg.hfa_on_attention else None, cfg.alpha, self.num_cls_tokens,
                        cfg.score_source, cfg.heads, cfg.hfa_target)
                tokens, attn, scores = blk(tokens, view)
            else:
                read = merge_reads(reads[i - 1], "class" if doei_here else "none")
                tokens, attn = blk(tokens, read=read, num_cls=self.num_cls_tokens)
                scores = attn
            if keep:
                attns.append(attn if reads[i - 1] != "none" else None)
            stats = {} if self.doei_stats is not None else None
            tokens = doei_update(tokens, scores, self.num_cls_tokens, i, self.depth, cfg, g_hat, stats, keys=keys)
            if stats:
                self.doei_stats.append({"block": i, **stats})
        return Features(tokens, attns, grid)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
