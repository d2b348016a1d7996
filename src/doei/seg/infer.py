"""Segmentation inference: multi-scale (+flip) DeepLab, DenseCRF in worker processes, PNGs + overlays.

:func:`infer_segmentation` writes into ``seg.infer.out_dir``: ``pred/<id>.png`` (argmax of the max-fused
softmax, no CRF), ``pred_crf/<id>.png`` (after DenseCRF, with ``crf``), ``overlay/<id>.png`` (image |
colour overlay of the final labels, with ``overlays``) and ``infer_seg_log.jsonl``. Score maps are never
written: each image's probabilities go to a CRF worker in memory as float16 and are dropped once its PNG
is written. Every file is atomic; an image whose outputs all exist is skipped. Under ``torchrun`` the
images are sharded over the ranks (byte-identical files; docs/distributed.md). ``doei infer-seg`` is
the command.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Callable

import numpy as np

from doei.cam.visualize import label_figure, save_label_png
from doei.data.build import dataset_from_config
from doei.engine.per_image import PerImageJob, first_n
from doei.engine.train_seg import build_seg_model
from doei.errors import DoeiError
from doei.models.weights import load_model_weights
from doei.seg.crf import CRFParams, crf_refine
from doei.seg.multiscale import multiscale_predict
from doei.utils.device import resolve_device
from doei.utils.io import atomic_save_png

LOG_FILE = "infer_seg_log.jsonl"


def overlay_panel(image: np.ndarray, label: np.ndarray, class_names=None, title: str = "",
                  what: str = "segmentation") -> np.ndarray:
    """uint8 figure: the image | the VOC colours of ``label`` over it, with a legend of the classes present
    (:func:`doei.cam.visualize.label_figure`)."""
    return label_figure(image, label, class_names, title=title, what=what)


def _outputs(out: Path, image_id: str, crf: bool, overlays: bool) -> list[Path]:
    paths = [out / "pred" / f"{image_id}.png"]
    if crf:
        paths.append(out / "pred_crf" / f"{image_id}.png")
    if overlays:
        paths.append(out / "overlay" / f"{image_id}.png")
    return paths


def _crf_job(job: tuple) -> tuple[str, float]:
    """Worker: DenseCRF of float16 probabilities → ``pred_crf`` PNG (+ overlay). Returns (id, seconds)."""
    image_id, image, probs16, params, out, overlays, names = job
    t = time.time()
    refined = crf_refine(image, probs16.astype(np.float32), CRFParams(**params))
    label = refined.argmax(axis=0).astype(np.uint8)
    if overlays:
        atomic_save_png(Path(out) / "overlay" / f"{image_id}.png",
                        overlay_panel(image, label, names, image_id, "segmentation (CRF)"))
    save_label_png(Path(out) / "pred_crf" / f"{image_id}.png", label)
    return image_id, time.time() - t


def load_seg_model(cfg, device: str):
    """The DeepLab net of ``seg.infer`` with its trained weights (ours or an official ``.pth``), in eval mode."""
    si, st = cfg.seg.infer, cfg.seg.train
    options = st.model_options if si.model == st.model else {}
    model = build_seg_model(si.model, cfg.data.num_classes + 1, options)
    if not Path(si.checkpoint).is_file():
        raise DoeiError(f"{si.checkpoint}: segmentation checkpoint not found (run doei train-seg first, "
                        "or set seg.infer.checkpoint)")
    load_model_weights(model, si.checkpoint, strict=True)
    return model.to(device).eval()


def infer_segmentation(cfg, limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Segment ``seg.infer.split``; see the module docstring. Returns a summary dict (counts, seconds,
    ``crf_seconds`` summed over ranks). The loop is :class:`doei.engine.per_image.PerImageJob`; under
    ``torchrun`` each rank segments its own ids with its own ``crf_workers`` pool."""
    return SegmentationJob(cfg, limit).run()


class SegmentationJob(PerImageJob):
    """Multi-scale segmentation (+ DenseCRF in a worker pool) as a :class:`~doei.engine.per_image.PerImageJob`."""

    desc = "doei infer-seg"
    log_name = LOG_FILE
    what = "segmentation folder"

    def __init__(self, cfg, limit: int | None = None) -> None:
        si = cfg.seg.infer
        self.cfg, self.si = cfg, si
        first_n([], limit)                                  # a bad --limit before the dataset is opened
        self.base = dataset_from_config(cfg.data, si.split)
        self.records = first_n(self.base.records, limit)
        self.params = {"gauss_sxy": si.crf_gauss_sxy, "gauss_compat": si.crf_gauss_compat, "bi_sxy": si.crf_bi_sxy,
                       "bi_srgb": si.crf_bi_srgb, "bi_compat": si.crf_bi_compat, "iterations": si.crf_iterations}
        self.pool = None
        self.pending: list = []
        self.crf_seconds = 0.0
        super().__init__(si.out_dir, len(self.records), resolve_device(si.device), si.progress, "seg.infer.out_dir")

    def outputs(self, i: int) -> list[Path]:
        return _outputs(self.out, self.records[i].id, self.si.crf, self.si.overlays)

    def start_fields(self, todo: list[int]) -> dict:
        si = self.si
        return {"checkpoint": str(si.checkpoint), "scales": list(si.scales), "flip": si.flip, "crf": si.crf,
                "crf_params": self.params}

    def prepare(self) -> None:
        self.model = load_seg_model(self.cfg, str(self.device))

    def iterate(self, mine: list[int]):
        si = self.si
        workers = min(si.crf_workers, len(mine)) if len(mine) > 1 else 0   # no idle processes (each imports torch)
        if si.crf and workers > 0:
            self.pool = mp.get_context("spawn").Pool(workers)
        for i in mine:
            t = time.time()
            rid = self.records[i].id
            image = np.ascontiguousarray(self.base.sample(i, with_mask=False).image)
            probs = multiscale_predict(self.model, image, si.scales, flip=si.flip)   # [C,H,W] float32 CPU
            save_label_png(self.out / "pred" / f"{rid}.png", probs.argmax(dim=0).numpy().astype(np.uint8))
            yield {"id": rid, "seconds": round(time.time() - t, 4)}
            if si.crf:
                job = (rid, image, probs.numpy().astype(np.float16), self.params, str(self.out), si.overlays,
                       list(self.base.class_names))
                del probs
                self.pending.append(_Done(_crf_job(job)) if self.pool is None else self.pool.apply_async(_crf_job, (job,)))
                self._drain(2 * max(1, workers))
            elif si.overlays:
                label = probs.argmax(dim=0).numpy().astype(np.uint8)
                atomic_save_png(self.out / "overlay" / f"{rid}.png",
                                overlay_panel(image, label, self.base.class_names, rid))

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            rid, secs = self.pending.pop(0).get()
            self.crf_seconds += secs
            self.log({"event": "crf", "id": rid, "seconds": round(secs, 4)})

    def finish(self) -> dict[str, float]:
        self._drain(0)
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        return {"crf_seconds": self.crf_seconds}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class _Done:
    """A finished result with the ``AsyncResult.get`` interface (CRF run inline, ``crf_workers = 0``)."""

    def __init__(self, value) -> None:
        self.value = value

    def get(self):
        return self.value
