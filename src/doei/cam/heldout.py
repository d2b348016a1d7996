"""CAMs of a synthetic benchmark's held-out split and their β-sweep score: what the demo and the studies
compare between classifiers (scale 1 + flip, ReLU then per-class min-max), written by ``doei cam``'s own
writer (:func:`doei.cam.generate.generate_cams`) with that read-out."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from doei.cam.config import CamConfig
from doei.cam.generate import generate_cams, load_cam_model, open_dataset
from doei.cam.io import save_cam
from doei.data.build import build_dataset
from doei.eval.betas import parse_betas
from doei.eval.evaluate import evaluate_dirs
from doei.eval.report import build_report


def write_cams(checkpoint: Path, synth_root: Path, out_dir: Path, cam_layers: int, batch: int,
               patch_refine: bool = False, progress: bool = True, overwrite: bool = False) -> list[str]:
    """CAMs of the val split (scale 1 + flip, GT image labels) → ``out_dir/<id>.npz``; returns the ids.

    ``doei cam``'s writer (:func:`doei.cam.generate.generate_cams`, resumable, with ``cam_settings.json``)
    with the read-out ``normalize="relu_minmax"``: the model's own CAM source, the views' maps summed, then
    ``relu`` and per-class min-max — TransCAM's "minmax" normalisation (:mod:`doei.cam.transcam`; the
    official one leaves hugely negative values). For MCTformer and TS-CAM the maps are already ≥ 0, so the
    ReLU changes nothing there. At most the model's depth in blocks (``cam_layers``), ``batch`` images
    per forward pass. The folder resumes like ``doei cam``'s (CAMs of the same checkpoint file are kept);
    ``overwrite`` empties it first (the demo's ``--fresh``: the classifier was retrained).

    ``patch_refine`` is off by default: in the small from-scratch model the patch→patch attention summed
    over all blocks is dominated by a few background "sink" patches, and the official refinement then
    spreads every class over the background (docs/demo.md gives the measurement)."""
    cfg = CamConfig(dataset="synth", data_root=str(synth_root), split="val", scales=[1.0], flip=True,
                    normalize="relu_minmax", batch_size=batch, device="cpu").validate()
    ds = open_dataset(cfg)
    model, spec, cfg = load_cam_model(cfg, checkpoint, ds)
    if overwrite and Path(out_dir).is_dir():
        shutil.rmtree(out_dir)
    # the options the family's CAMs read (model.cam_options): TS-CAM reads neither
    wanted = {"n_layers": min(cam_layers, model.depth), "patch_refine": patch_refine}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in wanted.items() if k in model.cam_options})
    generate_cams(model, cfg, out_dir, checkpoint, ds=ds, spec=spec, progress=progress, desc=f"CAMs {Path(out_dir).name}")
    return ds.ids


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


def evaluate_cams(pred_dir: Path, synth_root: Path, ids: list[str], class_names: list[str], betas: str,
                  context: bool = True) -> dict:
    """``doei eval``'s numbers for one CAM folder: best-β mIoU/FP/FN (percent), β, and the sweep; with
    ``context``, also ``cooccurrence`` (:mod:`doei.eval.cooccurrence`: context leak, object FN per class
    and class group at the best β) and ``localisation`` (:mod:`doei.eval.localisation`: the threshold-free
    mean CAM on object / context / far background and the object-vs-context AUC, per class and group)."""
    counts = evaluate_dirs(pred_dir, synth_root / "SegmentationClass", ids, num_classes=len(class_names) + 1,
                           pred_type="cam", betas=parse_betas(betas), progress=True)
    rep = build_report(counts)
    out = {"mIoU": rep["mIoU"], "FP": rep["FP"], "FN": rep["FN"], "beta": rep["beta"],
           "per_class_IoU": {(["background"] + list(class_names))[p["class"]]: p["IoU"] for p in rep["per_class"]},
           "sweep": rep["sweep"]}
    if context:
        # context leak / object FN at the best β from the benchmark's context maps (written once, val split)
        from doei.data.synth_context import CONTEXT_DIR, write_context_maps
        from doei.eval.cooccurrence import evaluate_cooccurrence

        write_context_maps(synth_root, ("val",))
        out["cooccurrence"] = evaluate_cooccurrence(pred_dir, synth_root / "SegmentationClass", synth_root / CONTEXT_DIR,
                                                    ids, rep["beta"], class_names)
        from doei.eval.localisation import evaluate_localisation

        ctx_names = [n for n, r in out["cooccurrence"]["per_class"].items() if r["has_context"]]
        out["localisation"] = evaluate_localisation(pred_dir, synth_root / "SegmentationClass", synth_root / CONTEXT_DIR,
                                                    ids, class_names, context_classes=ctx_names)
    return out
