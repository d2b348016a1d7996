"""Co-occurrence / under-activation metrics (doei.eval.cooccurrence), the synthetic benchmark's context
maps (doei.data.synth_context) and the co-occurrence variant (doei.data.cooccurrence)."""
from __future__ import annotations

import numpy as np
import pytest

from doei.cam.io import save_cam
from doei.data import synth as S
from doei.data.cooccurrence import variant_params
from doei.data.synth_context import CONTEXT_DIR, context_map, write_context_maps
from doei.errors import DoeiError
from doei.eval.cooccurrence import cooccurrence_counts, cooccurrence_report, evaluate_cooccurrence
from doei.utils.io import atomic_save_png


def test_counts_and_report_hand_computed():
    # 1 x 8 image, 3 labels (0 bg, 1 = class A with context, 2 = class B without)
    gt = np.array([[1, 1, 1, 0, 0, 0, 2, 2]])
    ctx = np.array([[0, 0, 0, 1, 1, 0, 0, 0]])      # pixels 3, 4: context of A
    pred = np.array([[1, 0, 0, 1, 0, 1, 2, 2]])   # A on 0, 3, 5; B on 6, 7
    c = cooccurrence_counts(pred, gt, ctx, 3)
    assert c["pred"].tolist() == [3, 3, 2] and c["leak"].tolist() == [0, 1, 0] and c["ctx"].tolist() == [0, 2, 0]
    assert c["gt"].tolist() == [3, 3, 2] and c["miss"].tolist() == [2, 2, 0]
    rep = cooccurrence_report(c, ["A", "B"])
    a, b = rep["per_class"]["A"], rep["per_class"]["B"]
    assert a["leak"] == pytest.approx(100 / 3) and a["context_hit"] == pytest.approx(50.0)
    assert a["object_FN"] == pytest.approx(200 / 3) and a["IoU"] == pytest.approx(100 / 5)   # TP 1, union 5
    assert b["leak"] is None and b["object_FN"] == 0.0 and b["IoU"] == 100.0
    assert rep["groups"]["context"]["classes"] == ["A"] and rep["groups"]["rest"]["classes"] == ["B"]
    # GT 255 pixels are not scored
    gt2 = gt.copy()
    gt2[0, 3] = 255
    assert cooccurrence_counts(pred, gt2, ctx, 3)["leak"].tolist() == [0, 0, 0]


def test_evaluate_from_cam_files_thresholds_like_doei_eval(tmp_path):
    gt = np.array([[1, 1, 0, 0]], np.uint8)
    ctx = np.array([[0, 0, 1, 1]], np.uint8)
    cam = np.array([[[0.9, 0.2, 0.6, 0.3]]], np.float32)        # class 0 (label 1)
    for d in ("gt", "ctx"):
        (tmp_path / d).mkdir()
    atomic_save_png(tmp_path / "gt" / "a.png", gt)
    atomic_save_png(tmp_path / "ctx" / "a.png", ctx)
    save_cam(tmp_path / "cams" / "a.npz", np.array([0]), cam)
    rep = evaluate_cooccurrence(tmp_path / "cams", tmp_path / "gt", tmp_path / "ctx", ["a"], 0.5, ["A", "B"])
    a = rep["per_class"]["A"]          # pred = [1, 0, 1, 0]: one leaked pixel of two predicted, half the object missed
    assert a["leak"] == 50.0 and a["object_FN"] == 50.0 and a["context_hit"] == 50.0 and rep["beta"] == 0.5


def test_context_maps_of_the_benchmark(tmp_path):
    p = S.SynthParams(seed=5, n_train=2, n_val=24)
    S.write_synth(tmp_path / "b", p)
    out = write_context_maps(tmp_path / "b", ("val",))
    assert out == tmp_path / "b" / CONTEXT_DIR and (out / "done.json").is_file()
    boat, house, tree = (S.SYNTH_CLASSES.index(n) + 1 for n in ("boat", "house", "tree"))
    seen_band = seen_tree = False
    from doei.data.common import read_mask

    for i in range(p.n_val):
        iid = S.image_id("val", i)
        ctx, mask = read_mask(out / f"{iid}.png"), read_mask(tmp_path / "b" / "SegmentationClass" / f"{iid}.png")
        _, m2, info = S.render_scene(np.random.default_rng([p.seed, S.SPLITS["val"], i]), p)
        assert np.array_equal(ctx, context_map(m2, info))
        assert np.all(mask[(ctx > 0) & (ctx != house)] == 0)           # band context only on background
        if info["band"] is not None:
            owner = S.SYNTH_CLASSES.index(next(c for c, b in S.CONTEXTS.items() if b == info["band"])) + 1
            assert set(np.unique(ctx[info["band_mask"] & (mask == 0)])) == {owner}
            seen_band = True
        if np.any(mask == house) and np.any(mask == tree):
            assert np.all(ctx[mask == tree] == house)
            seen_tree = True
    assert seen_band and seen_tree
    # a stored mask that the generator does not reproduce is refused
    (out / "done.json").unlink()
    bad = read_mask(tmp_path / "b" / "SegmentationClass" / "val_000000.png").copy()
    bad[0, 0] = 3 if bad[0, 0] != 3 else 4
    atomic_save_png(tmp_path / "b" / "SegmentationClass" / "val_000000.png", bad)
    with pytest.raises(DoeiError, match="does not give its stored mask"):
        write_context_maps(tmp_path / "b", ("val",))


def test_variant_params():
    assert variant_params(0.5) == {"p_context": 0.5, "p_companion": 0.5}
    with pytest.raises(DoeiError):
        variant_params(1.5)


def test_doei_eval_context_option(tmp_path, capsys):
    import json

    from doei.cli import main as cli_main

    gt = np.array([[1, 1, 0, 0]], np.uint8)
    ctx = np.array([[0, 0, 1, 1]], np.uint8)
    for d in ("gt", "ctx"):
        (tmp_path / d).mkdir()
    atomic_save_png(tmp_path / "gt" / "a.png", gt)
    atomic_save_png(tmp_path / "ctx" / "a.png", ctx)
    save_cam(tmp_path / "cams" / "a.npz", np.array([0]), np.array([[[0.9, 0.2, 0.6, 0.3]]], np.float32))
    (tmp_path / "list.txt").write_text("a\n")
    assert cli_main(["eval", "--pred", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt"), "--list",
                     str(tmp_path / "list.txt"), "--num-classes", "2", "--betas", "0.5", "--workers", "1",
                     "--no-progress", "--context", str(tmp_path / "ctx"), "--out", str(tmp_path / "m.json")]) == 0
    rep = json.loads((tmp_path / "m.json").read_text())["cooccurrence"]
    assert rep["per_class"]["1"]["leak"] == 50.0 and rep["per_class"]["1"]["object_FN"] == 50.0
    assert list(rep["groups"]) == ["context", "rest"] and rep["beta"] == 0.5
    assert "object FN" in capsys.readouterr().out
