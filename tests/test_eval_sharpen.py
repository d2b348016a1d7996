"""Issue #24: the post-hoc sharpened-baseline control (doei.eval.sharpen, doei.study.sharpened)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from doei.eval.sharpen import (area_matched_gammas, best, power_sweep, predicted_area, score_items,
                               sweep_items)


def _items():
    # one foreground class (label 1) on a 3x3 image: values 0.1 … 0.9, object = the top-right 4 pixels
    cam = np.linspace(0.1, 0.9, 9, dtype=np.float32).reshape(1, 3, 3)
    gt = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 1]])
    ctx = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    return [(np.array([0]), cam, gt, ctx)]


def test_area_matched_hand_computed():
    items = _items()
    # at β 0.5 with γ = 1 the pixels 0.6 … 0.9 (4) are predicted; asking for 2 pixels keeps 0.8 and 0.9
    assert predicted_area(items, 1.0, 0.5, 2).tolist() == [5, 4]
    gammas, area = area_matched_gammas(items, np.array([7, 2]), 0.5, 2)
    assert area.tolist() == [7, 2]
    assert 0.7 ** gammas[0] <= 0.5 < 0.8 ** gammas[0]
    s = score_items(items, gammas, 0.5, ["boat"])
    # predicted {0.8, 0.9} ⊂ object (4 px): IoU fg 2/4, bg 5/7 -> mIoU 60.71; FN fg 2/4, FP bg 2/7
    assert s["mIoU"] == pytest.approx(100 * (0.5 + 5 / 7) / 2)
    assert s["cooccurrence"]["per_class"]["boat"]["object_FN"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="beta"):
        area_matched_gammas(items, np.array([7, 2]), 1.0, 2)


def test_power_at_best_beta_is_a_beta_grid_change():
    # M^γ > β ⟺ M > β^(1/γ): the power sweep at the best β equals γ = 1 on the mapped grid
    rng = np.random.default_rng(0)
    items = []
    for _ in range(5):
        cams = rng.random((2, 8, 8)).astype(np.float32)
        gt = rng.integers(0, 3, (8, 8))
        items.append((np.array([0, 1]), cams, gt, None))
    betas = [0.2, 0.4, 0.6]
    sw = power_sweep(items, [2.0], betas, 0.4, 3)[0]
    mapped = best(sweep_items(items, 1.0, [b ** 0.5 for b in betas], 3))
    assert sw["best_beta"]["mIoU"] == pytest.approx(mapped["mIoU"], abs=1e-9)
    with pytest.raises(ValueError, match="powers"):
        power_sweep(items, [0.0], betas, 0.4, 3)


def test_study_cli_on_a_tiny_study(tmp_path):
    from doei.cam.io import save_cam
    from doei.data.benchmark import ensure_synth
    from doei.data.common import read_mask
    from doei.study.sharpened import main

    root = tmp_path / "synth"
    meta = ensure_synth(root, 2, 6, 0)
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    rng = np.random.default_rng(0)
    rows = {}
    for name, shrink in (("baseline", 1.0), ("cpdo_ppdo_hfa", 3.0)):
        keys = []
        for seed in (0, 1):
            key = f"{name}-s{seed}"
            keys.append(key)
            for iid in ids:
                gt = np.asarray(read_mask(root / "SegmentationClass" / f"{iid}.png"))
                cls = np.unique(gt[(gt > 0) & (gt < 255)]) - 1
                cams = np.stack([np.clip((gt == c + 1) * 0.6 + 0.5 * rng.random(gt.shape), 0, 1) ** shrink
                                 for c in cls]) if cls.size else np.zeros((0,) + gt.shape)
                save_cam(tmp_path / "st" / "runs" / key / "cams" / f"{iid}.npz", cls.astype(np.int64),
                         cams.astype(np.float16))
            res = {"mIoU": 30.0 + seed, "FP": 40.0, "FN": 30.0, "beta": 0.3, "cooccurrence": None}
            (tmp_path / "st" / "runs" / key / "result.json").write_text(json.dumps(res))
        rows[name] = {"label": name, "run_keys": keys}
    doc = {"seeds": [0, 1], "betas": "0.1:0.9:0.2", "rows": rows,
           "benchmark": {"root": str(root)}}
    (tmp_path / "st" / "ablation.json").write_text(json.dumps(doc))
    assert main([str(tmp_path / "st"), "--powers", "1,2"]) == 0
    out = json.loads((tmp_path / "st" / "sharpened.json").read_text())
    assert out["seeds"] == [0, 1] and len(out["per_seed"]["0"]["power_sweep"]) == 2
    ratios = [r for r in out["per_seed"]["0"]["area_matched"]["area_ratio"].values() if r is not None]
    assert ratios and all(abs(r - 1) < 0.2 for r in ratios), ratios
    assert "area-matched baseline" in (tmp_path / "st" / "sharpened.md").read_text()
    from doei.study.doc_json import Node
    from doei.study.doc_tables import render_sharpened

    assert render_sharpened(Node(out, "sharpened.json"), {}).startswith("| metric | baseline | area-matched baseline | DOEI |")
    assert len(meta["classes"]) == 10
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(tmp_path / "st"), "--powers", "0"]) == 2
