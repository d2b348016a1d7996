"""Training DeepLab-v1 (ResNet38) on pseudo masks (MCTformer ``seg/train_seg.py`` + ``run_seg.sh`` recipe).

Per image (:class:`SegDataset`): random scale in ``scale_range`` (0.7–1.3; bilinear image, nearest
label), random horizontal flip, ImageNet normalisation, random ``crop_size`` crop (zero padding of
the normalised image, ``pad_label`` for the label — the official code pads the label with 0, i.e.
background; 255 (ignored) is the default here, docs/pipeline.md). Loss: cross-entropy with ignore
index 255 on the logits bilinearly upsampled (``align_corners=False``) to the crop. SGD + poly
(:mod:`doei.engine.sgd_loop`), backbone ×1 and the two head convolutions ×``head_lr_mult`` (10),
BatchNorm frozen as the official net.

Guard: a pseudo-label folder that IS the dataset's ground truth (same resolved folder, or the same
label maps for the first ids) is refused — training on ground truth and reporting it as weakly
supervised is a known way to fool oneself (:func:`check_not_ground_truth`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from doei.data.build import dataset_from_config
from doei.data.common import read_mask
from doei.engine import distributed as dist_util
from doei.engine.per_image import first_images
from doei.engine.seed import epoch_seed, seed_everything
from doei.engine.sgd_loop import fit
from doei.engine.train_aff import crop_hwc, item_rng, normalize, random_crop_offsets, require_id_files
from doei.errors import DoeiError
from doei.models.initial_weights import load_initial_weights
from doei.models.registry import create_model
from doei.pipeline_config import PipelineConfig, SegTrainSection
from doei.utils.device import resolve_device

GT_CHECK_IDS = 5


def read_pseudo_label(path: Path, num_classes: int) -> np.ndarray:
    """uint8 ``[H,W]`` label map (0..num_classes, 255 ignore) from a PNG; one-line errors."""
    return read_mask(path, num_classes)


def _ground_truth_dirs(base, cfg: PipelineConfig) -> list[Path]:
    dirs = {r.mask_path.parent.resolve() for r in base.records if r.mask_path is not None}
    if cfg.data.mask_dir:
        dirs.add(Path(cfg.data.mask_dir).resolve())
    root = Path(cfg.data.root)
    for name in ("SegmentationClassAug", "SegmentationClass"):
        if (root / name).is_dir():
            dirs.add((root / name).resolve())
    return sorted(dirs)


def check_not_ground_truth(pseudo_dir: str | Path, base, cfg: PipelineConfig, n: int = GT_CHECK_IDS) -> None:
    """Raise a DoeiError when ``pseudo_dir`` is the dataset's ground-truth folder: the same resolved
    path, or label maps identical to the ground truth for the first ``n`` ids (a copy)."""
    pseudo = Path(pseudo_dir).resolve()
    for gt in _ground_truth_dirs(base, cfg):
        if pseudo == gt:
            raise DoeiError(f"{pseudo_dir}: this is the dataset's ground-truth folder ({gt}); training on it is not "
                            "weakly supervised (expected the pseudo masks of doei refine infer)")
    records = [r for r in base.records if r.mask_path is not None][:n]
    if not records:
        return
    same = 0
    for r in records:
        p = pseudo / f"{r.id}.png"
        if not p.is_file():
            return
        if p.read_bytes() == r.mask_path.read_bytes():
            same += 1
            continue
        try:
            a = read_pseudo_label(p, base.num_classes)
            b = read_pseudo_label(r.mask_path, base.num_classes)
        except DoeiError:
            return
        if a.shape != b.shape or not np.array_equal(a, b):
            return
        same += 1
    if same == len(records):
        raise DoeiError(f"{pseudo_dir}: its first {same} label maps are identical to the ground truth in "
                        f"{records[0].mask_path.parent}; refusing to train on ground truth as pseudo labels")


class SegDataset(Dataset):
    """``ds[i]`` → ``(image float32 [3,crop,crop], label int64 [crop,crop])`` from the pseudo masks."""

    def __init__(self, base, pseudo_dir: str | Path, sec: SegTrainSection) -> None:
        self.base, self.pseudo_dir, self.sec = base, Path(pseudo_dir), sec
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        sec = self.sec
        rng = item_rng(sec.seed, self.epoch, i, stream=1)
        image = self.base.sample(i, with_mask=False).image
        rid = self.base.records[i].id
        label = read_pseudo_label(self.pseudo_dir / f"{rid}.png", self.base.num_classes)
        if label.shape != image.shape[:2]:
            raise DoeiError(f"{self.pseudo_dir / (rid + '.png')}: size {label.shape[1]}x{label.shape[0]} differs from "
                            f"the image's {image.shape[1]}x{image.shape[0]}")
        s = rng.uniform(*sec.scale_range)
        h, w = image.shape[:2]
        nh, nw = max(1, int(h * s)), max(1, int(w * s))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
        if sec.hflip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        offs = random_crop_offsets(nh, nw, sec.crop_size, rng)
        img = crop_hwc(normalize(np.ascontiguousarray(image)), sec.crop_size, offs, 0.0)
        lab = crop_hwc(np.ascontiguousarray(label)[..., None], sec.crop_size, offs, sec.pad_label)[..., 0]
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(lab.astype(np.int64)))


def seg_loss_fn(model: nn.Module, batch: tuple, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy (ignore 255) of the logits upsampled to the label size."""
    x, y = batch
    y = y.to(device)
    logits = model(x.to(device))
    logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
    if dist_util.current_training_ranks().size == 1:
        loss = F.cross_entropy(logits, y, ignore_index=255)
    else:   # the mean over the valid pixels of the GLOBAL batch (DDP: the single-process gradient)
        loss = dist_util.global_ratio(F.cross_entropy(logits, y, ignore_index=255, reduction="sum"), (y != 255).sum())
    return loss, {"valid_frac": float((y != 255).float().mean())}


def build_seg_model(name: str, num_classes: int, options: dict, init_weights: str | None = None,
                    log: Callable[[str], None] | None = None) -> nn.Module:
    """A registered DeepLab ResNet38 (``deeplab_resnet38`` / ``deeplab_resnet38_small``) with ``num_classes``
    outputs (background included); initial weights loaded non-strictly after a coverage check
    (:mod:`doei.models.initial_weights`; new: the head ``fc8_seg_conv1/2``), reported to ``log``."""
    import doei.models.resnet38_small  # noqa: F401  (registers the reduced-width factories)

    try:
        model = create_model(name, num_classes=num_classes, **options)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"seg model {name!r} with options {options}: {e}") from None
    if not hasattr(model, "from_scratch_names"):
        raise DoeiError(f"seg model {name!r}: not a DeepLab ResNet38 (expected deeplab_resnet38 or deeplab_resnet38_small)")
    if init_weights:
        cov = load_initial_weights(model, init_weights, name)
        if log is not None:
            log(f"seg.train.init_weights {init_weights}: {cov.summary()}")
    return model


def seg_param_groups(model: nn.Module, weight_decay: float, head_mult: float) -> list[tuple[list, float, float]]:
    """Two SGD groups as ``train_seg.py``: every trainable backbone parameter ×1, the head (``fc8*``) ×``head_mult``."""
    head_ids = {id(p) for n in model.from_scratch_names for p in getattr(model, n).parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    return [(backbone, 1.0, weight_decay), (head, head_mult, weight_decay)]


def train_segmentation(cfg: PipelineConfig, resume: bool | str = "auto", stop_after: int | None = None,
                       log: Callable[[str], None] = print, overwrite: bool = False, limit: int | None = None,
                       max_steps: int | None = None):
    """Train the segmentation net as configured in ``cfg.seg.train``; returns a :class:`doei.engine.loop.TrainResult`.
    A fresh start (``resume=False``) into a folder that holds a run is refused (before the data and the
    net are built) unless ``overwrite``; the loop locks the folder (one writer). A capped (smoke) run:
    ``limit`` = only the first N images of the split, ``max_steps`` = exactly that many optimiser steps."""
    sec = cfg.seg.train
    d = cfg.data

    def build():        # called by the loop once it has refused to replace a finished run and locked the folder
        base = first_images(dataset_from_config(cfg.data, sec.split), limit)
        pseudo = Path(sec.pseudo_dir)
        if sec.allow_ground_truth:
            log(f"train-seg: seg.train.allow_ground_truth is set: {pseudo} may hold ground truth (an oracle run)")
        else:
            check_not_ground_truth(pseudo, base, cfg)
        require_id_files(pseudo, base.ids, ".png", "pseudo-label",
                         "run doei refine infer first, or set seg.train.pseudo_dir", sec.split)
        ds = SegDataset(base, pseudo, sec)
        seed_everything(epoch_seed(sec.seed, -1, "init"))
        model = build_seg_model(sec.model, d.num_classes + 1, sec.model_options, sec.init_weights,
                                log=log if dist_util.is_main() else None)
        return model, ds, seg_param_groups(model, sec.weight_decay, sec.head_lr_mult)

    config = {**{k: v for k, v in vars(sec).items()}, "data": vars(d).copy()}
    fixed = ["model", "model_options", "init_weights", "pseudo_dir", "split", "crop_size", "batch_size", "epochs",
             "lr", "head_lr_mult", "weight_decay", "momentum", "optimizer", "power", "scale_range", "hflip", "pad_label", "seed",
             "data"]
    return fit(build=build, loss_fn=seg_loss_fn, base_lr=sec.lr,
               momentum=sec.momentum, optimizer=sec.optimizer, power=sec.power, epochs=sec.epochs, batch_size=sec.batch_size, seed=sec.seed,
               device=torch.device(resolve_device(sec.device)), out_dir=sec.out_dir, config=config,
               resume_fixed=fixed, resume=resume, num_workers=sec.num_workers, log_every=sec.log_every,
               progress=sec.progress, deterministic=sec.deterministic, stop_after=stop_after, desc="seg", log=log,
               overwrite=overwrite, max_steps=max_steps, sync_bn=sec.sync_bn, what="seg.train.out_dir")

__all__ = ["SegDataset", "train_segmentation", "build_seg_model", "check_not_ground_truth", "seg_param_groups",
           "seg_loss_fn", "read_pseudo_label"]
