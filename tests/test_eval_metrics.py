"""Metrics and the one-pass β sweep: exact equality with the per-β reference and with the official
``evaluation.py`` numbers stored in ../shared/reference/mctformer_evaluation.npz (float64, exact)."""
from __future__ import annotations

import numpy as np
import pytest

from doei.errors import DoeiError
from doei.eval.metrics import label_counts, mean_scores, per_class_scores
from doei.eval.sweep import check_betas, foreground_max, labels_at, predict_labels, sweep_counts


def _fixture_counts(z, betas):
    """Sum one-pass counts of the fixture's 6 images for ``betas``; also check labels per beta."""
    b32 = check_betas(betas)
    tp = p = t = 0
    for n in range(len(z["names"])):
        m, a = foreground_max(z[f"cam{n}_keys"], z[f"cam{n}"], 21)
        x, y, w = sweep_counts(m, a, z["gt"][n], b32, 21)
        tp, p, t = tp + x, p + y, t + w
    return tp, p, t


def test_sweep_equals_per_beta_reference_random():
    """Random small cases with quantised values (many exact ties), negative CAMs, negative betas,
    K = 0 and ignore pixels: one-pass counts == counts of the official argmax at every beta."""
    rng = np.random.default_rng(0)
    c = 6
    for _ in range(400):
        h, w = rng.integers(1, 9, 2)
        k = int(rng.integers(0, c))
        classes = rng.permutation(c - 1)[:k]
        cams = (rng.integers(-2, 6, (k, h, w)) / 4).astype(np.float32)
        gt = rng.integers(0, c, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.2] = 255
        betas = np.unique(rng.integers(-3, 6, 5) / 4)
        m, a = foreground_max(classes, cams, c)
        tp, p, t = sweep_counts(m, a, gt, check_betas(betas), c)
        for j, b in enumerate(betas):
            ref = predict_labels(classes, cams, b, c)
            np.testing.assert_array_equal(labels_at(m, a, b), ref)
            rtp, rp, rt = label_counts(ref, gt, c)
            np.testing.assert_array_equal(tp[j], rtp)
            np.testing.assert_array_equal(p[j], rp)
            np.testing.assert_array_equal(t, rt)


def test_ties_background_wins_and_lower_class_wins():
    cams = np.array([[[0.7, 0.3]], [[0.7, 0.2]]], dtype=np.float32)  # classes 5 and 2 tie at 0.7
    classes = np.array([5, 2])  # descending order, like the fixture's image 0
    m, a = foreground_max(classes, cams, 21)
    assert a[0, 0] == 3  # class 2 -> label 3 (lower label wins the tie)
    assert labels_at(m, a, 0.3)[0, 1] == 0  # cam == float32(0.3): background wins the tie
    assert labels_at(m, a, 0.29)[0, 1] == 6
    assert predict_labels(classes, cams, 0.3, 21).tolist() == [[3, 0]]


def test_beta_compared_in_float32():
    # float32(0.3) > 0.3 in float64; a float64 comparison would call this pixel foreground
    cams = np.full((1, 1, 1), np.float32(0.3))
    m, a = foreground_max(np.array([0]), cams, 21)
    assert float(np.float32(0.3)) > 0.3
    assert labels_at(m, a, 0.3)[0, 0] == 0
    tp, p, t = sweep_counts(m, a, np.zeros((1, 1), np.uint8), check_betas([0.3]), 21)
    assert tp[0, 0] == 1 and p[0, 0] == 1


def test_check_betas_rejects_bad():
    for bad in ([], [0.2, 0.1], [0.1, float("nan")], [0.3, 0.3 + 1e-12]):
        with pytest.raises(DoeiError):
            check_betas(bad)


def test_npy_parity_every_threshold(reference):
    z = reference("mctformer_evaluation.npz")
    th = z["thresholds"]
    for n in range(len(z["names"])):
        m, a = foreground_max(z[f"cam{n}_keys"], z[f"cam{n}"], 21)
        for j, b in enumerate(th):
            np.testing.assert_array_equal(labels_at(m, a, b), z["npy_pred"][j, n])
            np.testing.assert_array_equal(predict_labels(z[f"cam{n}_keys"], z[f"cam{n}"], b, 21), z["npy_pred"][j, n])
    tp, p, t = _fixture_counts(z, th)
    np.testing.assert_array_equal(tp, z["npy_TP"])
    np.testing.assert_array_equal(p, z["npy_P"])
    np.testing.assert_array_equal(np.broadcast_to(t, tp.shape), z["npy_T"])
    iou, _, _ = per_class_scores(tp, p, np.broadcast_to(t, tp.shape))
    np.testing.assert_array_equal(iou * 100, z["npy_IoU_pct"])  # exact float64
    miou, fp, fn = mean_scores(tp, p, np.broadcast_to(t, tp.shape), "all")
    np.testing.assert_array_equal(miou, z["npy_mIoU_pct"])
    np.testing.assert_array_equal(fp, z["npy_FP_pct"])
    np.testing.assert_array_equal(fn, z["npy_FN_pct"])


def test_png_parity(reference):
    z = reference("mctformer_evaluation.npz")
    tp = p = t = 0
    for n in range(len(z["names"])):
        x, y, w = label_counts(z["png_pred"][n], z["gt"][n], 21)
        tp, p, t = tp + x, p + y, t + w
    iou, _, _ = per_class_scores(tp, p, t)
    np.testing.assert_array_equal(iou * 100, z["png_IoU_pct"])
    miou, fp, fn = mean_scores(tp, p, t, "all")
    assert miou[0] == z["png_mIoU_pct"] and fp[0] == z["png_FP_pct"] and fn[0] == z["png_FN_pct"]


def test_curve_printed_values_and_official_early_stop(reference):
    """Our full sweep at t = i/100 rounds to the official curve's printed mIoU; the official curve
    would stop at the first non-improvement (0.51), which our sweep reports but does not stop at."""
    z = reference("mctformer_evaluation.npz")
    printed = z["cli_curve_mIoU_pct_printed_3dp"]
    betas = np.arange(60) / 100
    tp, p, t = _fixture_counts(z, betas)
    miou, _, _ = mean_scores(tp, p, np.broadcast_to(t, tp.shape), "all")
    ours = np.array([float(f"{v:.3f}") for v in miou[: printed.size]])
    np.testing.assert_array_equal(ours, printed)
    best_so_far = np.maximum.accumulate(miou)
    stop = int(np.flatnonzero(miou[1:] <= best_so_far[:-1])[0]) + 1
    assert stop == printed.size - 1 and betas[stop] == 0.51
    assert betas[int(np.argmax(miou))] == 0.5


def test_mean_conventions():
    tp = np.array([[5, 0, 3, 0]])
    p = np.array([[6, 0, 4, 2]])
    t = np.array([[7, 0, 3, 0]])
    iou = np.array([5 / 8, 0.0, 3 / 4, 0.0])
    mi_all, _, _ = mean_scores(tp, p, t, "all")
    mi_pre, fp_pre, fn_pre = mean_scores(tp, p, t, "present")
    assert mi_all[0] == pytest.approx(iou.mean() * 100, rel=1e-9)
    assert mi_pre[0] == pytest.approx((5 / 8 + 3 / 4 + 0) / 3 * 100, rel=1e-9)  # class 3 present (P>0)
    assert fp_pre[0] == pytest.approx((1 / 8 + 1 / 4 + 1) / 3 * 100, rel=1e-9)
    assert fn_pre[0] == pytest.approx((2 / 8 + 0 + 0) / 3 * 100, rel=1e-9)
    with pytest.raises(DoeiError):
        mean_scores(np.zeros((1, 3), int), np.zeros((1, 3), int), np.zeros((1, 3), int), "present")


def test_counts_are_64_bit():
    """Beyond 2**31 pixels per class (COCO background) the official 32-bit counters overflow."""
    big = np.int64(3_000_000_000)
    tp = np.array([[big, 0]])
    p = np.array([[big + 10, 0]])
    t = np.array([[big + 20, 0]])
    iou, fp, fn = per_class_scores(tp, p, t)
    assert iou[0, 0] == pytest.approx(3e9 / (3e9 + 30), rel=1e-15)
    assert fp[0, 0] + fn[0, 0] + iou[0, 0] == pytest.approx(1.0, rel=1e-15)
    gt = np.zeros((2, 2), np.uint8)
    assert label_counts(gt, gt, 21)[0].dtype == np.int64


def test_label_counts_pred_255_is_a_miss():
    gt = np.array([[1, 1, 255]], np.uint8)
    pred = np.array([[1, 255, 2]], np.uint8)
    tp, p, t = label_counts(pred, gt, 3)
    assert tp.tolist() == [0, 1, 0] and p.tolist() == [0, 1, 0] and t.tolist() == [0, 2, 0]
