"""The classifier-training config (``doei train-cls --config FILE``): strict dataclasses, one per section.

A YAML file has up to five sections, every key optional (defaults below), unknown keys rejected::

    model: {name, num_classes, img_size, pretrained, drop_rate, drop_path_rate, options}
    data:  {kind, root, train_split, val_split, labels, labels_file, classes_file, mask_dir,
            transform, crop_scale, color_jitter, hflip}
    optim: {lr, lr_batch_base, weight_decay, betas, eps, warmup_epochs, warmup_lr, min_lr, clip_grad}
    doei:  a DOEIConfig mapping (enabled, ppdo, cpdo, hfa, layers, st_*, af_*, sf_*, alpha, suppress)
    train: {epochs, batch_size, seed, device, amp, out_dir, num_workers, log_every, eval_every,
            deterministic, progress, sync_bn}

Overrides: ``--set optim.lr=1e-3 --set doei.enabled=true``. The defaults are MCTformer-V2's VOC recipe
(docs/training.md) except where a field says otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from doei.config import apply_overrides, from_dict, load_yaml
from doei.core import DOEIConfig
from doei.data.build import DatasetKind, dataset_options
from doei.errors import DoeiError


@dataclass
class ModelSection:
    """Which network. ``options`` are extra keyword arguments of the registered factory (e.g. depth)."""

    name: str = "mctformer_v2_deit_small"
    num_classes: int = 20
    img_size: int = 224
    pretrained: Optional[str] = None       # path to a DeiT/timm or MCTformer checkpoint (weights only)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1            # MCTformer main.py --drop-path default
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Where the images are and how they are augmented.

    ``kind``: a registered dataset kind: ``voc``, ``synth`` (the synthetic benchmark, VOC layout), ``coco``,
    ``folder``, ... (:func:`doei.data.build.dataset_kinds`); the loader gets the fields below that it
    declares as options, and any other option it declares given as a key of this section (``image_dir:``,
    ``--set data.image_dir=...``; collected in ``options``); one it does not declare is refused naming the
    ones it accepts (:func:`doei.data.build.dataset_options`). ``transform``:
    ``mctformer`` (the official timm RandAugment recipe), ``simple`` (RandomResizedCrop with
    ``crop_scale`` + flip + ``color_jitter``; for tiny from-scratch models) or ``resize``.
    Validation uses MCTformer's Resize + CenterCrop with ``mctformer``, else a plain square resize.
    """

    kind: DatasetKind = "voc"              # a registered kind (doei.data.build.dataset_kinds)
    root: str = ""
    train_split: str = "train_aug"
    val_split: Optional[str] = None
    labels: str = "auto"                   # VOC: auto | file | xml | masks
    labels_file: Optional[str] = None
    classes_file: Optional[str] = None     # folder datasets
    mask_dir: Optional[str] = None
    transform: Literal["mctformer", "simple", "resize"] = "mctformer"
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    color_jitter: float = 0.0
    hflip: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)   # the loader's other declared options

    EXTRA_KEYS: ClassVar[str] = "options"   # unknown keys are dataset options (doei.config.from_dict)


@dataclass
class OptimSection:
    """AdamW + linear warm-up + cosine, as MCTformer (DeiT/timm) does.

    The peak learning rate is ``lr * batch_size / lr_batch_base`` (DeiT's linear scaling rule, which
    MCTformer's main.py applies: 5e-4 × 64 / 512 = 6.25e-5); ``lr_batch_base: null`` uses ``lr`` as is.
    """

    lr: float = 5e-4
    lr_batch_base: Optional[int] = 512
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: Optional[float] = None


@dataclass
class TrainSection:
    """Loop settings. ``device``: auto (CUDA if available) | cpu | cuda | cuda:N. ``amp`` only acts on CUDA."""

    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    out_dir: str = "runs/train_cls"
    num_workers: int = 0
    log_every: int = 10
    eval_every: int = 1
    deterministic: bool = True
    progress: bool = True
    # under DDP, BatchNorm layers (the Conformer's CNN branch, conv stems) normalise over the global batch as one
    # process does (TransCAM's train_TransCAM.py trains one model on the whole batch); no effect with one process
    sync_bn: bool = True


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    # typed from the moment the YAML is read (doei.config.from_dict builds it; an empty section = DOEI off):
    # every consumer reads these fields, nobody re-parses a dict
    doei: DOEIConfig = field(default_factory=DOEIConfig)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self, where: str = "config") -> "TrainConfig":
        """Range checks that the type system cannot express; raises a one-line DoeiError."""
        checks = [
            (self.model.num_classes >= 1, "model.num_classes", self.model.num_classes, ">= 1"),
            (self.model.img_size >= 8, "model.img_size", self.model.img_size, ">= 8"),
            (self.train.epochs >= 1, "train.epochs", self.train.epochs, ">= 1"),
            (self.train.batch_size >= 1, "train.batch_size", self.train.batch_size, ">= 1"),
            (self.train.num_workers >= 0, "train.num_workers", self.train.num_workers, ">= 0"),
            (self.train.log_every >= 1, "train.log_every", self.train.log_every, ">= 1"),
            (self.train.eval_every >= 1, "train.eval_every", self.train.eval_every, ">= 1"),
            (self.optim.lr > 0, "optim.lr", self.optim.lr, "> 0"),
            (self.optim.lr_batch_base is None or self.optim.lr_batch_base > 0, "optim.lr_batch_base",
             self.optim.lr_batch_base, "> 0 or null"),
            (self.optim.warmup_epochs >= 0, "optim.warmup_epochs", self.optim.warmup_epochs, ">= 0"),
            (self.optim.weight_decay >= 0, "optim.weight_decay", self.optim.weight_decay, ">= 0"),
            (len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas",
             self.optim.betas, "two numbers in [0, 1)"),
            (self.optim.clip_grad is None or self.optim.clip_grad > 0, "optim.clip_grad", self.optim.clip_grad,
             "> 0 or null"),
            (len(self.data.crop_scale) == 2 and 0 < self.data.crop_scale[0] <= self.data.crop_scale[1] <= 1,
             "data.crop_scale", self.data.crop_scale, "[min, max] with 0 < min <= max <= 1"),
            (0 <= self.data.hflip <= 1, "data.hflip", self.data.hflip, "in [0, 1]"),
            (self.data.color_jitter >= 0, "data.color_jitter", self.data.color_jitter, ">= 0"),
            (self.train.device == "auto" or self.train.device == "cpu" or self.train.device.startswith("cuda"),
             "train.device", self.train.device, "auto, cpu, cuda or cuda:N"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise DoeiError(f"{where}: {key} = {value!r}, expected {expected}")
        if not self.data.root:
            raise DoeiError(f"{where}: data.root is empty (expected the dataset folder)")
        dataset_options(self.data, where=f"{where}: data")         # options the kind's loader does not take
        return self

    def peak_lr(self) -> float:
        """The learning rate after warm-up (DeiT's linear batch scaling when ``lr_batch_base`` is set)."""
        base = self.optim.lr_batch_base
        return self.optim.lr * (self.train.batch_size / base if base else 1.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["data"]["options"]:          # as configs without dataset options were always recorded
            del d["data"]["options"]
        return d


def train_config_from_dict(data: dict, where: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict (strict keys); its ``doei`` section becomes
    a :class:`DOEIConfig` here, once. ``to_dict`` records every DOEI field, so a checkpoint's stored config
    says exactly which DOEI the model was trained with even after a default changes (``sf_c2c`` did:
    -0.5 -> 0)."""
    raw = data.get("doei") if isinstance(data, dict) else None
    if isinstance(raw, dict) and raw and "enabled" not in raw:
        import warnings

        from doei.errors import DoeiWarning

        warnings.warn(f"{where}: the doei section sets {sorted(raw)} but not enabled: true, so DOEI is OFF",
                      DoeiWarning, stacklevel=2)
    return from_dict(TrainConfig, data, where=where).validate(where)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path`` (YAML), apply ``--set key=value`` overrides, build and validate."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return train_config_from_dict(data, where=str(path))
