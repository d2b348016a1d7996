"""Progressive selection (Eq. 8-10, 13-15): how many candidates per block, and which.

Block i (1-based) of L selects ``k_i = floor(clamp((L - i) * ST, 0, 1) * n + 1e-6)`` confident
candidates out of n per row: deeper blocks select fewer. Masks are built from ranks of a STABLE
descending sort, so ties go to the lower index, deterministically.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def num_selected(block: int, depth: int, step: float, n: int) -> int:
    """k_i for 1-based ``block`` of ``depth`` with selection step ``step`` over ``n`` candidates."""
    ratio = min(max((depth - block) * step, 0.0), 1.0)
    return int(math.floor(ratio * n + 1e-6))


def rank_desc(scores: Tensor) -> Tensor:
    """Rank of every entry within its row (last dim), 0 = largest; ties: lower index ranks first.

    scores [..., n] float -> ranks [..., n] int64.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    arange = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return ranks.scatter_(-1, order, arange)


def selection_weights(ranks: Tensor, n: int, k: int, amplify: float, suppress: float, mode: str) -> Tensor:
    """Per-entry factor ``AF * M_cs + SF * M_ns`` from ranks [..., m] (entries ranked >= n are not candidates).

    ``mode="rest"``: M_ns = every candidate not confident; ``"bottom"``: the bottom-k among the
    non-confident (all n - k others when k > n/2). Returns float32 [..., m].
    """
    confident = ranks < k
    if mode == "rest":
        low = k
    elif mode == "bottom":
        low = max(k, n - k)
    else:
        raise ValueError(f"unknown suppress mode {mode!r}")
    non_confident = (ranks >= low) & (ranks < n)
    return confident.float() * amplify + non_confident.float() * suppress


# Control ``select="random"`` (issue #24): the same k_i, candidates ranked by a pseudo-random number that
# depends only on (seed, image, block, row, candidate), computed in exact int64 arithmetic on any device, so
# an image's draw does not depend on the batch or the hardware (a torch.Generator would tie it to batch order).
_M = 2147483647   # 2^31 - 1: every product below stays under 2^62


def _mix(x: Tensor) -> Tensor:
    """A hash of int64 values in [0, 2^31 - 1) to the same range (Park-Miller steps with xor-shifts)."""
    for mult in (48271, 69621, 16807):
        x = (x % _M) * mult % _M
        x = x ^ (x >> 13)
    return x % _M


def image_keys(image: Tensor) -> Tensor:
    """One int64 key per image of ``image`` [B, ...]: a hash of its values quantised to 1/256, so the same
    image gives the same key in any batch, on any device. Returns [B] int64 in [0, 2^31 - 1)."""
    if not isinstance(image, Tensor) or image.dim() < 2:
        raise TypeError(f"image must be a tensor [B, ...], got {type(image).__name__}")
    q = torch.round(image.detach().float().flatten(1) * 256).to(torch.int64).clamp(-(2 ** 11), 2 ** 11) + 2 ** 11
    n = q.shape[1]
    w = _mix(torch.arange(1, n + 1, dtype=torch.int64, device=image.device)) % (2 ** 20) + 1   # < 2^21
    # q·w < 2^33, a sum over up to 2^30 values < 2^63: exact, whatever the summation order
    return _mix(((q * w).sum(dim=1) % _M) + n)


def random_ranks(keys: Tensor, seed: int, block: int, rows: int, n: int, exclude_diagonal: bool = False) -> Tensor:
    """Ranks [B, rows, n] (0 = "most confident") of a per-image random order of the n candidates of each row,
    for block ``block`` under ``seed``. ``exclude_diagonal`` (CPDO, n = rows): entry (c, c) ranks last."""
    salt = _mix(torch.tensor((seed * 1000003 + block * 7919) % _M, dtype=torch.int64, device=keys.device))
    base = _mix(keys.to(torch.int64) % _M + salt)                                    # [B]
    idx = torch.arange(rows * n, dtype=torch.int64, device=keys.device).view(rows, n)
    u = _mix((base.view(-1, 1, 1) + idx * 2654435 + 1) % _M).to(torch.float64)      # [B, rows, n]
    if exclude_diagonal:
        u = u.masked_fill(torch.eye(rows, n, dtype=torch.bool, device=keys.device), float("-inf"))
    return rank_desc(u)
