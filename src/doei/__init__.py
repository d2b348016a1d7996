"""DOEI (Dual Optimization of Embedding Information) and the weakly supervised semantic segmentation
pipeline it plugs into.

The short API (each name is imported on first use, so ``import doei`` stays cheap)::

    import doei

    model = doei.create_model("mctformer_v2_deit_small", num_classes=20, doei=doei.DOEIConfig(enabled=True))
    doei.plug(timm_vit, doei.DOEIConfig(enabled=True))          # DOEI inside any timm ViT
    with doei.AttentionCAM(model) as cam:                        # CAMs, pytorch-grad-cam style
        maps = cam(images)                                       # targets=None: the predicted classes
    model, spec = doei.load_classifier("runs/train_cls/checkpoint.pt")
    doei.run_pipeline(doei.load_pipeline_config("configs/demo_pipeline.yaml"))

Everything else lives in the sub-packages (``doei.core``, ``doei.models``, ``doei.cam``, ...); the
command line is ``doei --help``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__ (PEP 562).
_LAZY: dict[str, str] = {
    "DOEIConfig": "doei.core",
    "create_model": "doei.models.registry",
    "list_models": "doei.models.registry",
    "plug": "doei.models.timm_plugin",
    "unplug": "doei.models.timm_plugin",
    "AttentionCAM": "doei.cam.api",
    "load_classifier": "doei.engine.classifier",
    "build_dataset": "doei.data.build",
    "run_pipeline": "doei.pipeline",
    "load_pipeline_config": "doei.pipeline_config",
    "DoeiError": "doei.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from doei.cam.api import AttentionCAM
    from doei.core import DOEIConfig
    from doei.data.build import build_dataset
    from doei.engine.classifier import load_classifier
    from doei.errors import DoeiError
    from doei.models.registry import create_model, list_models
    from doei.models.timm_plugin import plug, unplug
    from doei.pipeline import run_pipeline
    from doei.pipeline_config import load_pipeline_config


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'doei' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
