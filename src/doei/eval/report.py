"""Turning summed counts into the metrics report (a JSON-ready dict) and a printed table."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from doei.eval.class_names import class_names
from doei.eval.evaluate import EvalCounts
from doei.eval.metrics import MEAN_CONVENTIONS, MeanConvention, mean_scores, per_class_scores, present_mask


def build_report(counts: EvalCounts, mean: MeanConvention = "all", names: Sequence[str] | None = None) -> dict:
    """The metrics dict. All scores are percent (float64); counts are ints. ``names``: one per class
    (background first); default :func:`doei.eval.class_names.class_names` (VOC/COCO names or numbers).

    Keys: ``mIoU``, ``FP``, ``FN`` (at the best β, ``mean`` convention), ``beta`` (best β, or None for
    label PNGs), ``best_beta_rule``, ``mean_convention`` (+ ``_text``), ``means`` (both conventions at
    the best β), ``per_class`` [{class, name, IoU, FP, FN, TP, P, T, present}], ``num_images``,
    ``num_classes``, ``pred_type``, and for CAMs ``sweep`` [{beta, mIoU, FP, FN}] (every β, in order).
    """
    nb, c = counts.tp.shape
    t2 = np.broadcast_to(counts.t, counts.tp.shape)
    miou, fp, fn = mean_scores(counts.tp, counts.p, t2, mean)
    best = int(np.argmax(miou))  # first (lowest beta) among equal maxima
    iou_k, fp_k, fn_k = per_class_scores(counts.tp[best], counts.p[best], counts.t)
    present = present_mask(counts.tp[best], counts.p[best], counts.t)
    if names is None:
        names = class_names(c)
    elif len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    per_class = [
        {
            "class": k,
            "name": names[k],
            "IoU": float(iou_k[k] * 100),
            "FP": float(fp_k[k] * 100),
            "FN": float(fn_k[k] * 100),
            "TP": int(counts.tp[best, k]),
            "P": int(counts.p[best, k]),
            "T": int(counts.t[k]),
            "present": bool(present[k]),
        }
        for k in range(c)
    ]
    means = {}
    for conv in MEAN_CONVENTIONS:
        mi, f1, f2 = mean_scores(counts.tp[best], counts.p[best], counts.t, conv)  # type: ignore[arg-type]
        means[conv] = {"mIoU": float(mi[0]), "FP": float(f1[0]), "FN": float(f2[0])}
    rep: dict = {
        "mIoU": float(miou[best]),
        "FP": float(fp[best]),
        "FN": float(fn[best]),
        "beta": None if counts.betas is None else float(counts.betas[best]),
        "mean_convention": mean,
        "mean_convention_text": MEAN_CONVENTIONS[mean],
        "means": means,
        "num_images": counts.num_images,
        "num_classes": c,
        "pred_type": counts.pred_type,
        "per_class": per_class,
    }
    if counts.betas is not None:
        rep["best_beta_rule"] = "argmax of mIoU over the full sweep (lowest beta on ties)"
        rep["sweep"] = [
            {"beta": float(counts.betas[j]), "mIoU": float(miou[j]), "FP": float(fp[j]), "FN": float(fn[j])}
            for j in range(nb)
        ]
    return rep


def format_report(rep: dict) -> str:
    """Human-readable table: per class at the best β, then the sweep (if any), then the summary line."""
    lines = []
    head = f"{'class':>4} {'name':<16} {'IoU%':>8} {'FP%':>8} {'FN%':>8} {'TP':>12} {'P':>12} {'T':>12}"
    lines.append(head)
    lines.append("-" * len(head))
    for r in rep["per_class"]:
        mark = "" if r["present"] else "  (absent)"
        lines.append(f"{r['class']:>4} {r['name'][:16]:<16} {r['IoU']:8.3f} {r['FP']:8.3f} {r['FN']:8.3f} "
                     f"{r['TP']:>12} {r['P']:>12} {r['T']:>12}{mark}")
    if "sweep" in rep and len(rep["sweep"]) > 1:
        lines.append("")
        lines.append(f"{'beta':>8} {'mIoU%':>8} {'FP%':>8} {'FN%':>8}")
        for s in rep["sweep"]:
            star = "  <- best" if s["beta"] == rep["beta"] else ""
            lines.append(f"{s['beta']:8.3f} {s['mIoU']:8.3f} {s['FP']:8.3f} {s['FN']:8.3f}{star}")
    lines.append("")
    beta = "n/a (label PNGs)" if rep["beta"] is None else f"{rep['beta']:g}"
    lines.append(f"best beta: {beta}  mIoU: {rep['mIoU']:.3f}%  FP: {rep['FP']:.3f}%  FN: {rep['FN']:.3f}%  "
                 f"[{rep['mean_convention']}: {rep['mean_convention_text']}; {rep['num_images']} images]")
    return "\n".join(lines)
