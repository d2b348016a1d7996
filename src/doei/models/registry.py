"""A registry of named model variants: ``create_model("mctformer_v2_deit_small", num_classes=20)``."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from doei.errors import DoeiError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered variant; unknown names raise a DoeiError listing the known ones."""
    _import_all()
    if name not in _MODELS:
        raise DoeiError(f"unknown model {name!r} (known: {', '.join(sorted(_MODELS))})")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)


def _import_all() -> None:
    import importlib

    for mod in ("mctformer", "tscam", "conformer", "resnet38", "resnet38_small"):
        try:
            importlib.import_module(f"doei.models.{mod}")
        except ModuleNotFoundError as e:  # a family not written yet
            if e.name != f"doei.models.{mod}":
                raise
