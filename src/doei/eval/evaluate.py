"""Streaming evaluation of a directory of predictions against a directory of ground truth.

Each image contributes int64 counts (``TP``/``P`` [B, C] for B thresholds, ``T`` [C]) that are
summed as files are read, so memory is one image plus the counts, whatever the number of images.
CAM predictions are reduced once per image (:func:`doei.eval.sweep.foreground_max`) and scored
for every β in the same pass (:func:`doei.eval.sweep.sweep_counts`).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from doei.errors import DoeiError
from doei.eval.metrics import label_counts
from doei.eval.reading import (
    PRED_EXT,
    check_files_exist,
    check_same_size,
    detect_pred_type,
    read_cams,
    read_label_png,
)
from doei.eval.sweep import check_betas, foreground_max, sweep_counts


@dataclass
class EvalCounts:
    """Summed counts of a data set. ``betas`` float64 [B] (CAMs) or None (label PNGs, B = 1)."""

    betas: np.ndarray | None
    tp: np.ndarray  # int64 [B, C]
    p: np.ndarray  # int64 [B, C]
    t: np.ndarray  # int64 [C]
    num_images: int
    pred_type: str


@dataclass(frozen=True)
class _Job:
    pred_dir: Path
    gt_dir: Path
    pred_type: str
    num_classes: int
    betas32: np.ndarray | None
    trust_pickle: bool


def image_counts(job: _Job, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of one image: ``TP``, ``P`` int64 [B, C] and ``T`` int64 [C] (B = 1 for label PNGs)."""
    gt_path = job.gt_dir / f"{image_id}.png"
    pred_path = job.pred_dir / f"{image_id}{PRED_EXT[job.pred_type]}"
    gt = read_label_png(gt_path, job.num_classes, "ground truth")
    if job.pred_type == "png":
        pred = read_label_png(pred_path, job.num_classes, "prediction")
        check_same_size(pred.shape, gt.shape, pred_path, gt_path)
        tp, p, t = label_counts(pred, gt, job.num_classes)
        return tp[None], p[None], t
    classes, cams = read_cams(pred_path, job.pred_type, job.num_classes, job.trust_pickle)
    check_same_size(cams.shape[1:], gt.shape, pred_path, gt_path)
    m, a = foreground_max(classes, cams, job.num_classes)
    return sweep_counts(m, a, gt, job.betas32, job.num_classes)


def _chunk_counts(job: _Job, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    tp = p = t = None
    for image_id in ids:
        a, b, c = image_counts(job, image_id)
        tp, p, t = (a, b, c) if tp is None else (tp + a, p + b, t + c)
    return tp, p, t, len(ids)


def _chunks(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for s in range(0, len(ids), size):
        yield ids[s:s + size]


def evaluate_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    ids: Sequence[str],
    num_classes: int = 21,
    pred_type: str = "auto",
    betas: Iterable[float] | None = None,
    trust_pickle: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> EvalCounts:
    """Sum the counts of every id. ``betas`` (strictly increasing) are required for CAM predictions
    and must be None for label PNGs. All files are checked to exist before any is read.

    ``workers > 1`` splits the ids into chunks scored in worker processes; counts are integers,
    so the result is identical to ``workers = 1``.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not 2 <= num_classes <= 255:
        raise DoeiError(f"num_classes {num_classes}: expected 2..255 (255 is the ignore label)")
    if not ids:
        raise DoeiError("the id list is empty")
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise DoeiError(f"{d}: {what} directory not found")
    if pred_type == "auto":
        pred_type = detect_pred_type(pred_dir, ids[0])
    if pred_type not in PRED_EXT:
        raise DoeiError(f"pred type {pred_type!r}: expected auto, {', '.join(PRED_EXT)}")
    if pred_type == "png":
        if betas is not None:
            raise DoeiError("--betas applies to CAM predictions only; label PNGs are already thresholded")
        betas64, betas32 = None, None
    else:
        if betas is None:
            raise DoeiError("CAM predictions need at least one background threshold beta")
        betas64 = np.asarray(list(betas), dtype=np.float64)
        betas32 = check_betas(betas64)
    check_files_exist([gt_dir / f"{i}.png" for i in ids], "ground truth")
    check_files_exist([pred_dir / f"{i}{PRED_EXT[pred_type]}" for i in ids], "prediction")

    job = _Job(pred_dir, gt_dir, pred_type, num_classes, betas32, trust_pickle)
    nb = 1 if betas32 is None else betas32.size
    tp = np.zeros((nb, num_classes), dtype=np.int64)
    p = np.zeros((nb, num_classes), dtype=np.int64)
    t = np.zeros(num_classes, dtype=np.int64)
    bar = _progress(len(ids), progress)
    try:
        if workers <= 1:
            for image_id in ids:
                a, b, c = image_counts(job, image_id)
                tp += a
                p += b
                t += c
                bar.update(1)
        else:
            size = max(1, min(64, len(ids) // (4 * workers) or 1))
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for a, b, c, n in ex.map(_chunk_counts, [job] * -(-len(ids) // size), _chunks(ids, size)):
                    tp += a
                    p += b
                    t += c
                    bar.update(n)
    finally:
        bar.close()
    return EvalCounts(betas64, tp, p, t, len(ids), pred_type)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="img", dynamic_ncols=True)


__all__ = ["EvalCounts", "evaluate_dirs", "image_counts"]
