"""Seeding and determinism: every random draw of a training run follows from ``(seed, epoch)``.

The loop reseeds Python's ``random``, NumPy and torch (CPU and CUDA) at the start of every epoch from
:func:`epoch_seed`, and the DataLoader's shuffling generator likewise. An epoch is then a pure function
of the model/optimiser state at its start, so resuming from an end-of-epoch checkpoint reproduces the
uninterrupted run bit for bit (the checkpoint also stores the RNG states, see
:mod:`doei.engine.checkpoint`, for code that draws random numbers outside the epochs).
"""
from __future__ import annotations

import os
import random
import zlib

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, stream: str = "") -> int:
    """A 63-bit seed derived from ``(seed, epoch, stream)``; different streams never share a seed.

    CRC32 of the text key spread with a large odd multiplier; stable across processes and platforms
    (unlike Python's salted ``hash``).
    """
    key = f"{int(seed)}/{int(epoch)}/{stream}".encode()
    return (zlib.crc32(key) * 0x9E3779B97F4A7C15 + int(seed)) % (2 ** 63)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU + all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def loader_generator(seed: int, epoch: int, stream: str = "order") -> torch.Generator:
    """A torch.Generator for epoch ``epoch``: ``"order"`` shuffles the samples, ``"workers"`` seeds the
    DataLoader's worker processes (each worker's torch/random/NumPy RNGs derive from it)."""
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch, f"loader-{stream}"))
    return g


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels (warn-only: ops without one still run) and fixed cuDNN choices.

    Also sets ``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS on CUDA ≥ 10.2. CPU training in this
    project is deterministic for a fixed thread count; on CUDA, some kernels (e.g. scatter-add in
    backward) are only deterministic with this switch on.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
