"""Two CAM or mask folders side by side (``doei compare A B``): the numbers behind the report.

Each folder holds ``<id>.npz`` CAMs (``doei.cam.io``) or ``<id>.png`` label maps (0 background, k + 1 class k,
255 ignore), e.g. ``doei cam --doei off`` vs ``--doei on``, two runs' pseudo masks or segmentations.

* With ground truth: each folder is scored as ``doei eval`` scores it (a CAM folder at its own best β of
  ``betas``), and :func:`compare_folders` returns both reports, the per-class IoU differences (B − A) and,
  per image, both mIoUs (over the classes present in the ground truth or either prediction).
* Without: the folders are compared with each other — per-class IoU of B against A, pixel agreement — and a
  CAM folder becomes a label map at ``beta``.

The images where the two differ most (the largest per-image mIoU gap with ground truth, else the largest
share of pixels labelled differently) make the gallery (:mod:`doei.eval.compare_report`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from doei.cam.seeds import seeds_from_cams
from doei.errors import DoeiError
from doei.eval.betas import DEFAULT_BETAS, parse_betas
from doei.eval.evaluate import evaluate_dirs
from doei.eval.reading import read_cams, read_label_png
from doei.eval.report import build_report

KINDS = {".npz": "cam", ".png": "png"}


def folder_kind(folder: Path, ids: Sequence[str]) -> str:
    """``cam`` or ``png``: what the folder holds for ``ids`` (one kind per folder)."""
    if not folder.is_dir():
        raise DoeiError(f"{folder}: folder not found")
    kinds = {KINDS[s] for s in KINDS if (folder / f"{ids[0]}{s}").is_file()} if ids else set()
    if len(kinds) != 1:
        raise DoeiError(f"{folder}: expected <id>.npz CAMs or <id>.png label maps (found neither or both for "
                        f"{ids[0] if ids else 'any id'})")
    return kinds.pop()


def common_ids(a: Path, b: Path, wanted: Sequence[str] | None = None) -> tuple[list[str], dict[str, int]]:
    """Ids with a file in both folders (within ``wanted`` when given), sorted; and how many were left out."""
    def stems(d: Path) -> set[str]:
        if not d.is_dir():
            raise DoeiError(f"{d}: folder not found")
        return {p.stem for p in d.iterdir() if p.suffix in KINDS and not p.name.startswith(".")}

    sa, sb = stems(a), stems(b)
    pool = set(wanted) if wanted is not None else sa | sb
    ids = sorted(pool & sa & sb)
    if not ids:
        raise DoeiError(f"{a} and {b}: no image id has a CAM (.npz) or mask (.png) in both folders"
                        + (" among the dataset's ids" if wanted is not None else ""))
    return ids, {"only_in_a": len((pool & sa) - sb), "only_in_b": len((pool & sb) - sa),
                 "in_neither": len(pool - sa - sb)}


def label_map(folder: Path, kind: str, image_id: str, beta: float | None, num_classes: int) -> np.ndarray:
    """uint8 [H, W] label map of one id: the PNG, or the CAM's seeds at ``beta``."""
    if kind == "png":
        return read_label_png(folder / f"{image_id}.png", num_classes, "label map").astype(np.uint8)
    classes, cams = read_cams(folder / f"{image_id}.npz", "cam", num_classes, False)
    return seeds_from_cams(cams.astype(np.float32), float(beta), classes)


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """mIoU (%) of one image over the classes present in ``gt`` or ``pred`` (255 in ``gt`` ignored)."""
    keep = gt != 255
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    inter = np.bincount(g[p == g], minlength=num_classes)
    union = np.bincount(p, minlength=num_classes) + np.bincount(g, minlength=num_classes) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean() * 100) if present.any() else 100.0


@dataclass
class Comparison:
    """Everything the report shows (see :func:`compare_folders`)."""

    names: list[str]                       # label names, background first
    ids: list[str]
    kinds: tuple[str, str]
    labels: tuple[str, str]
    betas: tuple[float | None, float | None]
    reports: tuple[dict, dict] | None      # doei eval reports (with ground truth)
    per_class: list[dict]                  # {class, name, a, b, diff} IoU %, sorted by |diff| (largest first)
    per_image: list[dict]                  # {id, a, b, diff} (mIoU % with GT, else disagreement %), largest first
    agreement: float | None = None         # % of pixels labelled the same (without ground truth)
    left_out: dict = field(default_factory=dict)


def compare_folders(a: str | Path, b: str | Path, names: Sequence[str], *, gt: str | Path | None = None,
                    ids: Sequence[str] | None = None, labels: tuple[str, str] = ("A", "B"),
                    betas: str = DEFAULT_BETAS, beta: float = 0.4, mean: str = "all", workers: int = 1,
                    progress: bool = False) -> Comparison:
    """Compare folders ``a`` and ``b`` (see the module docstring). ``names``: the label names, background
    first (C = len(names)); ``ids``: the dataset's ids (default: every id with a file in both folders);
    ``betas``: the sweep that picks each CAM folder's β with ground truth; ``beta``: the β without."""
    a, b = Path(a), Path(b)
    c = len(names)
    if c < 2:
        raise DoeiError(f"{c} class names: expected background + at least one class")
    ids_, left_out = common_ids(a, b, ids)
    kinds = (folder_kind(a, ids_), folder_kind(b, ids_))
    reports = None
    if gt is not None:
        gt = Path(gt)
        reps = []
        for folder, kind in ((a, kinds[0]), (b, kinds[1])):
            counts = evaluate_dirs(folder, gt, ids_, num_classes=c, pred_type=kind,
                                   betas=parse_betas(betas) if kind == "cam" else None, workers=workers,
                                   progress=progress)
            reps.append(build_report(counts, mean, list(names)))
        reports = (reps[0], reps[1])
        use = (reps[0]["beta"], reps[1]["beta"])
        per_class = [{"class": k, "name": names[k], "a": reps[0]["per_class"][k]["IoU"],
                      "b": reps[1]["per_class"][k]["IoU"]} for k in range(c)
                     if reps[0]["per_class"][k]["present"] or reps[1]["per_class"][k]["present"]]
    else:
        use = tuple(beta if k == "cam" else None for k in kinds)
        per_class = []
    per_image, inter, union, same, total = [], np.zeros(c, np.int64), np.zeros(c, np.int64), 0, 0
    for i in ids_:
        la = label_map(a, kinds[0], i, use[0], c)
        lb = label_map(b, kinds[1], i, use[1], c)
        if la.shape != lb.shape:
            raise DoeiError(f"{i}: {a} gives a {la.shape} map, {b} a {lb.shape} one")
        if gt is not None:
            g = read_label_png(Path(gt) / f"{i}.png", c)
            ma, mb = image_miou(la, g, c), image_miou(lb, g, c)
            per_image.append({"id": i, "a": ma, "b": mb, "diff": mb - ma})
        else:
            differ = float((la != lb).mean() * 100)
            per_image.append({"id": i, "a": None, "b": None, "diff": differ})
            fa, fb = la.reshape(-1).astype(np.int64), lb.reshape(-1).astype(np.int64)
            inter += np.bincount(fa[fa == fb], minlength=256)[:c]
            union += (np.bincount(fa, minlength=256) + np.bincount(fb, minlength=256))[:c]
            same += int((fa == fb).sum())
            total += fa.size
    agreement = None
    if gt is None:
        union = union - inter
        per_class = [{"class": k, "name": names[k], "a": None, "b": None,
                      "iou_ab": float(inter[k] / union[k] * 100)} for k in range(c) if union[k] > 0]
        agreement = same / max(1, total) * 100
    for r in per_class:
        r["diff"] = (r["b"] - r["a"]) if r.get("a") is not None else r["iou_ab"] - 100.0
    per_class.sort(key=lambda r: (-abs(r["diff"]), r["class"]))
    per_image.sort(key=lambda r: (-abs(r["diff"]), r["id"]))
    return Comparison(list(names), ids_, kinds, labels, use, reports, per_class, per_image, agreement, left_out)


__all__ = ["Comparison", "compare_folders", "common_ids", "folder_kind", "label_map", "image_miou"]
