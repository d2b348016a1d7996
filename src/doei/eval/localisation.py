"""Threshold-free localisation: where a class's CAM mass sits, without choosing β (issue #24).

mIoU, FP, FN and the context leak of :mod:`doei.eval.cooccurrence` are read at a threshold β, so a method that
only *shrinks* activations moves them (fewer far-background pixels pass β, and the share on the adjacent context
rises mechanically). This measure reads the normalised CAM values themselves. Per foreground class c, over every
image whose CAM file has a map for c (the labelled classes), with ``M_c`` in [0, 1] (the per-class min-max CAM):

* ``object`` = mean of M_c on c's object (GT = c);
* ``context`` = mean of M_c on c's declared context (context map = c + 1) off the object: the co-occurring band
  (classes without a declared context: None);
* ``far`` = mean of M_c on far background: GT = background and not c's context;
* ``auc_context`` = P(M_c at a random object pixel > M_c at a random context pixel), ties counting 1/2 (the
  area under the ROC curve of "object vs context" over every threshold; 0.5 = no separation, 1 = every object
  pixel above every context pixel); ``auc_far`` likewise against far background.

Pairs are taken over the whole set (all pixels of all images pooled per class), from histograms of M_c with
:data:`BINS` equal bins on [0, 1] (values in one bin count as ties: the AUC is exact to the bin width). A
method that shrinks every activation by the same monotone map leaves both AUCs unchanged and lowers ``far`` and
``context`` alike; one that decouples context from the object raises ``auc_context``. Class groups as in
:mod:`doei.eval.cooccurrence`: "context" (classes with a declared context) and "rest"; a group value is the mean
over its classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

BINS = 1000
REGIONS = ("object", "context", "far")
METRICS = ("object", "context", "far", "auc_context", "auc_far")


def _hist(values: np.ndarray) -> np.ndarray:
    idx = np.clip(np.floor(values.astype(np.float64) * BINS), 0, BINS - 1).astype(np.int64)
    return np.bincount(idx, minlength=BINS).astype(np.int64)


def localisation_counts(classes: np.ndarray, cams: np.ndarray, gt: np.ndarray, ctx: np.ndarray) -> dict[int, dict]:
    """Per 0-based foreground class of one image: ``{c: {region: (sum of M_c, pixel count, histogram [BINS])}}``.
    classes int [K], cams float [K, H, W] in [0, 1], gt / ctx int [H, W] (GT 255 ignored; ctx 0 none, k + 1 =
    context of class k)."""
    if cams.ndim != 3 or cams.shape[0] != len(classes) or cams.shape[1:] != gt.shape or gt.shape != ctx.shape:
        raise ValueError(f"expected cams [K, H, W] for K = {len(classes)} classes and gt, ctx [H, W] of that size; "
                         f"got cams {cams.shape}, gt {gt.shape}, ctx {ctx.shape}")
    valid = gt != 255
    out = {}
    for c, m in zip(np.asarray(classes, dtype=np.int64).tolist(), cams):
        label = c + 1
        masks = {"object": valid & (gt == label), "context": valid & (ctx == label) & (gt != label),
                 "far": valid & (gt == 0) & (ctx != label)}
        out[c] = {r: (float(m[k].astype(np.float64).sum()), int(k.sum()), _hist(m[k])) for r, k in masks.items()}
    return out


def auc_from_hist(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(pos > neg) + P(pos = neg) / 2 from two histograms over the same bins (None if either is empty)."""
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.concatenate([[0], np.cumsum(neg)[:-1]]).astype(np.float64)   # neg values in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


class LocalisationTotals:
    """Running sums over a set of images (:meth:`add` one image, :meth:`report` at the end)."""

    def __init__(self, num_foreground: int) -> None:
        self.n = num_foreground
        self.sums = {r: np.zeros(num_foreground) for r in REGIONS}
        self.counts = {r: np.zeros(num_foreground, dtype=np.int64) for r in REGIONS}
        self.hists = {r: np.zeros((num_foreground, BINS), dtype=np.int64) for r in REGIONS}

    def add(self, classes: np.ndarray, cams: np.ndarray, gt: np.ndarray, ctx: np.ndarray) -> None:
        for c, regions in localisation_counts(classes, cams, gt, ctx).items():
            for r, (s, n, h) in regions.items():
                self.sums[r][c] += s
                self.counts[r][c] += n
                self.hists[r][c] += h

    def report(self, class_names: Sequence[str], has_context: Sequence[bool]) -> dict:
        """Per class (in percent of the CAM's range for the means, percent for the AUCs) and per group."""
        if len(class_names) != self.n or len(has_context) != self.n:
            raise ValueError(f"class_names and has_context must have {self.n} entries")
        per = {}
        for c, name in enumerate(class_names):
            mean = {r: (100 * self.sums[r][c] / self.counts[r][c] if self.counts[r][c] else None) for r in REGIONS}
            if not has_context[c]:
                mean["context"] = None
            auc_c = auc_from_hist(self.hists["object"][c], self.hists["context"][c]) if has_context[c] else None
            auc_f = auc_from_hist(self.hists["object"][c], self.hists["far"][c])
            per[name] = {**mean, "auc_context": None if auc_c is None else 100 * auc_c,
                         "auc_far": None if auc_f is None else 100 * auc_f, "has_context": bool(has_context[c])}

        def group(names: list[str]) -> dict:
            g: dict = {"classes": names}
            for m in METRICS:
                vals = [per[n][m] for n in names if per[n][m] is not None]
                g[m] = float(np.mean(vals)) if vals else None
            return g

        names = list(class_names)
        return {"per_class": per, "groups": {"context": group([n for n in names if per[n]["has_context"]]),
                                             "rest": group([n for n in names if not per[n]["has_context"]])},
                "bins": BINS}


def evaluate_localisation(cam_dir: Path, gt_dir: Path, ctx_dir: Path, ids: Sequence[str],
                          class_names: Sequence[str], context_classes: Sequence[str] | None = None) -> dict:
    """The threshold-free report for the CAM files ``cam_dir/<id>.npz`` (per-class maps in [0, 1]) against
    ``gt_dir/<id>.png`` and the context maps ``ctx_dir/<id>.png``. ``context_classes``: the classes with a
    declared context (default: those with a context pixel anywhere in the set)."""
    from doei.eval.reading import check_same_size, read_cams, read_label_png

    n = len(class_names) + 1
    tot = LocalisationTotals(n - 1)
    seen_ctx = np.zeros(n - 1, dtype=bool)
    for iid in ids:
        gt_path, ctx_path, cam_path = Path(gt_dir) / f"{iid}.png", Path(ctx_dir) / f"{iid}.png", Path(cam_dir) / f"{iid}.npz"
        gt = read_label_png(gt_path, n)
        ctx = read_label_png(ctx_path, n, "context map")
        check_same_size(ctx.shape, gt.shape, ctx_path, gt_path)
        classes, cams = read_cams(cam_path, "cam", n, False)
        check_same_size(cams.shape[1:], gt.shape, cam_path, gt_path)
        tot.add(classes, cams, gt, ctx)
        present = np.unique(ctx[(ctx > 0) & (ctx < n)]) - 1
        seen_ctx[present] = True
    has = seen_ctx if context_classes is None else np.array([c in set(context_classes) for c in class_names])
    return tot.report(class_names, has.tolist())


def format_localisation(rep: dict) -> str:
    """A short text table: per group the mean CAM on object / context / far background and the two AUCs."""
    lines = ["group      object  context     far  AUC obj-ctx  AUC obj-far"]
    for g, r in rep["groups"].items():
        f = {k: ("    –" if r[k] is None else f"{r[k]:5.1f}") for k in METRICS}
        lines.append(f"{g:<9} {f['object']:>7}  {f['context']:>7}  {f['far']:>6}  {f['auc_context']:>11}  "
                     f"{f['auc_far']:>11}")
    return "\n".join(lines)
