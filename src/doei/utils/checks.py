"""Argument checks of the public Python API: a wrong type is a ``TypeError`` naming the function, the
argument and the type expected; a bad value a ``ValueError`` in one sentence — at the call, never from
deep inside (``plug("deit_small_patch16_224")``, ``load_classifier(..., num_classes=-1)``, ``device="gpu"``)."""
from __future__ import annotations

import math
import os
import re
from typing import Any

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps|meta)$")


def _show(value: Any) -> str:
    """The found value in a few words: its type, and a short one-line repr for plain values."""
    if isinstance(value, (str, bytes, int, float, bool, type(None), dict, list, tuple)):
        r = repr(value).replace("\n", " ")
        return f"{type(value).__name__} {r[:40] + '...' if len(r) > 40 else r}"
    return f"a {type(value).__module__}.{type(value).__name__}"


def expect_type(func: str, name: str, value: Any, types: type | tuple, expected: str, hint: str = "") -> None:
    """``TypeError`` unless ``isinstance(value, types)`` (a bool is not accepted as a number)."""
    numeric = types in (int, float) or (isinstance(types, tuple) and set(types) <= {int, float, type(None)})
    if not isinstance(value, types) or (numeric and isinstance(value, bool)):
        raise TypeError(f"{func}: {name} must be {expected}, got {_show(value)}" + (f"; {hint}" if hint else ""))


def expect_path(func: str, name: str, value: Any) -> None:
    expect_type(func, name, value, (str, os.PathLike), "a file path (str or os.PathLike)")


def expect_int(func: str, name: str, value: Any, low: int = 1, optional: bool = False) -> None:
    """An integer ``>= low`` (or None when ``optional``)."""
    if optional and value is None:
        return
    expect_type(func, name, value, int, f"an integer >= {low}" + (" or None" if optional else ""))
    if value < low:
        raise ValueError(f"{func}: {name}={value} is out of range; expected an integer >= {low}")


def expect_positive_floats(func: str, name: str, value: Any) -> None:
    """A non-empty sequence of finite numbers > 0 (scales)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{func}: {name} must be a sequence of numbers, got {_show(value)}")
    vals = list(value)
    if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                           for v in vals):
        raise ValueError(f"{func}: {name}={vals!r}: expected one or more finite numbers > 0")


def expect_device(func: str, name: str, value: Any) -> None:
    """A device torch can use here: ``cpu``, ``cuda``, ``cuda:N`` (only with CUDA), ``mps``, or a ``torch.device``."""
    import torch

    if isinstance(value, torch.device):
        value = str(value)
    expect_type(func, name, value, str, "a device name ('cpu', 'cuda', 'cuda:N') or a torch.device")
    if not _DEVICE.match(value):
        raise ValueError(f"{func}: {name}={value!r} is not a device; expected 'cpu', 'cuda', 'cuda:N' or a "
                         "torch.device")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{func}: {name}={value!r}, but CUDA is not available on this machine (use 'cpu')")


__all__ = ["expect_type", "expect_path", "expect_int", "expect_positive_floats", "expect_device"]
