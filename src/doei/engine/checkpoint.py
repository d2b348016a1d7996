"""Training checkpoints: plain dicts of tensors/numbers/strings, written atomically, read weights-only.

Layout of ``checkpoint.pt`` (``format`` = ``doei-train-ckpt-v1``)::

    model       state dict (tensors)
    optimizer   AdamW state dict (tensors, numbers, lists)
    scaler      GradScaler state dict ({} without AMP)
    epoch       last COMPLETED epoch (0-based)
    step        optimiser steps taken so far
    config      the TrainConfig as a nested dict (str/int/float/bool/None/list/dict)
    rng         {"torch": uint8 tensor, "cuda": [uint8 tensors], "numpy": int64 [626], "python": int64 [627], ...}
    metrics     the epoch's summary numbers

Everything is a type ``torch.load(weights_only=True)`` accepts, so opening a checkpoint cannot run code.
The file is written to a temporary name and renamed (:func:`doei.utils.io.atomic_path`): a run killed
while saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from doei.config import check_type
from doei.errors import DoeiError
from doei.utils.io import atomic_path

FORMAT = "doei-train-ckpt-v1"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


# ------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU/CUDA) as tensors only."""
    version, internal, gauss = random.getstate()
    py = torch.tensor([version, *internal, -1 if gauss is None else 1], dtype=torch.int64)
    py_gauss = torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    npy = torch.from_numpy(np.concatenate([keys.astype(np.int64), [pos, has_gauss]]).astype(np.int64))
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": py, "python_gauss": py_gauss,
        "numpy": npy, "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when as many devices exist)."""
    torch.set_rng_state(state["torch"])
    py = state["python"].tolist()
    gauss = None if py[-1] == -1 else float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:-1]), gauss))
    npy = state["numpy"].numpy()
    np.random.set_state(("MT19937", npy[:-2].astype(np.uint32), int(npy[-2]), int(npy[-1]),
                         float(state["numpy_gauss"][0])))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------ save / load
def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, step: int, config: dict, scaler: Any = None,
                    metrics: dict | None = None) -> None:
    """Write a training checkpoint atomically (see the module docstring for the layout)."""
    obj = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "rng": rng_state(),
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str)) or v is None},
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; a one-line DoeiError if it is not one."""
    from doei.models.weights import load_weights_only

    path = Path(path)
    return check_checkpoint(load_weights_only(path, "weights-only checkpoint"), path)


def check_checkpoint(obj: object, path: str | os.PathLike) -> dict[str, Any]:
    """``obj`` (a loaded file) if it is a complete training checkpoint, else a one-line DoeiError."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise DoeiError(f"{path}: not a doei training checkpoint (format {got!r}, expected {FORMAT!r})")
    for key, tp in (("model", dict), ("optimizer", dict), ("epoch", int), ("step", int), ("config", dict),
                    ("rng", dict)):
        if key not in obj:
            raise DoeiError(f"{path}: checkpoint lacks {key!r}")
        check_type(obj[key], tp, f"{path}: {key}")        # the one schema check for what is read back
    return obj


def refuse_to_replace(out_dir: str | os.PathLike, overwrite: bool, what: str = "out_dir") -> None:
    """Before a fresh (not resumed) training into ``out_dir``, checked before any work: refused with one
    line while the folder holds a run (its checkpoint: at least one finished epoch) unless ``overwrite``.
    A folder left by a start that failed or was killed before its first checkpoint (a config, a log of a
    few steps) holds nothing worth keeping and can be started again."""
    from doei.utils.outdir import check_out_dir

    out_dir = check_out_dir(out_dir, what)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if ckpt_path.is_file() and not overwrite:
        raise DoeiError(f"{what} {out_dir}: holds a training run ({CHECKPOINT_NAME}); continue it with --resume, "
                        "or start afresh with --overwrite (replaces it)")
