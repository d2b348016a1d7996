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
