"""The post-hoc "sharpened baseline" control (issue #24): the baseline's CAM files made to shrink like DOEI's,
without training, to ask whether DOEI's gain is more than the shrinkage any method would give.

Two forms, both on per-class min-max CAMs ``M_c`` in [0, 1], scored by the evaluation's own rule
(``argmax([β; M'])``):

* **power sweep**: ``M' = M^γ`` for every class. A power is a monotone map applied to every class alike, so
  at the *best* β it is the same as the β sweep on another grid (``M^γ > β ⟺ M > β^{1/γ}``, and the argmax
  over classes keeps its order): a best-β comparison between DOEI and the baseline already contains every
  global sharpening. It matters at a *fixed* β (e.g. the baseline's best), which is reported beside it.
* **area-matched**: a power ``γ_c`` per class, chosen so that the baseline predicts as many pixels of class c
  as full DOEI does at its best β (``M_c^{γ_c} > β ⟺ M_c > τ_c``: a per-class threshold). This is the
  shrinkage DOEI applies, class by class, with the baseline's own ranking of pixels: if it scores like DOEI,
  DOEI's gain is its shrinkage; if DOEI beats it, DOEI also re-ranks pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from doei.eval.metrics import mean_scores
from doei.eval.sweep import check_betas, foreground_max, sweep_counts

Item = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]   # classes, cams, gt, ctx (or None)


def load_items(cam_dir: Path, gt_dir: Path, ids: Sequence[str], num_classes: int,
               ctx_dir: Path | None = None) -> list[Item]:
    """``(classes, cams float32 [K, H, W], gt, ctx or None)`` per image, checked as ``doei eval`` checks."""
    from doei.eval.reading import check_same_size, read_cams, read_label_png

    items = []
    for iid in ids:
        gt_path = Path(gt_dir) / f"{iid}.png"
        gt = read_label_png(gt_path, num_classes)
        classes, cams = read_cams(Path(cam_dir) / f"{iid}.npz", "cam", num_classes, False)
        check_same_size(cams.shape[1:], gt.shape, Path(cam_dir) / iid, gt_path)
        ctx = None if ctx_dir is None else read_label_png(Path(ctx_dir) / f"{iid}.png", num_classes, "context map")
        items.append((classes, cams.astype(np.float32), gt, ctx))
    return items


def _powered(classes: np.ndarray, cams: np.ndarray, gammas: np.ndarray | float) -> np.ndarray:
    g = np.full(len(classes), float(gammas)) if np.isscalar(gammas) else np.asarray(gammas, dtype=np.float64)[classes]
    return np.power(np.clip(cams, 0.0, None), g.astype(np.float32).reshape(-1, 1, 1))


def sweep_items(items: Sequence[Item], gammas, betas: Sequence[float], num_classes: int) -> dict:
    """Counts (TP [B, C], P [B, C], T [C]) of ``M^γ`` (γ a number or per foreground class [C - 1]) over β."""
    b32 = check_betas(np.asarray(betas))
    tp = np.zeros((len(b32), num_classes), np.int64)
    p = np.zeros_like(tp)
    t = np.zeros(num_classes, np.int64)
    for classes, cams, gt, _ in items:
        m, a = foreground_max(classes, _powered(classes, cams, gammas), num_classes)
        dtp, dp, dt = sweep_counts(m, a, gt, b32, num_classes)
        tp += dtp
        p += dp
        t += dt
    return {"tp": tp, "p": p, "t": t, "betas": [float(b) for b in b32]}


def _scores(c: dict, j: int) -> dict:
    miou, fp, fn = mean_scores(c["tp"][j], c["p"][j], c["t"])
    return {"mIoU": float(miou[0]), "FP": float(fp[0]), "FN": float(fn[0]), "beta": c["betas"][j]}


def best(c: dict) -> dict:
    """mIoU/FP/FN (percent) at the best β of sweep counts (the first β on ties, as ``doei eval``)."""
    miou = mean_scores(c["tp"], c["p"], c["t"])[0]
    return _scores(c, int(np.argmax(miou)))


def power_sweep(items: Sequence[Item], powers: Sequence[float], betas: Sequence[float], fixed_beta: float,
                num_classes: int) -> list[dict]:
    """Per power γ: the scores at the best β of ``betas`` and at ``fixed_beta``."""
    if any(not np.isfinite(g) or g <= 0 for g in powers):
        raise ValueError(f"powers must be positive numbers, got {list(powers)}")
    out = []
    for g in powers:
        c = sweep_items(items, float(g), betas, num_classes)
        f = sweep_items(items, float(g), [fixed_beta], num_classes)
        out.append({"power": float(g), "best_beta": best(c), "fixed_beta": _scores(f, 0)})
    return out


def predicted_area(items: Sequence[Item], gammas, beta: float, num_classes: int) -> np.ndarray:
    """Predicted pixels per class (index 0 background) of ``M^γ`` at ``beta``, valid pixels only."""
    return sweep_items(items, gammas, [beta], num_classes)["p"][0]


def area_matched_gammas(items: Sequence[Item], target: np.ndarray, beta: float, num_classes: int,
                        rounds: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Per foreground class γ_c such that ``M_c^{γ_c}`` at ``beta`` predicts ``target[c + 1]`` pixels.

    Round 1 sets each class's threshold τ_c to the quantile of its pooled values that leaves the target count
    above it (γ_c = ln β / ln τ_c); later rounds rescale the quantile's count by target / achieved, which
    corrects for pixels lost to another class in the argmax. Returns ``(gammas [C - 1], achieved areas [C])``.
    A class with no target pixels gets a γ that removes it; one never predicted keeps γ = 1."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1) for a power to move a threshold, got {beta}")
    target = np.asarray(target, dtype=np.float64)
    nf = num_classes - 1
    pooled: list[list[np.ndarray]] = [[] for _ in range(nf)]
    for classes, cams, gt, _ in items:
        valid = gt != 255
        for c, m in zip(classes.tolist(), cams):
            pooled[c].append(m[valid])
    values = [np.sort(np.concatenate(v))[::-1] if v else np.zeros(0) for v in pooled]
    want = target[1:].copy()
    gammas = np.ones(nf)
    area = predicted_area(items, gammas, beta, num_classes)
    for _ in range(rounds):
        for c in range(nf):
            v = values[c]
            if v.size == 0:
                continue
            n = int(round(min(max(want[c], 0.0), v.size)))
            tau = 1.0 if n == 0 else float(v[n - 1]) - 1e-7       # n values strictly above tau
            tau = min(max(tau, 1e-6), 1.0 - 1e-6)
            gammas[c] = np.log(beta) / np.log(tau)
        area = predicted_area(items, gammas, beta, num_classes)
        got = area[1:].astype(np.float64)
        want = np.where((got > 0) & (target[1:] > 0), want * target[1:] / np.maximum(got, 1), want)
    return gammas, area


def score_items(items: Sequence[Item], gammas, beta: float, class_names: Sequence[str]) -> dict:
    """mIoU/FP/FN at ``beta`` of ``M^γ`` and, where the items carry context maps, the co-occurrence report
    (:mod:`doei.eval.cooccurrence`: leak, context hit, object FN per class and group)."""
    from doei.eval.cooccurrence import FIELDS, cooccurrence_counts, cooccurrence_report
    from doei.eval.sweep import labels_at

    n = len(class_names) + 1
    out = _scores(sweep_items(items, gammas, [beta], n), 0)
    if all(it[3] is not None for it in items):
        total = {k: np.zeros(n, dtype=np.int64) for k in FIELDS}
        for classes, cams, gt, ctx in items:
            m, a = foreground_max(classes, _powered(classes, cams, gammas), n)
            for k, v in cooccurrence_counts(labels_at(m, a, beta), gt, ctx, n).items():
                total[k] += v
        out["cooccurrence"] = cooccurrence_report(total, class_names)
    return out
