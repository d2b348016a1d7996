"""Progressive selection (Eq. 8-10, 13-15): how many candidates per block, and which.

Block i (1-based) of L selects ``k_i = floor(clamp((L - i) * ST, 0, 1) * n + 1e-6)`` confident
candidates out of n per row: deeper blocks select fewer. Masks are built from ranks of a STABLE
descending sort, so ties go to the lower index, deterministically.
"""
from __future__ import annotations

import math
import struct

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


def rank_below(scores: Tensor, m: int) -> Tensor:
    """``(rank_desc(scores) < m)`` as 0/1 in the dtype of ``scores`` [..., n] (float): the m entries of each
    row that rank first, ties to the lower index. On CPU it needs no sort (:func:`_rank_below_cpu`);
    elsewhere (CUDA: the sort is one kernel) and for NaN scores (the sort ranks them first) it ranks with
    :func:`rank_desc`."""
    n = scores.shape[-1]
    if m <= 0 or m >= n:
        return torch.full_like(scores, float(m > 0))
    mask = _rank_below_cpu(scores, m) if scores.device.type == "cpu" else None
    return (rank_desc(scores) < m).to(scores.dtype) if mask is None else mask


def _rank_below_cpu(scores: Tensor, m: int) -> Tensor | None:
    """:func:`rank_below` by a partial selection, for 0 < m < n; None where the scores hold NaN.

    The m-th largest value v of each row (v_m, from the m + 1 largest or the n - m + 1 smallest entries,
    whichever is fewer) splits the row into entries above v (all in), below v (all out) and equal to v, of
    which the first ``m - #above`` by index are in, as in the stable descending sort. When v_m > v_(m+1) in
    every row (no tie across the cut: the usual case for float scores) the mask is one comparison."""
    n = scores.shape[-1]
    top = m + 1 <= n - m + 1
    if top:      # the m + 1 largest: their minimum is v_(m+1); NaN (ranked largest) would be among them
        vals = torch.topk(scores, m + 1, dim=-1, sorted=False).values
        cut = vals.amin(dim=-1, keepdim=True)
    else:        # the n - m + 1 smallest: their maximum is v_m
        if bool(torch.isnan(scores).any()):
            return None
        vals = torch.topk(scores, n - m + 1, dim=-1, largest=False, sorted=False).values
        cut = vals.amax(dim=-1, keepdim=True)
    rows = vals.numel() // vals.shape[-1]
    if int((vals == cut).sum()) == rows:      # the cut value occurs once per row: no tie across the cut
        # (a comparison written to a float tensor is much cheaper here than a bool one and its conversion)
        return (torch.gt if top else torch.ge)(scores, cut, out=torch.empty_like(scores))
    if top and bool(torch.isnan(vals).any()):
        return None
    # a tie across the cut (then v_m = v_(m+1) = cut): the first ties by index fill the remaining places
    above = scores > cut
    tied = scores == cut
    room = m - above.sum(dim=-1, keepdim=True, dtype=torch.int32)
    return (above | (tied & (tied.cumsum(dim=-1, dtype=torch.int32) <= room))).to(scores.dtype)


def _lowest_suppressed_rank(n: int, k: int, mode: str) -> int:
    """The first rank the suppression factor SF applies to: k (``mode="rest"``: every non-confident
    candidate) or max(k, n - k) (``"bottom"``: the bottom k of the n candidates)."""
    if mode == "rest":
        return k
    if mode == "bottom":
        return max(k, n - k)
    raise ValueError(f"unknown suppress mode {mode!r}")


def selection_factor(scores: Tensor, n: int, k: int, amplify: float, suppress: float, mode: str,
                     candidates: Tensor | None = None) -> Tensor:
    """``selection_weights(rank_desc(scores), n, k, amplify, suppress, mode)`` (the same values) in the dtype
    of ``scores`` [..., m] (entries that rank >= n are not candidates), by :func:`rank_below` instead of a
    full ranking. ``candidates``: the 0/1 mask ``rank < n`` where the caller knows it (m > n only)."""
    low = _lowest_suppressed_rank(n, k, mode)
    confident = rank_below(scores, k)          # a fresh tensor
    if suppress == 0:                          # (+ 0 · M_ns changes no value)
        return confident.mul_(amplify)
    if low == k and scores.shape[-1] == n and _blend_is_exact(amplify, suppress, scores.dtype):
        return confident.mul_(amplify - suppress).add_(suppress)     # AF·M + SF·(1 - M), the same values
    non_confident = 1.0 - (confident if low == k else rank_below(scores, low))
    if scores.shape[-1] > n:                   # entries ranked >= n are not candidates
        non_confident = non_confident * (rank_below(scores, n) if candidates is None else candidates)
    return confident * amplify + non_confident * suppress


def _blend_is_exact(amplify: float, suppress: float, dtype: torch.dtype) -> bool:
    """Whether ``(AF - SF) + SF`` rounds to AF in ``dtype`` (float32 or float64), i.e. whether
    ``M·(AF - SF) + SF`` gives exactly AF and SF for M = 1 and 0 (it does for the defaults 1 and -0.5)."""
    if dtype == torch.float64:
        return (amplify - suppress) + suppress == amplify
    f32 = (lambda v: struct.unpack("f", struct.pack("f", v))[0])
    return dtype == torch.float32 and f32(f32(amplify - suppress) + f32(suppress)) == f32(amplify)


def selection_weights(ranks: Tensor, n: int, k: int, amplify: float, suppress: float, mode: str,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-entry factor ``AF * M_cs + SF * M_ns`` from ranks [..., m] (entries ranked >= n are not candidates).

    ``mode="rest"``: M_ns = every candidate not confident; ``"bottom"``: the bottom-k among the
    non-confident (all n - k others when k > n/2). Returns [..., m] in ``dtype``.
    """
    confident = ranks < k
    low = _lowest_suppressed_rank(n, k, mode)
    non_confident = (ranks >= low) & (ranks < n)
    return confident.to(dtype) * amplify + non_confident.to(dtype) * suppress


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
