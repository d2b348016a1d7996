"""CAMs of a synthetic benchmark's held-out split and their β-sweep score: what the demo and the studies
compare between classifiers (scale 1 + flip at the model's input size, ReLU then per-class min-max).

These are not ``doei cam``'s official multi-scale CAMs of a training split (:mod:`doei.cam.generate`):
they are a cheap, model-size read-out used to compare classifiers on one footing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from doei.cam.extractor import CamExtractor, minmax_labelled
from doei.cam.io import save_cam
from doei.data.build import build_dataset
from doei.data.transforms import cam_transform
from doei.engine.classifier import load_classifier
from doei.eval.betas import parse_betas
from doei.eval.evaluate import evaluate_dirs
from doei.eval.report import build_report


def write_cams(checkpoint: Path, synth_root: Path, out_dir: Path, cam_layers: int, batch: int,
               patch_refine: bool = False) -> list[str]:
    """CAMs of the val split (scale 1 + flip, GT image labels) → ``out_dir/<id>.npz``; returns the ids.

    The model's own CAM source (``cam_source``) through :class:`CamExtractor`; the views' maps are summed,
    then ``relu`` and per-class min-max: TransCAM's "minmax" normalisation (:mod:`doei.cam.transcam`; the
    official one leaves hugely negative values). For MCTformer and TS-CAM the maps are already ≥ 0, so the
    ReLU changes nothing there.

    ``patch_refine`` is off by default: in the small from-scratch model the patch→patch attention summed
    over all blocks is dominated by a few background "sink" patches, and the official refinement then
    spreads every class over the background (docs/demo.md gives the measurement)."""
    model, _ = load_classifier(checkpoint)
    ext = CamExtractor(model, scales=(1.0,), flip=True, n_layers=min(cam_layers, model.depth),
                       patch_refine=patch_refine, normalize=False)
    ds = build_dataset("synth", synth_root, "val", transform=cam_transform())
    ids = ds.ids
    for s in tqdm(range(0, len(ds), batch), desc=f"CAMs {out_dir.name}", unit="batch", dynamic_ncols=True):
        items = [ds[i] for i in range(s, min(s + batch, len(ds)))]
        x = torch.stack([it[0] for it in items])
        y = torch.stack([it[1] for it in items])
        cams = minmax_labelled(torch.relu(ext(x, y)), y)              # [B, C, H, W] in [0, 1]
        for (_, lab, iid), cam in zip(items, cams):
            cls = torch.nonzero(lab > 0).flatten()
            save_cam(out_dir / f"{iid}.npz", cls.numpy(), cam[cls].numpy())
    return ids


def write_reference_cams(synth_root: Path, cam_root: Path) -> None:
    """The trivial references as CAM files, scored by the same evaluation as the models' CAMs:
    ``all_background`` (no class map: every pixel background at every β ≥ 0) and ``uniform_cam``
    (each labelled class = 1 everywhere: every pixel the lowest labelled class at every β < 1)."""
    ds = build_dataset("synth", synth_root, "val")
    for i, rec in enumerate(ds.records):
        h, w = ds.mask(i).shape
        cls = np.asarray(rec.classes, dtype=np.int64)
        save_cam(cam_root / "all_background" / f"{rec.id}.npz", np.zeros(0, np.int64), np.zeros((0, h, w), np.float16))
        save_cam(cam_root / "uniform_cam" / f"{rec.id}.npz", cls, np.ones((cls.size, h, w), np.float16))


def evaluate_cams(pred_dir: Path, synth_root: Path, ids: list[str], class_names: list[str], betas: str) -> dict:
    """``doei eval``'s numbers for one CAM folder: best-β mIoU/FP/FN (percent), β, and the sweep."""
    counts = evaluate_dirs(pred_dir, synth_root / "SegmentationClass", ids, num_classes=len(class_names) + 1,
                           pred_type="cam", betas=parse_betas(betas), progress=True)
    rep = build_report(counts)
    return {"mIoU": rep["mIoU"], "FP": rep["FP"], "FN": rep["FN"], "beta": rep["beta"],
            "per_class_IoU": {(["background"] + list(class_names))[p["class"]]: p["IoU"] for p in rep["per_class"]},
            "sweep": rep["sweep"]}
