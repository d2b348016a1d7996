"""HFA, hybrid feature alignment (Eq. 17): appearance affinity that makes patch scores reliable.

``Ĝ = rownorm(relu(cos(RGB patches)) * relu(cos(patch embeddings)))`` [B, P, P], computed once per
forward pass without gradient; the hybrid scores blend each patch's score with those of the patches
that look like it: ``S̃ = (1 - α) S + α S Ĝᵀ``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_pixels(image: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """Flatten the pixels of each patch: image [B, 3, H, W] -> [B, P, 3·patch²] (row-major patches).

    Pixels beyond ``grid * patch`` (the remainder a stride-``patch`` conv drops) are ignored.
    """
    b, c = image.shape[:2]
    h, w = grid
    x = image[:, :, : h * patch, : w * patch].reshape(b, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * patch * patch)


def cosine_affinity(features: Tensor) -> Tensor:
    """max(0, cos) between all rows: [B, P, F] -> [B, P, P] (a zero row gives zero affinities)."""
    f = F.normalize(features.float(), dim=-1, eps=1e-12)
    return torch.relu(f @ f.transpose(1, 2))


@torch.no_grad()
def hfa_affinity(image: Tensor, embed: Tensor, grid: tuple[int, int], patch: int, eps: float = 1e-6) -> Tensor:
    """Ĝ [B, P, P] float32 from the normalised input image [B, 3, H, W] and the patch-embedding
    output ``embed`` [B, P, D] (before position encoding). Rows sum to 1 (or are all zero)."""
    with torch.autocast(device_type=image.device.type, enabled=False):
        g = cosine_affinity(patch_pixels(image.float(), grid, patch)) * cosine_affinity(embed.float())
        return g / g.sum(dim=-1, keepdim=True).clamp_min(eps)


def hybrid_scores(scores: Tensor, g_hat: Tensor | None, alpha: float) -> Tensor:
    """``(1 - α) S + α S Ĝᵀ`` for scores [B, C, P] (or per head [B, H, C, P]); returns ``scores`` itself
    when HFA is off."""
    if g_hat is None or alpha == 0:
        return scores
    s = scores.reshape(scores.shape[0], -1, scores.shape[-1])          # [B, (H·)C, P]
    g = g_hat.transpose(1, 2).to(scores.dtype)
    return torch.baddbmm(s, s, g, beta=1.0 - alpha, alpha=alpha).view(scores.shape)   # one product, fused blend


def attention_hfa(attn: Tensor, g_hat: Tensor, alpha: float, num_cls: int) -> Tensor:
    """Reading ``hfa_target="attention"`` of Eq. 17: the attention the block uses, re-weighted over similar
    patches. attn [B, H, T, T] probabilities; the patch-key columns become ``(1 - α) A_·p + α A_·p Ĝ``
    (every query row, class and patch; Ĝ's rows sum to 1, so each row keeps its mass on the patches and
    stays a distribution); the class-key columns are unchanged (a class token has no RGB)."""
    if alpha == 0:
        return attn
    a_p = attn[..., num_cls:]
    mixed = (1.0 - alpha) * a_p + alpha * (a_p @ g_hat.unsqueeze(1).to(attn.dtype))
    return torch.cat([attn[..., :num_cls], mixed], dim=-1)


def attention_additive(attn: Tensor, g_hat: Tensor, alpha: float, num_cls: int) -> Tensor:
    """Reading ``hfa_target="additive"``: Eq. 17 as written, ``A = (1 - α)·W_attn + α·d_rgb·d_emb``, on the
    attention the block uses. attn [B, H, T, T] probabilities, g_hat [B, P, P] = Ĝ (the row-normalised
    ``d_rgb ⊙ d_emb`` of :func:`hfa_affinity`). Every PATCH query row becomes ``(1 - α)·A[p, :]`` plus
    ``α·Ĝ[p, :]`` on its patch-key columns (so it stays a distribution: (1 - α) + α); the class query rows
    are unchanged (d_rgb is defined between patches only). Unlike :func:`attention_hfa`, the blend adds the
    appearance affinity itself instead of spreading the attention over similar patches."""
    if alpha == 0:
        return attn
    rows = attn[..., num_cls:, :]
    mixed = (1.0 - alpha) * rows
    mixed = torch.cat([mixed[..., :num_cls], mixed[..., num_cls:] + alpha * g_hat.unsqueeze(1).to(attn.dtype)], dim=-1)
    return torch.cat([attn[..., :num_cls, :], mixed], dim=-2)


def block_attention_hfa(attn: Tensor, g_hat: Tensor, alpha: float, num_cls: int, target: str) -> Tensor:
    """The attention a DOEI block uses under ``hfa_target`` "attention" (:func:`attention_hfa`) or
    "additive" (:func:`attention_additive`)."""
    if target == "attention":
        return attention_hfa(attn, g_hat, alpha, num_cls)
    if target == "additive":
        return attention_additive(attn, g_hat, alpha, num_cls)
    raise ValueError(f"hfa target must be 'attention' or 'additive' on the attention, got {target!r}")


# ImageNet mean/std of the input normalisation (doei.data.transforms; core does not import data).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def raw_rgb(image: Tensor) -> Tensor:
    """Reading ``rgb="raw"``: the 0-255 RGB values [B, 3, H, W] of a normalised input image."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=image.device).view(1, 3, 1, 1)
    return (image.float() * std + mean) * 255.0
