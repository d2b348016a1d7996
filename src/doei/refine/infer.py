"""Random-walk inference (PSA/AffinityNet): CAMs + AffinityNet features → pseudo masks, one PNG per image.

:func:`infer_pseudo_masks` writes ``refine.infer.out_dir/<id>.png`` (class-index PNGs, VOC palette)
atomically and skips images whose PNG exists, so an interrupted run resumes; its log is
``refine_infer_log.jsonl`` in the output folder. With ``refine.infer.overlays`` it also writes
``overlay/<id>.png`` (image | pseudo mask over it, with a legend of the classes). Under ``torchrun`` the images are sharded over the
ranks (byte-identical files; docs/distributed.md). ``doei refine infer`` is the command.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from doei.cam.io import load_cam
from doei.cam.visualize import label_figure, save_label_png
from doei.data.build import dataset_from_config
from doei.engine.per_image import PerImageJob, first_n
from doei.engine.train_aff import build_affinity_model, normalize, require_id_files
from doei.errors import DoeiError
from doei.models.weights import load_model_weights
from doei.refine.random_walk import random_walk_refine
from doei.utils.device import resolve_device
from doei.utils.io import atomic_save_png

LOG_FILE = "refine_infer_log.jsonl"


def pad_to_stride(x: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad ``[B,C,H,W]`` on the bottom/right to multiples of ``stride`` (the official ``infer_aff`` input)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % stride, 0, -h % stride))


def load_affinity_model(cfg, device: str) -> torch.nn.Module:
    """The AffinityNet of ``refine.infer`` with its trained weights (ours or an official ``.pth``), in eval mode."""
    ri, rt = cfg.refine.infer, cfg.refine.train
    options = rt.model_options if ri.model == rt.model else {}
    model = build_affinity_model(ri.model, options, radius=rt.radius)
    if not Path(ri.checkpoint).is_file():
        raise DoeiError(f"{ri.checkpoint}: AffinityNet checkpoint not found (run doei refine train first, "
                        "or set refine.infer.checkpoint)")
    load_model_weights(model, ri.checkpoint, strict=True)
    return model.to(device).eval()


def infer_pseudo_masks(cfg, limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Random-walk pseudo masks of ``refine.infer.split`` → ``refine.infer.out_dir/<id>.png``; resumable per image.

    Per image: AffinityNet features of the normalised, zero-padded image ``[C, ceil(H/8), ceil(W/8)]``,
    then :func:`doei.refine.random_walk.random_walk_refine` of its CAMs with the configured
    background (constant 0.39 / ``(1-max)^alpha``), β and logt. Returns a summary dict. The loop is
    :class:`doei.engine.per_image.PerImageJob` (resume, torchrun sharding, log, one writer).
    """
    return RandomWalkJob(cfg, limit).run()


class RandomWalkJob(PerImageJob):
    """The random walk of one split as a :class:`~doei.engine.per_image.PerImageJob`."""

    desc = "doei refine infer"
    log_name = LOG_FILE
    what = "pseudo-mask folder"

    def __init__(self, cfg, limit: int | None = None) -> None:
        ri = cfg.refine.infer
        self.cfg, self.ri = cfg, ri
        self.cam_dir = Path(ri.cam_dir)
        first_n([], limit)                                  # a bad --limit before the dataset is opened
        self.base = dataset_from_config(cfg.data, ri.split)
        self.records = first_n(self.base.records, limit)
        require_id_files(self.cam_dir, [r.id for r in self.records], ".npz", "CAM",
                         "run doei cam first, or set refine.infer.cam_dir")
        super().__init__(ri.out_dir, len(self.records), resolve_device(ri.device), ri.progress,
                         "refine.infer.out_dir")

    def outputs(self, i: int) -> list[Path]:
        rid = self.records[i].id
        return [self.out / f"{rid}.png"] + ([self.out / "overlay" / f"{rid}.png"] if self.ri.overlays else [])

    def start_fields(self, todo: list[int]) -> dict:
        ri = self.ri
        return {"checkpoint": str(ri.checkpoint), "bg_mode": ri.bg_mode, "bg_threshold": ri.bg_threshold,
                "alpha": ri.alpha, "beta": ri.beta, "logt": ri.logt}

    def prepare(self) -> None:
        self.model = load_affinity_model(self.cfg, str(self.device))

    def process(self, i: int) -> dict:
        t = time.time()
        ri, rid = self.ri, self.records[i].id
        image = self.base.sample(i, with_mask=False).image
        classes, cams = load_cam(self.cam_dir / f"{rid}.npz")
        if cams.shape[1:] != image.shape[:2]:
            raise DoeiError(f"{self.cam_dir / (rid + '.npz')}: CAM size {cams.shape[1:]} differs from image size "
                            f"{image.shape[:2]}")
        x = torch.from_numpy(normalize(image).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            feats = self.model.features(pad_to_stride(x).to(self.device))[0].float().cpu()
        pred = random_walk_refine(cams, classes, feats, bg_mode=ri.bg_mode, bg_threshold=ri.bg_threshold,
                                  alpha=ri.alpha, beta=ri.beta, logt=ri.logt, num_classes=self.cfg.data.num_classes + 1,
                                  radius=self.model.radius)
        pred = np.ascontiguousarray(pred, dtype=np.uint8)
        if ri.overlays:
            atomic_save_png(self.out / "overlay" / f"{rid}.png",
                            label_figure(image, pred, self.base.class_names, title=rid, what="pseudo mask (random walk)"))
        save_label_png(self.out / f"{rid}.png", pred)
        return {"id": rid, "seconds": round(time.time() - t, 4)}
