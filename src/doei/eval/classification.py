"""Image-level classification metrics of a multi-label classifier: average precision and F1."""
from __future__ import annotations

import torch
from torch import Tensor


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP per column: scores, targets [N, K] → [K] (NaN for a column without positives).

    Non-interpolated AP = mean over positives of the precision at their rank (ranks by descending
    score, ties in index order; scikit-learn groups tied scores instead, which differs only on ties).
    """
    n = scores.shape[0]
    order = scores.argsort(dim=0, descending=True, stable=True)
    t = targets.gather(0, order).double()
    hits = t.cumsum(0)
    precision = hits / torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    pos = t.sum(0)
    return torch.where(pos > 0, (precision * t).sum(0) / pos.clamp_min(1), torch.full_like(pos, float("nan")))


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """``mAP`` (per-class AP averaged over classes with a positive), ``mAP_img`` (per-image AP averaged
    over images with a label: the number MCTformer's evaluate() prints), micro ``F1`` / ``precision`` /
    ``recall`` at sigmoid ≥ 0.5. logits, targets [N, C]; percent."""
    probs = logits.float().sigmoid()
    ap_c = average_precision(probs, targets)
    ap_i = average_precision(probs.T, targets.T)
    pred = probs >= 0.5
    tp = (pred & (targets > 0)).sum().item()
    p, t = pred.sum().item(), (targets > 0).sum().item()
    prec = tp / p if p else 0.0
    rec = tp / t if t else 0.0
    f1 = 2 * tp / (p + t) if p + t else 0.0
    nanmean = lambda v: float(v[~v.isnan()].mean()) if (~v.isnan()).any() else float("nan")  # noqa: E731
    return {"mAP": 100 * nanmean(ap_c), "mAP_img": 100 * nanmean(ap_i), "F1": 100 * f1,
            "precision": 100 * prec, "recall": 100 * rec}
