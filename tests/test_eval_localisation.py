"""Issue #24: the threshold-free localisation measure (doei.eval.localisation), hand-computed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from doei.cam.io import save_cam
from doei.eval.localisation import (BINS, LocalisationTotals, auc_from_hist, evaluate_localisation,
                                    format_localisation, localisation_counts)


def _image():
    # class 0 (label 1): object (0,0)=.9 (0,1)=.5; context (0,2)=.4 (1,0)=.6; far (1,1)=.1; (1,2) ignored (255)
    gt = np.array([[1, 1, 0], [0, 0, 255]])
    ctx = np.array([[0, 0, 1], [1, 0, 0]])
    cams = np.array([[[0.9, 0.5, 0.4], [0.6, 0.1, 0.7]]], dtype=np.float32)
    return np.array([0]), cams, gt, ctx


def test_hand_computed_means_and_aucs():
    classes, cams, gt, ctx = _image()
    c = localisation_counts(classes, cams, gt, ctx)[0]
    assert [c[r][1] for r in ("object", "context", "far")] == [2, 2, 1]
    tot = LocalisationTotals(2)
    tot.add(classes, cams, gt, ctx)
    rep = tot.report(["boat", "cat"], [True, False])
    b = rep["per_class"]["boat"]
    # means 70 / 50 / 10; AUC object vs context: .9>.4, .9>.6, .5>.4, .5<.6 -> 3/4; vs far: 2/2
    for k, want in {"object": 70.0, "context": 50.0, "far": 10.0, "auc_context": 75.0, "auc_far": 100.0}.items():
        assert b[k] == pytest.approx(want, abs=1e-4), k
    assert rep["per_class"]["cat"]["object"] is None and rep["per_class"]["cat"]["context"] is None
    assert rep["groups"]["context"]["auc_context"] == pytest.approx(75.0)
    assert rep["groups"]["rest"]["object"] is None
    assert "AUC obj-ctx" in format_localisation(rep)


def test_auc_ties_and_against_pairs():
    h = np.zeros(BINS, dtype=np.int64)
    h[10] = 3
    assert auc_from_hist(h, h) == 0.5 and auc_from_hist(h, np.zeros(BINS, np.int64)) is None
    rng = np.random.default_rng(0)
    pos, neg = rng.random(300) ** 0.5, rng.random(200)
    brute = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
    hist = lambda v: np.bincount(np.minimum((v * BINS).astype(int), BINS - 1), minlength=BINS)  # noqa: E731
    assert abs(auc_from_hist(hist(pos), hist(neg)) - brute) < 0.01


def test_shrinking_leaves_auc_and_lowers_means():
    # a monotone shrink (a power > 1, as sharpening) keeps every order, so the AUCs stay; the means fall
    rng = np.random.default_rng(1)
    gt = (rng.random((40, 40)) < 0.3).astype(np.int64)
    ctx = ((rng.random((40, 40)) < 0.3) & (gt == 0)).astype(np.int64)
    cam = np.clip(0.3 * gt + 0.15 * ctx + 0.5 * rng.random((40, 40)), 0, 1)[None].astype(np.float32)
    reps = []
    for p in (1.0, 2.0):
        t = LocalisationTotals(1)
        t.add(np.array([0]), cam ** p, gt, ctx)
        reps.append(t.report(["boat"], [True])["per_class"]["boat"])
    assert abs(reps[0]["auc_context"] - reps[1]["auc_context"]) < 0.5
    assert reps[1]["far"] < reps[0]["far"] and reps[1]["context"] < reps[0]["context"]


def test_evaluate_from_files(tmp_path):
    classes, cams, gt, ctx = _image()
    for sub in ("cam", "gt", "ctx"):
        (tmp_path / sub).mkdir()
    save_cam(tmp_path / "cam" / "a.npz", classes, cams.astype(np.float16))
    Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "gt" / "a.png")
    Image.fromarray(ctx.astype(np.uint8)).save(tmp_path / "ctx" / "a.png")
    rep = evaluate_localisation(tmp_path / "cam", tmp_path / "gt", tmp_path / "ctx", ["a"], ["boat", "cat"])
    assert rep["per_class"]["boat"]["has_context"] and not rep["per_class"]["cat"]["has_context"]
    assert rep["per_class"]["boat"]["auc_context"] == pytest.approx(75.0)
    assert rep["per_class"]["boat"]["object"] == pytest.approx(70.0, abs=0.1)    # float16 storage
    with pytest.raises(ValueError, match="cams"):
        localisation_counts(classes, cams[:, :1], gt, ctx)


def test_study_and_demo_tables_report_it():
    from doei.demo.report import _cooccurrence_section
    from doei.study.ablation import render_loc
    from doei.study.table import summarize_loc

    def run(auc):
        g = {"object": 60.0, "context": 20.0, "far": 10.0, "auc_context": auc, "auc_far": 90.0}
        return {"localisation": {"groups": {"context": g, "rest": {**g, "context": None, "auc_context": None}}}}

    base, doei = {0: run(70.0), 1: run(72.0)}, {0: run(75.0), 1: run(71.0)}
    s = summarize_loc(doei, base)
    assert s["group:context"]["auc_context"]["vs_baseline"]["mean"] == 2.0
    assert s["group:context"]["auc_context"]["vs_baseline"]["wins"] == 1
    assert "auc_context" not in s["group:rest"] and summarize_loc({0: {}}, base) == {}
    text = "\n".join(render_loc([("baseline", {"localisation": summarize_loc(base, base)}),
                                 ("DOEI", {"localisation": s})]))
    assert "| DOEI | 60.0 ± 0.0 | +0.0 ± 0.0 (0/2) |" in text and "AUC obj-ctx" in text
    grp = {"context": {"classes": ["boat"], "leak": 1.0, "context_hit": 1.0, "object_FN": 1.0, "IoU": 1.0},
           "rest": {"object_FN": 1.0}}
    m = {k: {"cooccurrence": {"groups": grp}, **run(70.0)} for k in ("baseline", "doei")}
    assert "| DOEI | 60.0 | 20.0 | 10.0 | 70.0 | 90.0 |" in "\n".join(_cooccurrence_section(m))
