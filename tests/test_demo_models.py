"""``doei demo --model tscam|transcam --quick`` end to end, shrunk to seconds (tiny benchmark, one epoch)."""
from __future__ import annotations

import json

import pytest
import yaml

from doei.cli import main as cli_main
from doei.commands.demo_cmd import _configs_dir
from doei.demo import MODELS

BASE = ["--n-train", "16", "--n-val", "4", "--set", "train.epochs=1", "--set", "train.batch_size=16",
        "--set", "train.progress=false"]
SHRINK = {"tscam": ["--set", "model.options.depth=1", "--set", "model.options.embed_dim=32"], "transcam": []}
LABEL = {"tscam": "TS-CAM", "transcam": "TransCAM"}


@pytest.fixture(scope="module", params=["tscam", "transcam"])
def demo_run(request, tmp_path_factory):
    model = request.param
    out = tmp_path_factory.mktemp(f"demo_{model}") / "out"
    args = ["demo", "--model", model, "--quick", "--out", str(out), "--train-seed", "3", *BASE, *SHRINK[model]]
    assert cli_main(args) == 0
    return model, out


def test_demo_model_writes_results(demo_run):
    model, out = demo_run
    m = json.loads((out / "metrics.json").read_text())
    st = m["settings"]
    assert st["family"] == model and st["model"] == {"tscam": "tscam_tiny_conv", "transcam": "transcam_conformer_synth"}[model] and st["train_seed"] == 3 and st["seed"] == 0
    assert st["patch_refine"] is (model == "transcam")
    for run in ("baseline", "doei"):
        r = m[run]
        assert 0 <= r["mIoU"] <= 100 and 0 < r["beta"] < 1 and 0 <= r["cls_mAP"] <= 100
        assert len(list((out / "cams" / run).glob("*.npz"))) == 4
        saved = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())
        assert saved["model"]["name"] == st["model"] and saved["train"]["seed"] == 3
        assert saved["doei"]["enabled"] is (run == "doei") and saved["doei"]["cpdo"] is False
    report = (out / "report.md").read_text()
    assert f"| {LABEL[model]} (baseline) |" in report and f"| {LABEL[model]} + DOEI |" in report


def test_demo_model_cams_are_minmax_normalised(demo_run):
    import numpy as np

    from doei.cam.io import load_cam

    _, out = demo_run
    for f in sorted((out / "cams" / "doei").glob("*.npz")):
        cls, cams = load_cam(f)
        cams = np.asarray(cams, dtype=np.float32)
        assert cams.shape[0] == len(cls) and cams.min() >= 0 and cams.max() <= 1 + 1e-3


def test_demo_configs_exist_for_every_model_and_mode():
    for model, (_, files, _) in MODELS.items():
        for mode, name in files.items():
            d = yaml.safe_load((_configs_dir() / name).read_text())
            assert d["data"]["kind"] == "synth" and d["train"]["amp"] is False, name
            if model != "mctformer":
                assert d["doei"]["cpdo"] is False and d["doei"]["ppdo"] and d["doei"]["hfa"], name
