"""The paper's MCTformer-V2 + DOEI VOC config (configs/paper/voc_mctformer_v2_doei.yaml) through every stage in
smoke mode on the real VOC sample (../shared/data/voc_real_mini): the config's own DeiT-S at 224, full-size CAMs
with flip and patch refinement, the CRF seed cache, the 106 M-parameter AffinityNet at crop 448, DeepLab ResNet38
at 321, five-scale + flip + DenseCRF inference, eval — one step and one image per stage, random init.

Reduced for a 2-core CPU (and said here): ``run.smoke_batch = 1`` (the config's batches 64 / 8 / 4 need several
GB per stage), inference at one scale + flip + CRF instead of five scales (five took half of the run's ~135 CPU
seconds; benchmarks/paper_smoke.py runs them), no DataLoader / CRF worker processes (runtime-only settings).
Everything else is the config as written. Skips with the reason where ../shared is absent."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "paper" / "voc_mctformer_v2_doei.yaml"


def _bench():
    spec = importlib.util.spec_from_file_location("paper_smoke", REPO / "benchmarks" / "paper_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_mctformer_v2_doei_voc_config_runs_every_stage_at_real_size(tmp_path, shared_dir):
    from doei.pipeline import run_pipeline
    from doei.pipeline_config import STAGES, load_pipeline_config

    src = shared_dir / "data" / "voc_real_mini"
    if not (src / "JPEGImages").is_dir():
        pytest.skip(f"{src}: the real VOC sample is not present")
    root = _bench().make_voc_sample(src, tmp_path / "voc")
    out = tmp_path / "run"
    sets = [f"data.root={root}", f"run.out_dir={out}", "run.smoke=1", "run.smoke_batch=1", "run.progress=false",
            "run.device=cpu", "classifier.train.num_workers=0", "refine.train.num_workers=0",
            "refine.train.crf_workers=0", "refine.train.progress=false", "seg.train.num_workers=0",
            "seg.train.progress=false", "seg.infer.crf_workers=0", "seg.infer.progress=false",
            "refine.infer.progress=false", "seg.infer.scales=[1.0]"]
    cfg = load_pipeline_config(CONFIG, sets)
    lines: list[str] = []
    res = run_pipeline(cfg, log=lines.append, config_path=str(CONFIG))

    table = json.loads((out / "smoke.json").read_text())
    assert [r["stage"] for r in table["stages"]] == list(STAGES) == [r["stage"] for r in res["smoke"]["stages"]]
    assert sum("random init" in c for c in table["changes"]) == 3        # DeiT-S, AffinityNet and DeepLab weights
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] > 0 for r in table["stages"])
    first = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()[0]
    w, h = Image.open(root / "JPEGImages" / f"{first}.jpg").size
    from doei.cam.io import load_cam

    _, cams = load_cam(out / "cam" / f"{first}.npz")
    assert cams.shape[1:] == (h, w)                                     # CAMs at the image's full size
    assert np.asarray(Image.open(out / "pseudo" / f"{first}.png")).shape == (h, w)
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    vw, vh = Image.open(root / "JPEGImages" / f"{val}.jpg").size
    assert np.asarray(Image.open(out / "seg_pred" / "pred_crf" / f"{val}.png")).shape == (vh, vw)
    log = json.loads((out / "seg_pred" / "infer_seg_log.jsonl").read_text().splitlines()[0])
    assert log["scales"] == [1.0] and log["flip"] and log["crf"]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["smoke"] == 1 and [r["stage"] for r in ev["table"]] == ["Seed", "Mask", "Seg", "Seg+CRF"]
