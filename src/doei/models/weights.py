"""Loading model weights from a checkpoint file or a state dict, without pickle.

Accepted layouts (what the baselines and common trainers write): a bare state dict, ``{'model': sd}``
(MCTformer, TS-CAM), ``{'state_dict': sd}`` (Lightning-style), and keys prefixed with ``module.``
(``DistributedDataParallel``) or ``_orig_mod.`` (``torch.compile``). Files are read with
``torch.load(weights_only=True)``, so a checkpoint cannot run code when opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from doei.errors import DoeiError

_WRAPPER_KEYS = ("model", "state_dict", "model_state", "net")
_PREFIXES = ("module.", "_orig_mod.")


def load_weights_only(path: str | os.PathLike, what: str = "weights-only torch checkpoint") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a one-line DoeiError if missing or unreadable
    (including a pickle that would need arbitrary objects: weights-only loading refuses to build them)."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise DoeiError(f"{path}: not a readable {what} (it claims more memory than there is)") from None
    except Exception as e:  # noqa: BLE001 - any failure to decode a user's file is bad input, not a bug
        # torch.load on arbitrary bytes raises UnpicklingError, but also IndexError, KeyError, EOFError,
        # RuntimeError, ValueError, zipfile.BadZipFile ... depending on the bytes: all mean "not a checkpoint".
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DoeiError(f"{path}: not a readable {what} ({type(e).__name__}{': ' + first if first else ''})"
                        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its (unwrapped) state dict of tensors on the CPU."""
    return unwrap_state_dict(load_weights_only(path), where=str(path))


def unwrap_state_dict(obj: object, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside ``obj`` and strip ``module.`` / ``_orig_mod.`` key prefixes."""
    if not isinstance(obj, Mapping):
        raise DoeiError(f"{where}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DoeiError(f"{where}: no tensors found (top-level keys: {sorted(map(str, obj))[:8]})")
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        k = str(k)
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p):], True
        out[k] = v
    return out


def load_model_weights(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                       strict: bool = True, where: str | None = None) -> nn.Module:
    """Load weights into ``model`` (in place) and return it.

    With ``strict`` every model key must be present, no extra key may exist, and every shape must
    match; otherwise a one-line DoeiError names the first offending keys (e.g. a checkpoint trained
    for 20 classes loaded into an 80-class model names ``head.weight`` and both shapes). Without
    ``strict`` missing/unexpected keys are allowed but shape mismatches are still errors.
    """
    if isinstance(path_or_state_dict, Mapping):
        where = where or "state dict"
        sd = unwrap_state_dict(path_or_state_dict, where)
    else:
        where = where or str(path_or_state_dict)
        sd = read_state_dict(path_or_state_dict)
    own = model.state_dict()
    mismatched = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if mismatched:
        more = f" (+{len(mismatched) - 2} more)" if len(mismatched) > 2 else ""
        raise DoeiError(f"{where}: shape mismatch for {'; '.join(mismatched[:2])}{more}")
    if strict:
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if parts:
            raise DoeiError(f"{where}: checkpoint does not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=strict)
    return model


def _few(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
