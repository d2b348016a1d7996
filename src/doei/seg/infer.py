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
import torch
from tqdm import tqdm

from doei.cam.visualize import save_label_png, voc_palette
from doei.data.build import build_dataset
from doei.engine import distributed as dist_util
from doei.engine.train_aff import _data_kwargs
from doei.engine.train_seg import build_seg_model
from doei.errors import DoeiError
from doei.models.checkpoint import load_model_weights
from doei.pipeline_config import resolve_device
from doei.seg.crf import CRFParams, crf_refine
from doei.seg.inference import multiscale_predict
from doei.utils.io import append_jsonl, atomic_save_png

LOG_FILE = "infer_seg_log.jsonl"


def overlay_panel(image: np.ndarray, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``[H, 2W, 3]`` uint8: the image, then the image blended with the VOC colours of ``label`` (ignore = none)."""
    colours = voc_palette(256)[label].astype(np.float32)
    a = np.where(label[..., None] == 255, 0.0, alpha).astype(np.float32)
    blend = image.astype(np.float32) * (1 - a) + colours * a
    return np.concatenate([image, np.clip(np.rint(blend), 0, 255).astype(np.uint8)], axis=1)


def _outputs(out: Path, image_id: str, crf: bool, overlays: bool) -> list[Path]:
    paths = [out / "pred" / f"{image_id}.png"]
    if crf:
        paths.append(out / "pred_crf" / f"{image_id}.png")
    if overlays:
        paths.append(out / "overlay" / f"{image_id}.png")
    return paths


def _crf_job(job: tuple) -> tuple[str, float]:
    """Worker: DenseCRF of float16 probabilities → ``pred_crf`` PNG (+ overlay). Returns (id, seconds)."""
    image_id, image, probs16, params, out, overlays = job
    t = time.time()
    refined = crf_refine(image, probs16.astype(np.float32), CRFParams(**params))
    label = refined.argmax(axis=0).astype(np.uint8)
    if overlays:
        atomic_save_png(Path(out) / "overlay" / f"{image_id}.png", overlay_panel(image, label))
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
    """Segment ``seg.infer.split``; see the module docstring. Returns a summary dict (counts, seconds).

    Under ``torchrun`` the ids left to do are split ``todo[rank::world]`` (after a barrier, so all
    ranks list the same ones); each rank segments its own ids with its own ``crf_workers`` pool and
    writes their PNGs; rank 0 writes the start/end log records, the end record after an all-reduce
    of the counts (the summary's counts and ``crf_seconds`` are sums over ranks, on every rank).
    """
    if limit is not None and limit < 0:
        raise DoeiError(f"--limit {limit}: expected a number of images >= 0")
    si, d = cfg.seg.infer, cfg.data
    out = Path(si.out_dir)
    base = build_dataset(d.kind, d.root, si.split, **_data_kwargs(cfg))
    records = base.records[:limit] if limit is not None else base.records
    device = resolve_device(si.device)
    rank, world = dist_util.init_from_env(device.split(":")[0])
    device = str(dist_util.device_for(torch.device(device)))
    todo = [i for i, r in enumerate(records)
            if not all(p.is_file() for p in _outputs(out, r.id, si.crf, si.overlays))]
    dist_util.barrier()  # every rank has the same todo list before anything is written
    mine = dist_util.shard(todo, rank, world)
    tag = {"rank": rank} if world > 1 else {}
    params = {"gauss_sxy": si.crf_gauss_sxy, "gauss_compat": si.crf_gauss_compat, "bi_sxy": si.crf_bi_sxy,
              "bi_srgb": si.crf_bi_srgb, "bi_compat": si.crf_bi_compat, "iterations": si.crf_iterations}
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        append_jsonl(out / LOG_FILE, {"event": "start", "time": t0, "images": len(records), "todo": len(todo),
                                      "checkpoint": str(si.checkpoint), "scales": list(si.scales), "flip": si.flip,
                                      "crf": si.crf, "crf_params": params,
                                      **({"processes": world} if world > 1 else {})})
    pool = None
    pending: list = []
    crf_seconds = 0.0

    def _drain(keep: int) -> None:
        nonlocal crf_seconds
        while len(pending) > keep:
            rid, secs = pending.pop(0).get()
            crf_seconds += secs
            append_jsonl(out / LOG_FILE, {"event": "crf", "id": rid, "seconds": round(secs, 4), **tag})

    try:
        if todo:
            model = load_seg_model(cfg, device)      # on every rank: a bad checkpoint fails all ranks alike
            if mine and si.crf and si.crf_workers > 0:
                pool = mp.get_context("spawn").Pool(si.crf_workers)
            for i in tqdm(mine, desc="doei infer-seg", unit="img", disable=not si.progress or rank != 0,
                          dynamic_ncols=True):
                t = time.time()
                rid = records[i].id
                image = np.ascontiguousarray(base.sample(i, with_mask=False).image)
                probs = multiscale_predict(model, image, si.scales, flip=si.flip)   # [C,H,W] float32 CPU
                save_label_png(out / "pred" / f"{rid}.png", probs.argmax(dim=0).numpy().astype(np.uint8))
                append_jsonl(out / LOG_FILE, {"event": "image", "id": rid, "seconds": round(time.time() - t, 4),
                                              **tag})
                if si.crf:
                    job = (rid, image, probs.numpy().astype(np.float16), params, str(out), si.overlays)
                    del probs
                    if pool is None:
                        pending.append(_Done(_crf_job(job)))
                    else:
                        pending.append(pool.apply_async(_crf_job, (job,)))
                    _drain(2 * max(1, si.crf_workers))
                elif si.overlays:
                    label = probs.argmax(dim=0).numpy().astype(np.uint8)
                    atomic_save_png(out / "overlay" / f"{rid}.png", overlay_panel(image, label))
            _drain(0)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    computed, crf_seconds = (float(v) for v in dist_util.all_reduce_sum([len(mine), crf_seconds]))  # waits for all
    secs = time.time() - t0
    if rank == 0:
        append_jsonl(out / LOG_FILE, {"event": "end", "time": time.time(), "computed": int(computed),
                                      "skipped": len(records) - len(todo), "seconds": round(secs, 3),
                                      "crf_seconds": round(crf_seconds, 3)})
    return {"computed": int(computed), "skipped": len(records) - len(todo), "seconds": secs, "out_dir": str(out),
            "crf_seconds": crf_seconds}


class _Done:
    """A finished result with the ``AsyncResult.get`` interface (CRF run inline, ``crf_workers = 0``)."""

    def __init__(self, value) -> None:
        self.value = value

    def get(self):
        return self.value
