"""The reference fixtures' deterministic weights (recipe ``crc32-fanin-v1``, ../shared/reference/README §2).

Every state-dict entry gets its own generator seeded with the CRC-32 of its key, so a model that
uses the official key names regenerates the official fixture weights bit for bit.
"""
from __future__ import annotations

import math
import zlib

import torch


def recipe_tensor(key: str, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    shape = tuple(like.shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=like.dtype)
    if not torch.is_floating_point(like):
        return like.clone()
    if key.endswith("running_var"):
        return 1.0 + torch.rand(shape, generator=g, dtype=torch.float32)
    if key.endswith(".weight") and like.dim() == 1:
        return 1.0 + 0.02 * torch.randn(shape, generator=g, dtype=torch.float32)
    if key.endswith(".weight") and like.dim() >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g, dtype=torch.float32) / math.sqrt(fan_in)
    return 0.02 * torch.randn(shape, generator=g, dtype=torch.float32)


def recipe_state_dict(keys_and_shapes: dict[str, torch.Tensor], post_scale: dict[str, float] | None = None) -> dict:
    """Recipe weights for every entry of a state dict (``{key: tensor-like}``)."""
    new = {k: recipe_tensor(k, v).to(v.dtype) for k, v in keys_and_shapes.items()}
    for k, f in (post_scale or {}).items():
        new[k] = new[k] * f
    return new


def fill_state_dict_(model: torch.nn.Module, post_scale: dict[str, float] | None = None) -> torch.nn.Module:
    """Load recipe weights into ``model`` (strict) and return it."""
    model.load_state_dict(recipe_state_dict(model.state_dict(), post_scale), strict=True)
    return model
