"""Smoke test of ``doei demo --quick`` (what CI runs), shrunk further so it takes seconds of CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest

from doei.cli import main as cli_main

SHRINK = ["--n-train", "32", "--n-val", "8", "--set", "train.epochs=1", "--set", "train.batch_size=16",
          "--set", "model.options.depth=2", "--set", "model.options.embed_dim=48", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli_main(["demo", "--quick", "--out", str(out), *SHRINK]) == 0
    return out


def test_demo_writes_report_metrics_and_figures(demo_dir):
    for f in ("report.md", "metrics.json", "figures/cam_overlays.png", "figures/beta_sweep.png",
              "runs/baseline/checkpoint.pt", "runs/doei/checkpoint.pt"):
        assert (demo_dir / f).is_file(), f
    m = json.loads((demo_dir / "metrics.json").read_text())
    for run in ("baseline", "doei"):
        r = m[run]
        assert {"mIoU", "FP", "FN", "beta", "cls_mAP", "cls_F1", "sweep"} <= set(r)
        assert 0 <= r["mIoU"] <= 100 and 0 <= r["FP"] <= 100 and 0 <= r["FN"] <= 100
        assert 0 < r["beta"] < 1 and 0 <= r["cls_mAP"] <= 100
        assert len(r["sweep"]) == 19 and max(p["mIoU"] for p in r["sweep"]) == r["mIoU"]
        assert len(list((demo_dir / "cams" / run).glob("*.npz"))) == 8
    assert m["doei"]["doei_config"]["enabled"] is True
    assert {"all_background", "uniform_cam"} == set(m["references"])
    report = (demo_dir / "report.md").read_text()
    assert "| all background |" in report and "| MCTformer-V2 + DOEI |" in report


def test_trivial_references_are_what_they_claim(demo_dir):
    """All background: only the background class scores, IoU = background share of pixels. Uniform CAM:
    the same at every β < 1 (a constant map does not depend on the threshold)."""
    from PIL import Image

    m = json.loads((demo_dir / "metrics.json").read_text())
    synth = next(demo_dir.glob("synth-*"))
    ids = (synth / "ImageSets/Segmentation/val.txt").read_text().split()
    gt = np.concatenate([np.asarray(Image.open(synth / "SegmentationClass" / f"{i}.png")).ravel() for i in ids])
    bg_share = float((gt == 0).mean())
    ref = m["references"]["all_background"]
    assert ref["mIoU"] == pytest.approx(100 * bg_share / 11, abs=1e-6)
    uni = m["references"]["uniform_cam"]["sweep"]
    assert len({round(p["mIoU"], 9) for p in uni}) == 1


def test_demo_rerun_reuses_finished_work(demo_dir, capsys):
    before = json.loads((demo_dir / "metrics.json").read_text())
    assert cli_main(["demo", "--quick", "--out", str(demo_dir), *SHRINK]) == 0
    out = capsys.readouterr().out
    assert "reusing the finished run" in out and "reusing" in out.split("== 2/5")[0]
    after = json.loads((demo_dir / "metrics.json").read_text())
    for run in ("baseline", "doei"):
        assert after[run]["mIoU"] == before[run]["mIoU"] and after[run]["cls_mAP"] == before[run]["cls_mAP"]


def test_demo_rejects_unknown_model(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli_main(["demo", "--out", str(tmp_path), "--model", "nope"])
    assert e.value.code == 2
