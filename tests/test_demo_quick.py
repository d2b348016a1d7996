"""Smoke test of ``doei demo --quick`` (what CI runs), shrunk further so it takes seconds of CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doei.cli import main as cli_main

SHRINK = ["--n-train", "32", "--n-val", "8", "--set", "train.epochs=1", "--set", "train.batch_size=16",
          "--set", "model.options.depth=2", "--set", "model.options.embed_dim=48", "--set", "train.progress=false",
          "--pipeline-train", "16", "--pipeline-set", "refine.train.epochs=1", "--pipeline-set", "seg.train.epochs=1",
          "--pipeline-set", "seg.infer.scales=[0.5,1.0]", "--pipeline-set", "run.progress=false"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The shrunk quick demo, its two runs side by side (``--jobs 2``) with one thread each."""
    out = tmp_path_factory.mktemp("demo") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cli_main(["demo", "--quick", "--out", str(out), "--jobs", "2", *SHRINK]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_side_by_side_and_one_after_the_other_give_the_same_numbers(demo_dir, tmp_path):
    """``--jobs 1`` with one thread computes what ``--jobs 2`` computed with one thread per job: every CAM,
    classifier and pipeline number of metrics.json, and the same checkpoints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["demo", "--quick", "--out", str(tmp_path / "seq"), "--jobs", "1", *SHRINK]) == 0
    finally:
        torch.set_num_threads(threads)
    a = json.loads((demo_dir / "metrics.json").read_text())
    b = json.loads((tmp_path / "seq" / "metrics.json").read_text())
    for run in ("baseline", "doei"):
        for k in ("mIoU", "FP", "FN", "beta", "cls_mAP", "cls_F1", "sweep"):
            assert a[run][k] == b[run][k], (run, k)
        assert a["pipeline"][run] == b["pipeline"][run], run
        wa = torch.load(demo_dir / "runs" / run / "checkpoint.pt", weights_only=True)["model"]
        wb = torch.load(tmp_path / "seq" / "runs" / run / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["settings"]["jobs"] == 2 and b["settings"]["jobs"] == 1
    assert a["settings"]["threads_per_job"] == b["settings"]["threads_per_job"] == 1


def test_demo_writes_report_metrics_and_figures(demo_dir):
    for f in ("report.md", "metrics.json", "figures/cam_overlays.png", "figures/beta_sweep.png",
              "figures/segmentation.png", "runs/baseline/checkpoint.pt", "runs/doei/checkpoint.pt"):
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
    # wall and CPU seconds per stage under fixed keys, which the docs' demo tables read (doei.study.doc_demo)
    from doei.demo.catalog import TIMED_STAGES
    from doei.study.doc_demo import render_demo
    from doei.study.doc_json import Node

    assert list(m["timings"]) == [k for k in TIMED_STAGES if k != "ceilings"] + ["total"]
    assert all(v["wall_s"] >= 0 and v["cpu_s"] >= 0 for v in m["timings"].values())
    node = Node(m, "metrics.json")
    assert render_demo([node], {}).splitlines()[2].startswith(f"| baseline | {m['baseline']['mIoU']:.1f} | ")
    assert render_demo([node], {"table": "cost"}).splitlines()[2].startswith("| benchmark (32 + 8 scenes) | ")
    assert f"| {TIMED_STAGES['training']} |" in report


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


def test_demo_rerun_reuses_finished_work(demo_dir, capfd):
    before = json.loads((demo_dir / "metrics.json").read_text())
    assert cli_main(["demo", "--quick", "--out", str(demo_dir), *SHRINK]) == 0
    out = capfd.readouterr().out                       # capfd: the side-by-side jobs print from their own processes
    assert "reusing the finished run" in out and "reusing" in out.split("== 2/6")[0]
    assert out.count("already done") == 2 * 6          # every pipeline stage of both runs is skipped
    after = json.loads((demo_dir / "metrics.json").read_text())
    for run in ("baseline", "doei"):
        assert after[run]["mIoU"] == before[run]["mIoU"] and after[run]["cls_mAP"] == before[run]["cls_mAP"]
    assert after["pipeline"]["doei"] == before["pipeline"]["doei"]


def test_demo_rerun_by_relative_path_reuses_and_other_settings_are_named(demo_dir, capfd, monkeypatch):
    """The same folder spelled relatively is the same runs (reused, nothing recomputed); a rerun with other
    training settings is refused in one line naming the setting, before anything is written."""
    monkeypatch.chdir(demo_dir.parent)
    assert cli_main(["demo", "--quick", "--out", demo_dir.name, *SHRINK]) == 0
    out = capfd.readouterr().out
    assert "reusing the finished run" in out and out.count("already done") == 2 * 6
    weights = (demo_dir / "runs" / "baseline" / "checkpoint.pt").read_bytes()
    assert cli_main(["demo", "--quick", "--out", demo_dir.name, *SHRINK, "--set", "train.epochs=2"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a training run made with other settings (train.epochs: 1 there, 2 now" in err[0]
    assert "--fresh" in err[0] and "--resume" not in err[0]
    assert (demo_dir / "runs" / "baseline" / "checkpoint.pt").read_bytes() == weights


def test_demo_runs_the_whole_pipeline_for_both(demo_dir):
    """Seed/Mask on the 16-image training subset, Seg and Seg+CRF on the held-out split, for both runs; the
    pipeline uses the demo's own classifiers and the report carries the Table 1/2 analogue."""
    from doei.eval.evaluate import evaluate_dirs
    from doei.eval.report import build_report

    m = json.loads((demo_dir / "metrics.json").read_text())
    p = m["pipeline"]
    assert p["settings"]["pipeline_train"] == 16 and p["settings"]["split"] == "train_first16"
    synth = next(demo_dir.glob("synth-*"))
    sub = (synth / "ImageSets/Segmentation/train_first16.txt").read_text().split()
    assert sub == (synth / "ImageSets/Segmentation/train.txt").read_text().split()[:16]
    for run in ("baseline", "doei"):
        assert set(p[run]) == {"Seed", "Mask", "Seg", "Seg+CRF"}
        assert p[run]["Seed"]["split"] == "train_first16" and p[run]["Seed"]["images"] == 16
        assert p[run]["Seg+CRF"]["split"] == "val" and p[run]["Seg+CRF"]["images"] == 8
        assert 0 < p[run]["Seed"]["beta"] < 1 and p[run]["Mask"]["beta"] is None
        cfg = json.loads((demo_dir / "pipeline" / run / "pipeline_config.json").read_text())
        assert cfg["run"]["cls_checkpoint"] == str(demo_dir / "runs" / run / "checkpoint.pt")
        assert len(list((demo_dir / "pipeline" / run / "seg_pred" / "pred_crf").glob("*.png"))) == 8
        # the table's Seg+CRF number is what an independent evaluation of the written PNGs gives
        counts = evaluate_dirs(demo_dir / "pipeline" / run / "seg_pred" / "pred_crf", synth / "SegmentationClass",
                               (synth / "ImageSets/Segmentation/val.txt").read_text().split(), num_classes=11,
                               pred_type="png")
        assert build_report(counts, "present")["mIoU"] == pytest.approx(p[run]["Seg+CRF"]["mIoU"], abs=1e-9)
    report = (demo_dir / "report.md").read_text()
    assert "## The whole pipeline" in report and "| DOEI − baseline |" in report
    assert "Seg+CRF (val)" in report


def test_ceiling_rows_start_each_stage_from_the_truth(demo_dir, tmp_path):
    """``--ceilings``: oracle seeds are the true masks at the 8-px grid, DeepLab trains on a copy of the true
    masks of the same subset; both run with the demo's recipe and appear as rows of the report's table."""
    import copy

    from doei.cam.io import load_cam
    from doei.cam.oracle import oracle_cams
    from doei.data.common import read_mask
    from doei.demo.ceilings import run_ceilings
    from doei.demo.report import render_report
    from doei.pipeline_config import pipeline_config_from_dict

    d = json.loads((demo_dir / "pipeline" / "baseline" / "pipeline_config.json").read_text())
    res = run_ceilings(pipeline_config_from_dict(d, where="test"), tmp_path)
    assert set(res["rw_true_seeds"]) == {"Seed", "Mask"} and set(res["seg_true_masks"]) == {"Seg", "Seg+CRF"}
    assert res["rw_true_seeds"]["Seed"]["images"] == 16 and res["seg_true_masks"]["Seg+CRF"]["images"] == 8
    synth = next(demo_dir.glob("synth-*"))
    i = (synth / "ImageSets/Segmentation/train_first16.txt").read_text().split()[0]
    classes, cams = load_cam(tmp_path / "ceiling_rw_true_seeds" / "cam" / f"{i}.npz")
    ref_classes, ref = oracle_cams(read_mask(synth / "SegmentationClass" / f"{i}.png"), 8)
    assert np.array_equal(classes, ref_classes) and np.allclose(cams, ref) and cams.max() == 1.0
    assert (tmp_path / "ceiling_seg_true_masks" / "true_masks" / f"{i}.png").read_bytes() == \
        (synth / "SegmentationClass" / f"{i}.png").read_bytes()
    m = json.loads((demo_dir / "metrics.json").read_text())
    m2 = copy.deepcopy(m)
    m2["pipeline"]["ceilings"] = res
    report = render_report(m2)
    assert "| ceiling: true seeds → random walk |" in report and "| ceiling: DeepLab on the true masks |" in report
    assert "What each stage added" in render_report(m) and "ceiling:" not in render_report(m)


def test_oracle_cams_are_the_pooled_masks():
    from doei.cam.oracle import oracle_cams

    m = np.zeros((16, 16), np.uint8)
    m[:8, :8] = 3
    m[0, 15] = 255
    c, cams = oracle_cams(m, 8)
    assert c.tolist() == [2] and cams.shape == (1, 16, 16)
    _, exact = oracle_cams(m, 1)
    assert np.array_equal(exact[0], (m == 3).astype(np.float32))
    assert cams[0, 0, 0] == 1.0 and cams[0, 15, 15] == 0.0 and 0 < cams[0, 8, 8] < 1


def test_demo_no_pipeline_stops_after_cams(tmp_path):
    out = tmp_path / "out"
    no_pipe = SHRINK[:SHRINK.index("--pipeline-train")]      # pipeline flags with --no-pipeline are refused (#22)
    assert cli_main(["demo", "--quick", "--out", str(out), "--no-pipeline", *no_pipe]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "pipeline" not in m and not (out / "pipeline").exists()
    assert "## The whole pipeline" not in (out / "report.md").read_text()


def test_demo_rejects_unknown_model(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli_main(["demo", "--out", str(tmp_path), "--model", "nope"])
    assert e.value.code == 2


@pytest.mark.parametrize("flag, value, needle", [
    ("--n-train", "0", "--n-train 0: expected an integer >= 1"),      # was replaced by the default 3000 / 1000
    ("--n-val", "0", "--n-val 0: expected an integer >= 1"),
    ("--pipeline-train", "0", "--pipeline-train 0: expected an integer >= 1"),
    ("--cam-layers", "-1", "--cam-layers -1: expected an integer >= 1"),
    ("--seed", "-3", "--seed -3: expected an integer >= 0"),
    ("--train-seed", "-1", "--train-seed -1: expected an integer >= 0"),
    ("--jobs", "0", "--jobs 0: expected an integer >= 1"),
    ("--pipeline-px", "16", "--pipeline-px 16: expected 32..512"),
    ("--pipeline-px", "96", "configs/demo_pipeline_quick_px96.yaml: pipeline config not found"),
    ("--pipeline-set", "seg.train.epochs=-1", "seg.train.epochs = -1"),
])
def test_demo_integer_options_are_used_as_given_or_refused(flag, value, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["demo", "--quick", "--out", str(out), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("doei demo: error: ") and needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_demo_pipeline_train_above_n_train_refused(tmp_path, capsys):
    assert cli_main(["demo", "--quick", "--out", str(tmp_path / "o"), "--n-train", "50", "--pipeline-train", "60"]) == 2
    assert "--pipeline-train 60: expected at most --n-train (50)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
