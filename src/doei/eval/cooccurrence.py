"""Co-occurrence and under-activation, measured directly (the two failures DOEI claims to reduce).

Needs, besides predictions and ground truth, a *context map* per image (``<ctx_dir>/<id>.png``, label
PNG: 0 none, k + 1 = the pixel is declared context of foreground class k, e.g. the water band of boat;
the synthetic benchmark writes them, :mod:`doei.data.synth_context`). Per foreground class c, summed
over the whole set:

* ``leak`` = #(pred = c, on c's context, GT ≠ c) / #(pred = c): the share of c's predicted pixels that
  lie on its co-occurring context and off the object (context leak);
* ``context_hit`` = #(pred = c, on c's context, GT ≠ c) / #(c's context, GT ≠ c): how much of the context
  is activated as c;
* ``object_FN`` = #(GT = c, pred ≠ c) / #(GT = c): the share of the object left unactivated
  (under-activation; FN restricted to the object, not divided by the union as the FN of mIoU is);
* ``IoU`` of c (the same definition as :mod:`doei.eval.metrics`).

Class groups: the classes that have a declared context ("context") and the others ("rest"); a group
value is the mean over its classes of the per-class value (classes without a predicted pixel count
0 leak).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from doei.eval.reading import read_cams, read_label_png
from doei.eval.sweep import foreground_max

FIELDS = ("pred", "leak", "ctx", "gt", "miss", "tp")


def cooccurrence_counts(pred: np.ndarray, gt: np.ndarray, ctx: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """int64 [num_classes] counts of one image (index 0 = background, unused); pixels with GT 255 ignored.
    pred, gt, ctx int [H, W] (labels 0..num_classes-1; ctx 0 = none)."""
    valid = gt != 255
    p, g, c = pred[valid].astype(np.int64), gt[valid].astype(np.int64), ctx[valid].astype(np.int64)
    n = num_classes

    def bc(x):
        return np.bincount(x, minlength=n)[:n].astype(np.int64)

    off_obj_ctx = (c > 0) & (g != c)
    return {"pred": bc(p), "leak": bc(p[off_obj_ctx & (p == c)]), "ctx": bc(c[off_obj_ctx]), "gt": bc(g),
            "miss": bc(g[p != g]), "tp": bc(g[p == g])}


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def cooccurrence_report(counts: dict[str, np.ndarray], class_names: Sequence[str]) -> dict:
    """Percentages per foreground class and per group from summed counts (``class_names``: foreground,
    index k = label k + 1)."""
    pred, leak, ctx, gt, miss, tp = (counts[k].astype(np.float64) for k in FIELDS)
    iou = _div(tp, gt + pred - tp)
    per = {}
    for k, name in enumerate(class_names, start=1):
        has_ctx = bool(ctx[k] > 0)
        per[name] = {"IoU": 100 * float(np.nan_to_num(iou[k])), "object_FN": 100 * float(_div(miss, gt)[k]),
                     "leak": 100 * float(np.nan_to_num(_div(leak, pred)[k])) if has_ctx else None,
                     "context_hit": 100 * float(_div(leak, ctx)[k]) if has_ctx else None,
                     "has_context": has_ctx}

    def group(names: list[str]) -> dict:
        out = {"classes": names}
        for m in ("IoU", "object_FN", "leak", "context_hit"):
            vals = [per[n][m] for n in names if per[n][m] is not None and not np.isnan(per[n][m])]
            out[m] = float(np.mean(vals)) if vals else None
        return out

    ctx_names = [n for n in class_names if per[n]["has_context"]]
    rest = [n for n in class_names if not per[n]["has_context"]]
    return {"per_class": per, "groups": {"context": group(ctx_names), "rest": group(rest)}}


def evaluate_cooccurrence(cam_dir: Path, gt_dir: Path, ctx_dir: Path, ids: Sequence[str], beta: float | None,
                          class_names: Sequence[str], pred_type: str = "cam") -> dict:
    """The report of :func:`cooccurrence_report` for the CAM files ``cam_dir/<id>.npz`` thresholded at β
    exactly as ``doei eval`` does (``a where max > float32(β) else background``), or (``pred_type="png"``,
    β None) for label PNGs ``cam_dir/<id>.png``."""
    from doei.eval.reading import check_same_size

    n = len(class_names) + 1
    total = {k: np.zeros(n, dtype=np.int64) for k in FIELDS}
    for iid in ids:
        gt_path, ctx_path = Path(gt_dir) / f"{iid}.png", Path(ctx_dir) / f"{iid}.png"
        gt = read_label_png(gt_path, n)
        ctx = read_label_png(ctx_path, n, "context map")
        check_same_size(ctx.shape, gt.shape, ctx_path, gt_path)
        if pred_type == "png":
            pred = read_label_png(Path(cam_dir) / f"{iid}.png", n, "prediction")
        else:
            classes, cams = read_cams(Path(cam_dir) / f"{iid}.npz", "cam", n, False)
            m, a = foreground_max(classes, cams, n)
            pred = np.where(m > np.float32(beta), a, 0)
        check_same_size(pred.shape, gt.shape, Path(cam_dir) / iid, gt_path)
        for k, v in cooccurrence_counts(pred, gt, ctx, n).items():
            total[k] += v
    rep = cooccurrence_report(total, class_names)
    rep["beta"] = None if beta is None else float(beta)
    return rep


def format_cooccurrence(rep: dict) -> str:
    """A short text table: per class with a context region leak / ctx hit / object FN / IoU, then the groups."""
    lines = ["class          IoU   leak  ctx hit  object FN"]
    for name, r in rep["per_class"].items():
        if r["has_context"]:
            lines.append(f"{name:<12} {r['IoU']:5.1f}  {r['leak']:5.1f}  {r['context_hit']:7.1f}  {r['object_FN']:9.1f}")
    for g, r in rep["groups"].items():
        f = {k: ("   –" if r[k] is None else f"{r[k]:5.1f}") for k in ("IoU", "leak", "context_hit", "object_FN")}
        lines.append(f"[{g}] {f['IoU']:>10}  {f['leak']:>5}  {f['context_hit']:>7}  {f['object_FN']:>9}")
    return "\n".join(lines)
